"""Tests for utils.metrics (docs/method.md, Evaluation: the evaluation protocol)."""

import math

import numpy as np
import pytest
import torch
from medpy.metric import binary as mb
from scipy.ndimage import gaussian_filter

from utils.metrics import (
    binary_metrics,
    case_metrics,
    class_pool,
    format_table,
    summarize,
    surface_distance_metrics,
    worst_case_distance,
)


# --------------------------------------------------------------------------- #
# Dice / Jaccard
# --------------------------------------------------------------------------- #
def test_dice_jaccard_hand_computed():
    # pred: 6 voxels, gt: 8 voxels, overlap 4 -> dice 2*4/14, jaccard 4/10
    pred = np.zeros((4, 6), dtype=np.uint8)
    gt = np.zeros((4, 6), dtype=np.uint8)
    pred[0, 0:6] = 1          # 6 voxels
    gt[0, 2:6] = 1            # 4 of them overlap
    gt[1, 0:4] = 1            # + 4 more -> 8 voxels
    assert pred.sum() == 6 and gt.sum() == 8 and (pred & gt).sum() == 4
    m = binary_metrics(pred, gt)
    assert m["case"] == "ok"
    assert m["dice"] == pytest.approx(8 / 14, abs=1e-12)
    assert m["jaccard"] == pytest.approx(0.4, abs=1e-12)
    assert set(m) == {"dice", "jaccard", "hd95", "asd", "case"}


def test_identical_masks():
    a = np.zeros((5, 7, 7), dtype=bool)
    a[1:4, 2:5, 1:6] = True
    for fast in (False, True):
        m = binary_metrics(a, a, fast=fast)
        assert m == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "case": "ok"}


# --------------------------------------------------------------------------- #
# HD95 / ASD
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fast", [False, True])
def test_single_voxels_three_apart_and_spacing(fast):
    pred = np.zeros((3, 10), dtype=int)
    gt = np.zeros((3, 10), dtype=int)
    pred[1, 2] = 1
    gt[1, 5] = 1
    m = binary_metrics(pred, gt, fast=fast)
    assert m["hd95"] == pytest.approx(3.0, abs=1e-12)
    assert m["asd"] == pytest.approx(3.0, abs=1e-12)
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0 and m["case"] == "ok"
    # spacing scales distances along the axis they lie on only
    m = binary_metrics(pred, gt, spacing=(7.0, 0.5), fast=fast)
    assert m["hd95"] == pytest.approx(1.5, abs=1e-12)
    assert m["asd"] == pytest.approx(1.5, abs=1e-12)
    # 3-D: offset along axis 0 with spacing 2.5 -> 3 * 2.5
    p3 = np.zeros((8, 3, 3), dtype=bool)
    g3 = np.zeros((8, 3, 3), dtype=bool)
    p3[1, 1, 1] = g3[4, 1, 1] = True
    m = binary_metrics(p3, g3, spacing=(2.5, 1.0, 1.0), fast=fast)
    assert m["hd95"] == pytest.approx(7.5, abs=1e-12)
    assert m["asd"] == pytest.approx(7.5, abs=1e-12)


@pytest.mark.parametrize("fast", [False, True])
def test_shifted_squares(fast):
    # 3x3 squares shifted by 2 columns. Surface = the 8 border voxels.
    # pred->gt distances: col 2 -> 2 (x3), col 3 -> 1 (x2), col 4 -> 0 (x3); mean 8/8 = 1
    # pooled with the symmetric gt->pred set: six 2s, four 1s, six 0s -> 95th pct = 2
    pred = np.zeros((8, 10), dtype=bool)
    gt = np.zeros((8, 10), dtype=bool)
    pred[2:5, 2:5] = True
    gt[2:5, 4:7] = True
    m = binary_metrics(pred, gt, fast=fast)
    assert m["hd95"] == pytest.approx(2.0, abs=1e-12)
    assert m["asd"] == pytest.approx(1.0, abs=1e-12)
    assert m["dice"] == pytest.approx(2 * 3 / 18)
    assert m["jaccard"] == pytest.approx(3 / 15)


@pytest.mark.parametrize("fast", [False, True])
def test_asd_is_directed_pred_to_gt(fast):
    # pred = centre voxel of a 3x3 gt square. pred->gt surface: 1 (asd = 1);
    # gt->pred: four 1s and four sqrt(2)s. hd95 over the pooled 9 values = sqrt(2).
    pred = np.zeros((9, 9), dtype=bool)
    gt = np.zeros((9, 9), dtype=bool)
    pred[5, 5] = True
    gt[4:7, 4:7] = True
    m = binary_metrics(pred, gt, fast=fast)
    assert m["asd"] == pytest.approx(1.0, abs=1e-12)
    assert m["hd95"] == pytest.approx(math.sqrt(2), abs=1e-12)
    r = binary_metrics(gt, pred, fast=fast)
    assert r["asd"] == pytest.approx((4 + 4 * math.sqrt(2)) / 8, abs=1e-12)
    assert r["hd95"] == pytest.approx(math.sqrt(2), abs=1e-12)


def _blob(rng, shape, sigma, thr):
    f = gaussian_filter(rng.standard_normal(shape), sigma)
    return f / f.std() > thr  # thr in units of the smoothed field's std


def _label_volumes(seed, shape):
    """A prediction and a ground truth, each with random blobs of classes 1, 2, 3 (later ones on top)."""
    rng = np.random.default_rng(seed)
    vol_p = np.zeros(shape, dtype=np.int64)
    vol_g = np.zeros(shape, dtype=np.int64)
    for c in (1, 2, 3):
        vol_p[_blob(rng, shape, 2.0, 0.8)] = c
        vol_g[_blob(rng, shape, 2.0, 0.8)] = c
    return vol_p, vol_g


@pytest.mark.parametrize("spacing", [None, (1.0, 1.0, 1.0), (5.0, 1.2, 0.7), (0.3, 2.0, 1.1)])
def test_fast_surface_distances_equal_medpy_3d(spacing):
    rng = np.random.default_rng(0)
    shape = (10, 36, 32)
    for _ in range(4):
        p = _blob(rng, shape, 2.0, 0.05)
        g = _blob(rng, shape, 2.0, 0.05) | (p & (rng.random(shape) < 0.5))
        assert p.any() and g.any()
        hd95, asd = surface_distance_metrics(p, g, spacing)
        assert hd95 == pytest.approx(mb.hd95(p, g, voxelspacing=spacing), abs=1e-6)
        assert asd == pytest.approx(mb.asd(p, g, voxelspacing=spacing), abs=1e-6)


@pytest.mark.parametrize("spacing", [None, (1.7, 0.4)])
def test_fast_surface_distances_equal_medpy_2d_small_blobs(spacing):
    # small blobs far from the border exercise the bounding-box crop
    rng = np.random.default_rng(1)
    for _ in range(6):
        p = np.zeros((60, 50), dtype=bool)
        g = np.zeros((60, 50), dtype=bool)
        p[20:30, 10:25] = _blob(rng, (10, 15), 1.0, -0.3)
        g[25:40, 18:26] = _blob(rng, (15, 8), 1.0, -0.3)
        p[0, 0] = rng.random() < 0.5  # sometimes touch the array corner
        assert p.any() and g.any()
        hd95, asd = surface_distance_metrics(p, g, spacing)
        assert hd95 == pytest.approx(mb.hd95(p, g, voxelspacing=spacing), abs=1e-6)
        assert asd == pytest.approx(mb.asd(p, g, voxelspacing=spacing), abs=1e-6)


def test_case_metrics_fast_equals_medpy_path():
    vol_p, vol_g = _label_volumes(2, (8, 30, 30))
    sp = (6.0, 1.3, 1.3)
    fast = case_metrics(vol_p, vol_g, 4, spacing=sp, fast=True)
    slow = case_metrics(vol_p, vol_g, 4, spacing=sp, fast=False)
    for a, b in zip(fast, slow):
        assert a["case"] == b["case"] == "ok"
        for k in ("dice", "jaccard", "hd95", "asd"):
            assert a[k] == pytest.approx(b[k], abs=1e-6)


# --------------------------------------------------------------------------- #
# Empty-case policy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("fast", [False, True])
def test_empty_policies(fast):
    shape = (4, 5, 6)
    z = np.zeros(shape, dtype=np.int32)
    one = z.copy()
    one[1, 2, 3] = 1
    diag = math.sqrt(3 ** 2 + 4 ** 2 + 5 ** 2)  # sqrt(50)
    sp = (2.0, 1.0, 0.5)
    diag_sp = math.sqrt(6.0 ** 2 + 4.0 ** 2 + 2.5 ** 2)  # sqrt(58.25)

    assert binary_metrics(z, z, fast=fast) == {
        "dice": 1.0, "jaccard": 1.0, "hd95": 0.0, "asd": 0.0, "case": "both_empty"}
    assert binary_metrics(z, z, spacing=sp, fast=fast)["case"] == "both_empty"

    m = binary_metrics(z, one, fast=fast)
    assert m["case"] == "pred_empty"
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert m["hd95"] == pytest.approx(diag) and m["asd"] == pytest.approx(diag)

    m = binary_metrics(one, z, spacing=sp, fast=fast)
    assert m["case"] == "gt_empty"
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert m["hd95"] == pytest.approx(diag_sp) and m["asd"] == pytest.approx(diag_sp)


def test_worst_case_distance():
    assert worst_case_distance((4, 5, 6)) == pytest.approx(math.sqrt(50))
    assert worst_case_distance((4, 5, 6), (2.0, 1.0, 0.5)) == pytest.approx(math.sqrt(58.25))
    assert worst_case_distance((256, 256)) == pytest.approx(255 * math.sqrt(2))


# --------------------------------------------------------------------------- #
# Validation
# --------------------------------------------------------------------------- #
def test_shape_mismatch_raises():
    with pytest.raises(ValueError) as e:
        binary_metrics(np.zeros((3, 4)), np.zeros((4, 3)))
    assert "(3, 4)" in str(e.value) and "(4, 3)" in str(e.value)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3\)"):
        case_metrics(np.zeros((2, 3, 4), int), np.zeros((2, 3), int), 2)


def test_bad_spacing_raises():
    a = np.ones((3, 4, 5), dtype=bool)
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        binary_metrics(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(a.astype(int), a.astype(int), 2, spacing=(1.0,))


def test_case_metrics_bad_labels_and_names():
    v = np.array([[0, 1], [2, 4]])
    with pytest.raises(ValueError, match="labels"):
        case_metrics(v, v, 4)
    with pytest.raises(ValueError, match="class_names"):
        case_metrics(v, v, 5, class_names=["a", "b"])


# --------------------------------------------------------------------------- #
# case_metrics
# --------------------------------------------------------------------------- #
def test_case_metrics_four_classes():
    gt = np.zeros((2, 6, 8), dtype=np.int64)
    pred = np.zeros_like(gt)
    gt[:, 0:2, 0:2] = 1          # RV: 8 voxels, predicted exactly
    pred[:, 0:2, 0:2] = 1
    gt[0, 3:5, 0:4] = 2          # Myo: gt 8 voxels, pred 4 of them -> dice 8/12
    pred[0, 3:5, 0:2] = 2
    gt[1, 5, 7] = 3              # LV: present in gt, missed by pred
    res = case_metrics(pred, gt, 4, spacing=(10.0, 1.0, 1.0),
                       class_names=["BG", "RV", "Myo", "LV"])
    assert [r["class"] for r in res] == ["RV", "Myo", "LV"]
    assert [r["label"] for r in res] == [1, 2, 3]
    assert [r["case"] for r in res] == ["ok", "ok", "pred_empty"]
    assert res[0]["dice"] == 1.0 and res[0]["hd95"] == 0.0 and res[0]["asd"] == 0.0
    assert res[1]["dice"] == pytest.approx(8 / 12)
    assert res[1]["jaccard"] == pytest.approx(4 / 8)
    # every pred surface voxel is on the gt surface; gt cols 2-3 are 1 or 2 from pred surface
    assert res[1]["asd"] == pytest.approx(0.0)
    diag = math.sqrt(10.0 ** 2 + 5 ** 2 + 7 ** 2)
    assert res[2]["dice"] == 0.0 and res[2]["hd95"] == pytest.approx(diag)
    assert res[2]["asd"] == pytest.approx(diag)

    # foreground-only names, default names, both-empty / gt-empty classes
    res = case_metrics(pred, gt, 4, class_names=["RV", "Myo", "LV"])
    assert [r["class"] for r in res] == ["RV", "Myo", "LV"]
    res = case_metrics(gt, gt, 5)
    assert [r["class"] for r in res] == ["class1", "class2", "class3", "class4"]
    assert res[3]["case"] == "both_empty" and res[3]["dice"] == 1.0
    res = case_metrics(np.where(gt == 3, 0, gt), (gt == 1).astype(np.int64), 4)
    assert [r["case"] for r in res] == ["ok", "gt_empty", "both_empty"]


def test_case_metrics_threaded_equals_sequential():
    vol_p, vol_g = _label_volumes(5, (6, 40, 40))
    vol_p[vol_p == 3] = 0  # one class missed: the empty-case path runs in a thread too
    with class_pool(4) as pool:
        threaded = case_metrics(vol_p, vol_g, 4, spacing=(5.0, 1.0, 1.0), class_names=["RV", "Myo", "LV"],
                                executor=pool)
    assert threaded == case_metrics(vol_p, vol_g, 4, spacing=(5.0, 1.0, 1.0), class_names=["RV", "Myo", "LV"])
    assert [r["class"] for r in threaded] == ["RV", "Myo", "LV"] and threaded[2]["case"] == "pred_empty"


class _EchoNet(torch.nn.Module):
    """A 'network' whose logits put class k where the image equals k: predicts the label it is given."""

    def forward(self, x):  # (B, 1, H, W) -> (B, 4, H, W)
        return torch.cat([(x == k).float() for k in range(4)], dim=1)


def test_evaluate_scores_every_volume_in_order_and_reraises():
    from utils.evaluation import evaluate

    vols = []
    for i in range(5):
        label = np.zeros((3, 16, 16), dtype=np.uint8)
        label[:, 2:8 + i, 3:9] = 1 + i % 3
        vols.append((f"case{i}", label.astype(np.float32), label, None))
    net = _EchoNet()
    summary, cases = evaluate(net, vols, (16, 16), torch.device("cpu"), 4, keep_predictions=True)
    assert [c["name"] for c in cases] == [f"case{i}" for i in range(5)]
    for (name, _, label, _), c in zip(vols, cases):
        np.testing.assert_array_equal(c["prediction"], label)
        assert c["metrics"] == case_metrics(label, label, 4)
    assert summary["num_cases"] == 5
    bad = vols[:2] + [("bad", vols[2][1], np.full((3, 16, 16), 7, np.uint8), None)]
    with pytest.raises(ValueError, match="gt_vol has labels"):
        evaluate(net, bad, (16, 16), torch.device("cpu"), 4)


# --------------------------------------------------------------------------- #
# summarize / format_table
# --------------------------------------------------------------------------- #
def _row(name, dice, jac, hd, asd, case="ok"):
    return {"class": name, "label": 0, "dice": dice, "jaccard": jac, "hd95": hd, "asd": asd,
            "case": case}


def _two_cases():
    return [
        [_row("RV", 0.8, 0.6, 2.0, 1.0), _row("LV", 1.0, 1.0, 0.0, 0.0, "both_empty")],
        [_row("RV", 0.6, 0.4, 4.0, 3.0), _row("LV", 0.0, 0.0, 10.0, 10.0, "pred_empty")],
    ]


def test_summarize_numbers_and_counts():
    s = summarize(_two_cases())
    assert s["num_cases"] == 2
    assert s["classes"] == ["RV", "LV"]
    rv, lv = s["per_class"]["RV"], s["per_class"]["LV"]
    assert rv["dice"]["mean"] == pytest.approx(0.7) and rv["dice"]["std"] == pytest.approx(0.1)
    assert rv["jaccard"]["mean"] == pytest.approx(0.5) and rv["jaccard"]["std"] == pytest.approx(0.1)
    assert rv["hd95"]["mean"] == pytest.approx(3.0) and rv["hd95"]["std"] == pytest.approx(1.0)
    assert rv["asd"]["mean"] == pytest.approx(2.0) and rv["asd"]["std"] == pytest.approx(1.0)
    assert lv["dice"]["mean"] == pytest.approx(0.5) and lv["dice"]["std"] == pytest.approx(0.5)
    assert lv["hd95"]["mean"] == pytest.approx(5.0) and lv["hd95"]["std"] == pytest.approx(5.0)
    # per-case class means: dice 0.9, 0.3 ; hd95 1.0, 7.0 ; asd 0.5, 6.5
    assert s["per_case_mean"][0]["dice"] == pytest.approx(0.9)
    assert s["per_case_mean"][1]["dice"] == pytest.approx(0.3)
    assert s["mean"]["dice"]["mean"] == pytest.approx(0.6)
    assert s["mean"]["dice"]["std"] == pytest.approx(0.3)
    assert s["mean"]["hd95"]["mean"] == pytest.approx(4.0)
    assert s["mean"]["hd95"]["std"] == pytest.approx(3.0)
    assert s["mean"]["asd"]["mean"] == pytest.approx(3.5)
    assert s["empty_counts"] == {"both_empty": 1, "pred_empty": 1, "gt_empty": 0}
    assert s["empty_counts_per_class"]["LV"] == {"both_empty": 1, "pred_empty": 1, "gt_empty": 0}
    assert s["empty_counts_per_class"]["RV"] == {"both_empty": 0, "pred_empty": 0, "gt_empty": 0}


def test_summarize_rejects_inconsistent_cases():
    cases = _two_cases()
    cases[1] = cases[1][:1]
    with pytest.raises(ValueError, match="case 1"):
        summarize(cases)
    with pytest.raises(ValueError):
        summarize([])


def test_format_table_contents():
    t = format_table(summarize(_two_cases()))
    lines = t.splitlines()
    assert "Dice (%)" in lines[0] and "Jaccard (%)" in lines[0]
    assert "HD95" in lines[0] and "ASD" in lines[0]
    rv = next(l for l in lines if l.startswith("RV"))
    assert "70.00 ± 10.00" in rv and "50.00 ± 10.00" in rv
    assert "3.00 ± 1.00" in rv and "2.00 ± 1.00" in rv
    mean = next(l for l in lines if l.startswith("mean"))
    assert "60.00 ± 30.00" in mean and "4.00 ± 3.00" in mean and "3.50 ± 3.00" in mean
    assert lines.index(mean) > lines.index(rv)
    assert "both_empty=1" in lines[-1] and "pred_empty=1" in lines[-1]
    assert "gt_empty=0" in lines[-1]


def test_end_to_end_with_case_metrics():
    gt = np.zeros((3, 10, 10), dtype=np.int64)
    gt[1, 2:5, 2:5] = 1
    gt[1, 6:8, 6:8] = 2
    pred = gt.copy()
    pred[1, 6:8, 6:8] = 0  # class 2 missed
    per_case = [case_metrics(gt, gt, 3, class_names=["RV", "LV"]),
                case_metrics(pred, gt, 3, class_names=["RV", "LV"])]
    s = summarize(per_case)
    assert s["per_class"]["RV"]["dice"] == {"mean": 1.0, "std": 0.0}
    assert s["per_class"]["LV"]["dice"]["mean"] == pytest.approx(0.5)
    assert s["empty_counts"] == {"both_empty": 0, "pred_empty": 1, "gt_empty": 0}
    t = format_table(s)
    assert "100.00 ± 0.00" in t and "pred_empty=1" in t
