"""Volume inference and scoring (docs/method.md, Evaluation), shared by validation during training and test_ACDC.py.

Per volume: each slice resized to the training patch (linear), batched through the network; the class
probabilities are resampled to the slice's own size (bilinear, centre-aligned, as the image was resized) and
the argmax is taken there, so a prediction that is perfect at the patch size stays perfect (nnU-Net resamples
probabilities too; resizing the hard labels back with cv2's corner-aligned nearest moved them by up to half a
patch pixel). Then Dice / Jaccard / HD95 / ASD per foreground class on the 3-D volume.
Scoring runs in threads beside the network: a volume's metrics are computed while the next volume goes
through the network, and its classes are scored in parallel (scipy and numpy release the GIL there).
"""
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.checkpoint import CheckpointError, load_checkpoint, load_state
from utils.metrics import case_metrics, class_pool, summarize
from utils.progress import progress


def load_segmenter(path, device, memory_format=torch.contiguous_format, data_classes=None):
    """A *_best_model.pth / *_final_model.pth -> (network in eval mode on `device`, checkpoint dict). The
    checkpoint names the network, its classes, patch size and intensity normalisation. data_classes: (folder,
    its class count), checked against the checkpoint's before anything is built."""
    from networks.unet import net_factory

    ckpt = load_checkpoint(path)
    if ckpt.get("kind") not in ("best", "final"):
        raise CheckpointError(f"{path}: this is a training-state file; pass the *_best_model.pth (or "
                              f"_final_model.pth) beside it")
    arch = ckpt["arch"]
    if data_classes and arch["num_classes"] != data_classes[1]:
        raise CheckpointError(f"{path}: trained for {arch['num_classes']} classes but {data_classes[0]} has "
                              f"{data_classes[1]}; pass the matching --root_path or checkpoint")
    model = net_factory(arch["net"], arch["in_chns"], arch["num_classes"])
    model.to(device, memory_format=memory_format)
    load_state(model, ckpt["model"], "the segmentation network", path)
    return model.eval(), ckpt


def native_probabilities(logits, size):
    """(B, C, ph, pw) logits -> (B, C, H, W) class probabilities at the slice's own size (H, W): softmax at the
    patch size, then bilinear with align_corners=False (the half-pixel convention of cv2's INTER_LINEAR,
    which resized the image in)."""
    probs = torch.softmax(logits.float(), dim=1)
    if tuple(size) == tuple(probs.shape[-2:]):
        return probs
    return F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)


FLIPS = ((), (-1,), (-2,), (-2, -1))  # flip test-time augmentation: none, left-right, up-down, both


def flip_tta_probabilities(model, x, size):
    """(b, 1, ph, pw) -> (b, C, H, W): the mean of the native-size probabilities of the four flipped inputs,
    each flipped back."""
    total = None
    for dims in FLIPS:
        xf = x.flip(dims) if dims else x
        p = native_probabilities(model(xf), size)
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(FLIPS)


@torch.no_grad()
def predict_volume(model, image, patch_size, device, batch_size=16, tta=False, with_probabilities=False):
    """image (D, H, W) float32 in [0, 1] -> prediction (D, H, W) uint8, the argmax of the native-size
    probabilities (taken as max(1).indices, the same first-maximum index, because argmax(1) is ~13x slower on
    CPU); with_probabilities: (prediction, probabilities (C, D, H, W) float32). tta: flip_tta_probabilities."""
    d, h, w = image.shape
    ph, pw = patch_size
    x = np.stack([cv2.resize(s, (pw, ph), interpolation=cv2.INTER_LINEAR) for s in image]) if (h, w) != (ph, pw) \
        else image
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    preds, probs = [], []
    for i in range(0, d, batch_size):
        xb = x[i:i + batch_size].to(device, non_blocking=True)
        # (b, C, H, W) at the native size
        p = flip_tta_probabilities(model, xb, (h, w)) if tta else native_probabilities(model(xb), (h, w))
        preds.append(p.max(1).indices.to(torch.uint8).cpu())
        if with_probabilities:
            probs.append(p.cpu())
    pred = torch.cat(preds).numpy()
    return (pred, torch.cat(probs).transpose(0, 1).numpy()) if with_probabilities else pred


def evaluate(model, volumes, patch_size, device, num_classes, class_names=None, batch_size=16,
             use_spacing=False, keep_predictions=False, progress_desc=None):
    """Score every volume of a VolumeDataset. Returns (summary, cases) where each case is
    {"name", "metrics": [per-class dicts], ["prediction"]}. The model is put back in its previous mode.
    progress_desc: show the progress over the volumes under this name (utils.progress; None: silent, as in
    validation during training, whose own progress is shown)."""
    was_training = model.training
    model.eval()
    cases = []
    # one scorer thread (volumes in order, overlapping the next forward), class threads under it
    with ThreadPoolExecutor(1, thread_name_prefix="scorer") as scorer, class_pool(num_classes) as per_class:
        try:
            for i in progress(range(len(volumes)), progress_desc, disable=progress_desc is None):
                name, image, label, spacing = volumes[i]
                pred = predict_volume(model, image, patch_size, device, batch_size)
                metrics = scorer.submit(case_metrics, pred, label, num_classes, spacing if use_spacing else None,
                                        class_names, executor=per_class)
                cases.append({"name": name, "metrics": metrics, **({"prediction": pred} if keep_predictions else {})})
        finally:
            model.train(was_training)
        for case in cases:
            case["metrics"] = case["metrics"].result()  # re-raises a scoring error (e.g. a bad label)
    return summarize([c["metrics"] for c in cases]), cases
