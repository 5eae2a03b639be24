"""Calibration guidance τ of DiffRect (docs/method.md, Training iteration, Ablations): how far a pseudo label is from its reference label.

τ = 1 - score(a, b) of two hard label maps pooled over the (sub-)batch, one scalar for the whole batch
(the reference uses the Dice *loss*, so perfect agreement gives τ = 0, like a clean diffusion step).
Scores are means over all C classes, background included, smoothed like the Dice loss (a class absent from
both maps scores 1). Table 5's variants: dice | jaccard | both (mean of Dice and Jaccard) | fixed (0.5) |
random (U(0,1)) | none (no τ: the rectifier gets a zero embedding).
"""
import torch
import torch.nn.functional as F

from utils.losses import SMOOTH

GUIDANCES = ("dice", "jaccard", "both", "fixed", "random", "none")


@torch.no_grad()
def overlap_scores(a, b, num_classes):
    """a, b (B, H, W) long -> (mean Dice, mean Jaccard) over classes, pooled over the batch; 0-d tensors."""
    oa = F.one_hot(a, num_classes).flatten(0, -2).float()  # (B*H*W, C)
    ob = F.one_hot(b, num_classes).flatten(0, -2).float()
    inter, sa, sb = (oa * ob).sum(0), oa.sum(0), ob.sum(0)
    dice = (2 * inter + SMOOTH) / (sa + sb + SMOOTH)
    jaccard = (inter + SMOOTH) / (sa + sb - inter + SMOOTH)
    return dice.mean(), jaccard.mean()


@torch.no_grad()
def calibration_guidance(a, b, num_classes, kind="dice", generator=None):
    """Paper eq. 6, the calibration guidance: τ in [0, 1] as a 0-d tensor on a's device, or None for kind
    'none'. τ is 1 - the score (the authors' code embeds a Dice loss, not the Dice eq. 6 names)."""
    if kind == "none":
        return None
    if kind == "fixed":
        return torch.tensor(0.5, device=a.device)
    if kind == "random":
        return torch.rand((), generator=generator, device=a.device)
    dice, jaccard = overlap_scores(a, b, num_classes)
    if kind == "dice":
        return 1 - dice
    if kind == "jaccard":
        return 1 - jaccard
    if kind == "both":
        return 1 - (dice + jaccard) / 2
    raise ValueError(f"--cg {kind!r} is unknown; choose one of {GUIDANCES}")
