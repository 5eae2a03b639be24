"""Volume inference and scoring (SPEC §6), shared by validation during training and test_ACDC.py.

Per volume: each slice resized to the training patch (linear), batched through the network, argmax,
resized back (nearest); then Dice / Jaccard / HD95 / ASD per foreground class on the 3-D volume.
Scoring runs in threads beside the network: a volume's metrics are computed while the next volume goes
through the network, and its classes are scored in parallel (scipy and numpy release the GIL there).
"""
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from utils.metrics import case_metrics, class_pool, summarize


@torch.no_grad()
def predict_volume(model, image, patch_size, device, batch_size=16):
    """image (D, H, W) float32 -> prediction (D, H, W) uint8, the logits' argmax (taken as max(1).indices, the
    same first-maximum index, because argmax(1) is ~13x slower on CPU in torch 2.13)."""
    d, h, w = image.shape
    ph, pw = patch_size
    x = np.stack([cv2.resize(s, (pw, ph), interpolation=cv2.INTER_LINEAR) for s in image]) if (h, w) != (ph, pw) \
        else image
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None]
    preds = []
    for i in range(0, d, batch_size):
        preds.append(model(x[i:i + batch_size].to(device, non_blocking=True)).max(1).indices.to(torch.uint8).cpu())
    pred = torch.cat(preds).numpy()
    if (h, w) != (ph, pw):
        pred = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_NEAREST) for p in pred])
    return pred


def evaluate(model, volumes, patch_size, device, num_classes, class_names=None, batch_size=16,
             use_spacing=False, keep_predictions=False):
    """Score every volume of a VolumeDataset. Returns (summary, cases) where each case is
    {"name", "metrics": [per-class dicts], ["prediction"]}. The model is put back in its previous mode."""
    was_training = model.training
    model.eval()
    cases = []
    # one scorer thread (volumes in order, overlapping the next forward), class threads under it
    with ThreadPoolExecutor(1, thread_name_prefix="scorer") as scorer, class_pool(num_classes) as per_class:
        try:
            for i in range(len(volumes)):
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
