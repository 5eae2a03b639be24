"""benchmark.py's measuring pieces on a tiny size (timings themselves are not asserted: they are machine facts)."""
import json

import pytest
import torch

import benchmark
from networks.unet import UNet


def test_conv_ceiling_covers_every_3x3_conv_of_the_unet():
    r = benchmark.bench_convs(torch.device("cpu"), batch_size=2, patch_size=(32, 32), reps=1)
    n_convs = sum(1 for m in UNet(1, 4).modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert sum(row["count"] for row in r["shapes"]) == n_convs
    sizes = {row["size"][0] for row in r["shapes"]}
    assert sizes == {32, 16, 8, 4, 2}  # five levels of the U-Net
    assert {"in": 1, "out": 16} == {k: r["shapes"][0][k] for k in ("in", "out")}  # full resolution first
    assert all(row["gflops"] > 0 for row in r["shapes"]) and r["unet_conv_gflops"] > 0


def test_eval_timing_reports_forward_and_metrics():
    r = benchmark.bench_eval(torch.device("cpu"), (32, 32), -1, depth=3, reps=1)
    assert r["volume"] == [3, 32, 32]
    assert 0 < r["forward_s"] <= r["forward_and_metrics_s"] and r["ratio"] >= 1.0


def test_a_failing_method_is_reported_beside_the_others(tmp_path, capsys):
    """labeled_bs == batch_size leaves FixMatch no unlabeled slice: it fails, supervised is still measured."""
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit, match="benchmark of fixmatch failed"):
        benchmark.main(["--methods", "supervised", "fixmatch", "--batch_size", "2", "--labeled_bs", "2",
                        "--patch_size", "48", "48", "--iters", "1", "--warmup", "1", "--gpu", "-1", "--out", str(out)])
    r = json.loads(out.read_text())
    assert [m["method"] for m in r["methods"]] == ["supervised"] and r["methods"][0]["sec_per_iter"] > 0
    assert list(r["failed"]) == ["fixmatch"] and "labeled_bs" in r["failed"]["fixmatch"]
    assert "fixmatch         failed:" in capsys.readouterr().out


def test_layout_ab_times_the_evaluation_in_both_layouts():
    ev = benchmark.bench_eval(torch.device("cpu"), (32, 32), -1, depth=3, reps=1, layout_ab=True)
    assert ev["forward_nchw_s"] > 0 and ev["layout_speedup"] == pytest.approx(ev["forward_nchw_s"] / ev["forward_nhwc_s"])
