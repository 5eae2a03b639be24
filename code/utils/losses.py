"""Loss terms shared by the training scripts (docs/method.md, Training iteration).

Shapes: logits (B, C, H, W); hard labels (B, H, W) long.
"""
import math

import torch
import torch.nn.functional as F

from dataloaders.components import largest_component_per_class

SMOOTH = 1e-5  # the SSL4MIS Dice smoothing; also makes a class absent from both maps score 1


def dice_loss(probs, target, num_classes=None, mask=None, skip_absent=False):
    """Mean over all C classes (background included) of 1 - (2 sum pg + s) / (sum p^2 + sum g^2 + s),
    pooled over the batch. probs (B, C, H, W) in [0, 1]; target (B, H, W) long; mask (B, H, W) in {0, 1} or
    None: the sums run over the pixels it covers only (p and g are multiplied by it).
    A class absent from the (masked) target scores ~1 until sum p^2 falls below s, which pushes its probability
    to ~0 wherever the sums run; skip_absent=True leaves such classes out of the mean (0 if every class is)."""
    c = probs.shape[1] if num_classes is None else num_classes
    probs = probs.float()  # sums over many pixels: fp32 even under --amp
    g = F.one_hot(target, c).permute(0, 3, 1, 2).to(probs.dtype)
    if mask is not None:
        m = mask.to(probs.dtype).unsqueeze(1)
        probs, g = probs * m, g * m
    dims = (0, 2, 3)
    inter = (probs * g).sum(dims)
    g_sum = g.sum(dims)
    per_class = 1.0 - (2.0 * inter + SMOOTH) / ((probs * probs).sum(dims) + g_sum + SMOOTH)  # (C,)
    if skip_absent:
        present = (g_sum > 0).to(per_class.dtype)
        return (per_class * present).sum() / present.sum().clamp_min(1.0)
    return per_class.mean()


def seg_loss(logits, target):
    """CE + Dice, the supervised loss of every method."""
    return F.cross_entropy(logits, target) + dice_loss(logits.softmax(1), target)


def masked_seg_loss(logits, target, mask):
    """L_seg(Q, Y) ⊙ M in BCP's notation, normalised as the BCP authors' implementation does: (CE averaged over the
    pixels mask (B, H, W) in {0, 1} covers + Dice over those pixels) / 2; an all-ones mask gives seg_loss / 2."""
    m = mask.float()  # a pixel count in bf16 would round above 256
    ce = (F.cross_entropy(logits.float(), target, reduction="none") * m).sum() / m.sum().clamp_min(1e-16)
    return (ce + dice_loss(logits.softmax(1), target, mask=mask)) / 2


@torch.no_grad()
def masked_pseudo_label(logits, thresh):
    """Confidence-masked pseudo label: class c survives where (p_c - min_k p_k) / max_k p_k > thresh;
    y = argmax_c p_c * mask_c. Where no class survives the label is 0 (background)."""
    p = logits.float().softmax(1)
    pmin, pmax = p.min(1, keepdim=True).values, p.max(1, keepdim=True).values
    mask = (p - pmin) / pmax > thresh
    return (p * mask).max(1).indices  # = argmax (first maximum on ties); argmax(1) is ~13x slower on CPU


@torch.no_grad()
def largest_component_labels(labels, num_classes):
    """BCP's pseudo-label post-processing: in each (H, W) map of labels (B, H, W) every foreground class keeps
    only its largest 8-connected component (the BCP authors' implementation labels components with corner
    neighbours; the paper does not say); the pixels of its other components become background."""
    kept = largest_component_per_class(labels.cpu().numpy(), num_classes, connectivity=8)
    return torch.from_numpy(kept).to(labels.device)


def spatial_certainty(logits):
    """a = 1 - mean_{b,c} H(p[b,c] normalised over its pixels) / log(H*W); not detached (reference)."""
    p = logits.softmax(1).flatten(2)  # (B, C, HW)
    q = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(q * torch.log(q.clamp_min(1e-12))).sum(-1)  # (B, C)
    return 1.0 - entropy.mean() / math.log(p.shape[-1])


def complementary_loss(logits_s, logits_w):
    """comp(s, w) = CE(logits = 1 - p_s, target = argmin_c p_w), weighted by a^2 as the reference does."""
    p_s = logits_s.softmax(1)
    target = logits_w.detach().min(1).indices  # = argmin(1), which is ~13x slower on CPU
    return spatial_certainty(logits_s) ** 2 * F.cross_entropy(1.0 - p_s, target)


def fixmatch_losses(logits_weak, logits_strong, label_lab, weight, conf_thresh):
    """Paper eq. 3, L_Semi^Seg (docs/method.md, Training iteration, step 1), shared by FixMatch and DiffRect.

    logits_* (B, C, H, W) for the whole batch, labeled part first; label_lab (B_l, H, W).
    Returns (total loss, dict of named terms, weak pseudo labels, strong pseudo labels) — labels (B, H, W).
    """
    lbs = label_lab.shape[0]
    y_w, y_s = masked_pseudo_label(logits_weak, conf_thresh), masked_pseudo_label(logits_strong, conf_thresh)
    sup = seg_loss(logits_weak[:lbs], label_lab)
    cons = seg_loss(logits_strong[lbs:], y_w[lbs:])
    comp = complementary_loss(logits_strong, logits_weak)
    total = sup + weight * (cons + comp)
    return total, {"seg/sup": sup, "seg/unsup": cons, "seg/comp": comp}, y_w, y_s
