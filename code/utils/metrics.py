"""Segmentation metrics and the evaluation-protocol summaries (docs/method.md, Evaluation).

Per class, on the full (2-D or 3-D) volume: Dice, Jaccard, HD95 and ASD, with
the definitions of ``medpy.metric.binary`` (``dc``, ``jc``, ``hd95``, ``asd``;
surfaces by 1-connectivity, distances in voxel units unless a ``spacing`` is
given, in which case they are in spacing units, usually mm).

Empty-case policy (medpy itself raises on empty masks for HD95/ASD):

==============  ====  =======  ===================  ===================
case            dice  jaccard  hd95                 asd
==============  ====  =======  ===================  ===================
``both_empty``  1     1        0                    0
``pred_empty``  0     0        volume diagonal      volume diagonal
``gt_empty``    0     0        volume diagonal      volume diagonal
``ok``          medpy values
==============  ====  =======  ===================  ===================

The volume diagonal is the worst possible distance between two voxels of the
volume, ``sqrt(sum(((shape - 1) * spacing) ** 2))`` (spacing 1 when ``None``);
see :func:`worst_case_distance`. ``summarize`` counts the empty cases per kind
so that they are visible next to the means.

Speed: :func:`case_metrics` uses (by default) :func:`surface_distance_metrics`,
which reproduces medpy's HD95 and ASD from one surface extraction per mask and
two distance transforms, computed on the bounding box of the two masks (plus a
one-voxel margin), which gives exactly the same distances as on the full
volume. ``binary_metrics`` calls medpy itself unless ``fast=True``.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence

import numpy as np
from medpy.metric import binary as _mb
from scipy.ndimage import (binary_erosion, distance_transform_edt,
                           generate_binary_structure)

METRIC_KEYS = ("dice", "jaccard", "hd95", "asd")
EMPTY_KINDS = ("both_empty", "pred_empty", "gt_empty")

__all__ = [
    "METRIC_KEYS",
    "EMPTY_KINDS",
    "worst_case_distance",
    "surface_distance_metrics",
    "binary_metrics",
    "case_metrics",
    "class_pool",
    "summarize",
    "format_table",
]


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _check_shapes(pred: np.ndarray, gt: np.ndarray, what: str = "pred", other: str = "gt") -> None:
    if pred.shape != gt.shape:
        raise ValueError(
            f"shape mismatch: {what} has shape {tuple(pred.shape)} but {other} has shape "
            f"{tuple(gt.shape)}"
        )
    if pred.ndim < 1:
        raise ValueError(f"expected arrays with at least one dimension, got shape {tuple(pred.shape)}")


def check_spacing(spacing, ndim: int) -> Optional[np.ndarray]:
    """Return spacing as a float64 array of length ``ndim`` (or None)."""
    if spacing is None:
        return None
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.ndim != 1 or sp.shape[0] != ndim:
        raise ValueError(
            f"spacing {tuple(np.atleast_1d(sp).tolist())} must have one entry per array "
            f"dimension (ndim={ndim})"
        )
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing {tuple(sp.tolist())} must be finite and positive")
    return sp


def worst_case_distance(shape: Sequence[int], spacing=None) -> float:
    """Diagonal of a volume of ``shape``: ``sqrt(sum(((shape - 1) * spacing) ** 2))``.

    This is the largest distance between any two voxel centres of the volume,
    used as HD95 and ASD when exactly one of prediction / ground truth is empty.
    """
    shape_arr = np.asarray(tuple(shape), dtype=np.float64)
    sp = check_spacing(spacing, shape_arr.shape[0])
    if sp is None:
        sp = np.ones_like(shape_arr)
    return float(math.sqrt(float(np.sum(((shape_arr - 1.0) * sp) ** 2))))


def _surface(mask: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    # Same as medpy: the mask minus its erosion (outside of the array counts as background).
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1)


def surface_distance_metrics(pred, gt, spacing=None):
    """HD95 and ASD of two non-empty masks, identical to medpy's ``hd95``/``asd``.

    Definitions (as in medpy 0.5.2):

    * surface(m) = m XOR binary_erosion(m, generate_binary_structure(ndim, 1));
    * d(a→b) = for each surface voxel of a, the Euclidean distance (with
      ``sampling=spacing``) to the nearest surface voxel of b;
    * hd95 = 95th percentile of the pooled distances d(pred→gt) ∪ d(gt→pred)
      (medpy pools the two directed sets; it is not the max of two directed
      percentiles);
    * asd = mean of d(pred→gt) (medpy's ``asd`` is directed, result → reference).

    The computation is restricted to the bounding box of ``pred | gt`` grown by
    one voxel (clipped to the array): all surface voxels lie inside it and the
    erosion sees the same (background) neighbours, so the distances are the
    same as on the whole array. Raises ValueError if either mask is empty.

    Returns ``(hd95, asd)`` as Python floats.
    """
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    _check_shapes(pred, gt)
    sp = check_spacing(spacing, pred.ndim)
    if not pred.any() or not gt.any():
        raise ValueError("surface_distance_metrics needs two non-empty masks")

    union = pred | gt
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        idx = np.flatnonzero(union.any(axis=other) if other else union)
        lo = max(int(idx[0]) - 1, 0)
        hi = min(int(idx[-1]) + 2, union.shape[axis])
        slices.append(slice(lo, hi))
    slices = tuple(slices)
    p, g = pred[slices], gt[slices]

    footprint = generate_binary_structure(p.ndim, 1)
    p_border = _surface(p, footprint)
    g_border = _surface(g, footprint)
    d_pg = distance_transform_edt(~g_border, sampling=sp)[p_border]
    d_gp = distance_transform_edt(~p_border, sampling=sp)[g_border]
    hd95 = float(np.percentile(np.hstack((d_pg, d_gp)), 95))
    asd = float(d_pg.mean())
    return hd95, asd


# --------------------------------------------------------------------------- #
# per class / per case
# --------------------------------------------------------------------------- #
def binary_metrics(pred, gt, spacing=None, *, fast: bool = False) -> Dict[str, object]:
    """Dice, Jaccard, HD95 and ASD of one binary prediction against one binary ground truth.

    Parameters
    ----------
    pred, gt : array_like, same shape (2-D or 3-D; any non-zero value is foreground).
    spacing : sequence of ``ndim`` positive floats, optional
        Voxel spacing (e.g. mm) along each axis; distances are in voxel units if None.
    fast : bool
        False: HD95/ASD from ``medpy.metric.binary.hd95``/``asd``.
        True: from :func:`surface_distance_metrics` (same values, quicker).

    Returns
    -------
    dict ``{"dice": float, "jaccard": float, "hd95": float, "asd": float, "case": str}``
    where ``case`` is ``"ok"``, ``"both_empty"``, ``"pred_empty"`` or ``"gt_empty"``
    (see the module docstring for the values given to empty cases). Never raises
    on empty masks; raises ValueError on a shape mismatch or a bad spacing.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    _check_shapes(pred, gt)
    sp = check_spacing(spacing, pred.ndim)
    pred = pred.astype(bool)
    gt = gt.astype(bool)

    p_any, g_any = bool(pred.any()), bool(gt.any())
    if not p_any and not g_any:
        return {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "case": "both_empty"}
    if not p_any or not g_any:
        worst = worst_case_distance(pred.shape, sp)
        return {
            "dice": 0.0,
            "jaccard": 0.0,
            "hd95": worst,
            "asd": worst,
            "case": "pred_empty" if not p_any else "gt_empty",
        }

    dice = float(_mb.dc(pred, gt))
    jaccard = float(_mb.jc(pred, gt))
    if fast:
        hd95, asd = surface_distance_metrics(pred, gt, sp)
    else:
        vs = None if sp is None else tuple(sp.tolist())
        hd95 = float(_mb.hd95(pred, gt, voxelspacing=vs))
        asd = float(_mb.asd(pred, gt, voxelspacing=vs))
    return {"dice": dice, "jaccard": jaccard, "hd95": hd95, "asd": asd, "case": "ok"}


def _class_name(c: int, num_classes: int, class_names) -> str:
    if class_names is None:
        return f"class{c}"
    if len(class_names) == num_classes:  # includes the background name
        return str(class_names[c])
    return str(class_names[c - 1])  # foreground names only


def case_metrics(pred_vol, gt_vol, num_classes: int, spacing=None, class_names=None,
                 *, fast: bool = True, executor=None) -> List[Dict[str, object]]:
    """Per-class metrics of one case (integer label volumes), background excluded.

    Parameters
    ----------
    pred_vol, gt_vol : integer arrays of the same shape with labels in ``0..num_classes-1``
        (a label outside that range raises ValueError).
    num_classes : number of classes including the background (label 0).
    spacing : optional voxel spacing, as in :func:`binary_metrics`.
    class_names : optional names, either ``num_classes`` of them (background first,
        e.g. ``["bg", "RV", "Myo", "LV"]``) or ``num_classes - 1`` (foreground only).
        Default ``"class1"``, ``"class2"``, ...
    fast : use :func:`surface_distance_metrics` (default) or medpy for HD95/ASD.
    executor : optional ``concurrent.futures`` executor (see :func:`class_pool`) that scores the
        classes in parallel; scipy's distance transforms release the GIL, so threads suffice.
        The values are the same either way.

    Returns
    -------
    list, one dict per class ``c = 1..num_classes-1``, in order:
    ``{"class": name, "label": c, "dice", "jaccard", "hd95", "asd", "case"}``
    (the last five as returned by :func:`binary_metrics` for ``pred == c`` vs ``gt == c``).
    """
    pred_vol = np.asarray(pred_vol)
    gt_vol = np.asarray(gt_vol)
    _check_shapes(pred_vol, gt_vol, "pred_vol", "gt_vol")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    if class_names is not None and len(class_names) not in (num_classes, num_classes - 1):
        raise ValueError(
            f"class_names has {len(class_names)} entries; expected {num_classes} "
            f"(with background) or {num_classes - 1} (without)"
        )
    for name, vol in (("pred_vol", pred_vol), ("gt_vol", gt_vol)):
        if vol.size and (vol.min() < 0 or vol.max() >= num_classes):
            raise ValueError(
                f"{name} has labels in [{vol.min()}, {vol.max()}], outside 0..{num_classes - 1}"
            )
    sp = check_spacing(spacing, pred_vol.ndim)

    labels = range(1, num_classes)
    scores = (executor.map if executor is not None else map)(
        lambda c: binary_metrics(pred_vol == c, gt_vol == c, sp, fast=fast), labels)
    return [{"class": _class_name(c, num_classes, class_names), "label": c, **m} for c, m in zip(labels, scores)]


def class_pool(num_classes: int) -> ThreadPoolExecutor:
    """Threads for :func:`case_metrics`' ``executor``: one per foreground class, at most one per CPU."""
    return ThreadPoolExecutor(max(1, min(num_classes - 1, os.cpu_count() or 1)), thread_name_prefix="metrics")


# --------------------------------------------------------------------------- #
# summaries
# --------------------------------------------------------------------------- #
def _mean_std(values) -> Dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std())}


def summarize(per_case) -> Dict[str, object]:
    """Aggregate per-case results (each the list returned by :func:`case_metrics`).

    Every case must list the same classes in the same order. Standard
    deviations are population standard deviations (``numpy.std``, ddof=0) over
    cases.

    Returns
    -------
    dict::

        {
          "num_cases": N,
          "classes": [name_1, ..., name_K],              # in input order
          "per_class": {name: {metric: {"mean": m, "std": s}}},   # metric in METRIC_KEYS,
                                                         # mean/std over the N cases
          "mean": {metric: {"mean": m, "std": s}},       # per case, the mean over the K
                                                         # classes; then mean/std over cases
          "per_case_mean": [{metric: value}, ...],       # those N per-case class means
          "empty_counts": {"both_empty": n, "pred_empty": n, "gt_empty": n},
                                                         # over all N*K (case, class) pairs
          "empty_counts_per_class": {name: {"both_empty": n, "pred_empty": n, "gt_empty": n}},
        }

    ``summary["mean"][m]["mean"]`` equals the mean over classes of
    ``summary["per_class"][c][m]["mean"]``.
    """
    per_case = list(per_case)
    if not per_case:
        raise ValueError("summarize needs at least one case")
    classes = [str(r["class"]) for r in per_case[0]]
    if not classes:
        raise ValueError("summarize: the first case has no classes")
    if len(set(classes)) != len(classes):
        raise ValueError(f"summarize: duplicate class names {classes}")
    for i, case in enumerate(per_case):
        names = [str(r["class"]) for r in case]
        if names != classes:
            raise ValueError(f"summarize: case {i} has classes {names}, expected {classes}")

    # values[case, class, metric]
    values = np.array(
        [[[float(r[k]) for k in METRIC_KEYS] for r in case] for case in per_case],
        dtype=np.float64,
    )
    per_class = {
        name: {k: _mean_std(values[:, j, mi]) for mi, k in enumerate(METRIC_KEYS)}
        for j, name in enumerate(classes)
    }
    case_means = values.mean(axis=1)  # (N, metrics)
    mean = {k: _mean_std(case_means[:, mi]) for mi, k in enumerate(METRIC_KEYS)}

    empty_counts = {kind: 0 for kind in EMPTY_KINDS}
    empty_per_class = {name: {kind: 0 for kind in EMPTY_KINDS} for name in classes}
    for case in per_case:
        for r in case:
            kind = r.get("case", "ok")
            if kind in empty_counts:
                empty_counts[kind] += 1
                empty_per_class[str(r["class"])][kind] += 1

    return {
        "num_cases": len(per_case),
        "classes": classes,
        "per_class": per_class,
        "mean": mean,
        "per_case_mean": [
            {k: float(case_means[i, mi]) for mi, k in enumerate(METRIC_KEYS)}
            for i in range(len(per_case))
        ],
        "empty_counts": empty_counts,
        "empty_counts_per_class": empty_per_class,
    }


def format_table(summary: Dict[str, object], distance_unit: str = "voxels") -> str:
    """Text table of a :func:`summarize` result.

    Rows: each class, then ``mean``; columns Dice (%), Jaccard (%), HD95, ASD as
    ``mean ± std`` with two decimals (Dice and Jaccard as percentages, the
    convention of the paper's tables; the CSV and JSON files keep fractions).
    The distances are in ``distance_unit`` (voxels, or mm with the spacing).
    A last line gives the empty-case counts.
    """
    headers = ["Class", "Dice (%)", "Jaccard (%)", f"HD95 ({distance_unit})", f"ASD ({distance_unit})"]
    scale = {"dice": 100.0, "jaccard": 100.0, "hd95": 1.0, "asd": 1.0}

    def cells(stats):
        return [
            f"{stats[k]['mean'] * scale[k]:.2f} ± {stats[k]['std'] * scale[k]:.2f}"
            for k in METRIC_KEYS
        ]

    rows = [[name] + cells(summary["per_class"][name]) for name in summary["classes"]]
    rows.append(["mean"] + cells(summary["mean"]))

    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]

    def fmt(r):
        return "  ".join(
            (r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])) for i in range(len(r))
        )

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in rows]
    ec = summary["empty_counts"]
    n_pairs = summary["num_cases"] * len(summary["classes"])
    lines.append(
        f"cases: {summary['num_cases']}; empty (case, class) pairs of {n_pairs}: "
        + ", ".join(f"{k}={ec[k]}" for k in EMPTY_KINDS)
    )
    return "\n".join(lines)
