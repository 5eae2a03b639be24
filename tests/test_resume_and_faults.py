"""Runs survive interruption (resume = same trajectory), checkpoints are atomic, faults stop cleanly."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import train_diffrect_ACDC
import train_fully_supervised_ACDC
from utils import checkpoint as ckpt_mod
from utils.trainer import TooManyNonFinite
from conftest import TEST_GPU

CODE = os.path.join(os.path.dirname(__file__), "..", "code")


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["models"]


# On CUDA two identical runs already differ slightly: bilinear upsampling's backward and the cross-entropy
# reduce with atomics and have no deterministic kernel (torch.use_deterministic_algorithms lists both). There
# a resumed run must be as close to the straight run as a second straight run is; on the CPU, equal to 1e-6.
ON_CUDA = TEST_GPU != "-1" and torch.cuda.is_available()


def max_weight_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[n][k].float() - b[n][k].float()).abs().max().item() for n in a for k in a[n])


def straight_runs(run, first, again):
    """run(snapshot_dir) into `first`, and on CUDA into `again` too -> how far apart two identical runs end
    (0 on the CPU, where they are equal)."""
    for snap in (first, again) if ON_CUDA else (first,):
        run(snap)
    return max_weight_diff(*(weights(os.path.join(s, "last.pth")) for s in (first, again))) if ON_CUDA else 0.0


def assert_same_state(a, b, run_to_run=0.0):
    """Weights equal up to 1e-6, or (on CUDA) up to 10x the difference `run_to_run` of two straight runs."""
    diff, tol = max_weight_diff(a, b), max(1e-6, 10 * run_to_run)
    assert diff <= tol, f"resumed run differs from the straight run by {diff:.3g} (allowed {tol:.3g})"


def test_sigkill_then_resume_continues_the_same_trajectory(tiny_root, tmp_path):
    common = [sys.executable, os.path.join(CODE, "train_fully_supervised_ACDC.py"), "--root_path", tiny_root,
              "--patch_size", "32", "32", "--batch_size", "4", "--max_iterations", "30", "--val_interval", "5",
              "--log_interval", "5", "--gpu", TEST_GPU]
    straight, killed, again = str(tmp_path / "straight"), str(tmp_path / "killed"), str(tmp_path / "again")
    run_to_run = straight_runs(lambda snap: subprocess.run(common + ["--snapshot_dir", snap], check=True,
                                                           capture_output=True), straight, again)
    proc = subprocess.Popen(common + ["--snapshot_dir", killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = os.path.join(killed, "last.pth")
    deadline = time.time() + 120
    while not os.path.exists(last) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    at = torch.load(last, map_location="cpu", weights_only=False)["iteration"]
    assert 5 <= at < 30
    out = subprocess.run(common + ["--snapshot_dir", killed], check=True, capture_output=True, text=True)
    assert f"resumed from {last} at iteration {at}" in out.stdout
    assert_same_state(weights(os.path.join(straight, "last.pth")), weights(last), run_to_run)


def test_diffrect_resume_equals_straight_run(tiny_root, tmp_path):
    """Rectifier, both optimizers and the diffusion noise generator are restored too."""
    args = ["--root_path", tiny_root, "--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2",
            "--refine_start", "2", "--val_interval", "3", "--gpu", TEST_GPU, "--consistency_rampup", "0",
            "--cg", "random"]
    a, b, again = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "again")
    run_to_run = straight_runs(lambda snap: train_diffrect_ACDC.main(args + ["--snapshot_dir", snap, "--max_iterations",
                                                                            "6"]), a, again)
    train_diffrect_ACDC.main(args + ["--snapshot_dir", b, "--max_iterations", "6", "--max_run_iterations", "3"])
    assert torch.load(os.path.join(b, "last.pth"), weights_only=False)["iteration"] == 3
    train_diffrect_ACDC.main(args + ["--snapshot_dir", b, "--max_iterations", "6"])
    assert_same_state(weights(os.path.join(a, "last.pth")), weights(os.path.join(b, "last.pth")), run_to_run)


def test_loader_workers_give_the_same_training(tiny_root, tmp_path):
    """Each item carries its own augmentation seed, so worker processes change where batches are made, not what
    they hold: FixMatch (weak + strong views) ends with the same weights in the main process and with 2 workers."""
    import train_fixmatch_ACDC

    base = ["--root_path", tiny_root, "--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2",
            "--max_iterations", "4", "--val_interval", "4", "--gpu", TEST_GPU]
    run_to_run = straight_runs(lambda snap: train_fixmatch_ACDC.main(base + ["--snapshot_dir", snap, "--num_workers", "0"]),
                               str(tmp_path / "main"), str(tmp_path / "again"))
    train_fixmatch_ACDC.main(base + ["--snapshot_dir", str(tmp_path / "workers"), "--num_workers", "2"])
    assert_same_state(weights(str(tmp_path / "main" / "last.pth")), weights(str(tmp_path / "workers" / "last.pth")),
                      run_to_run)


def test_automatic_loader_workers():
    from utils.config import loader_workers

    cores = len(os.sched_getaffinity(0))
    assert loader_workers(3, torch.device("cpu")) == 3  # as given
    assert loader_workers(-1, torch.device("cpu")) == 0  # the CPU's cores run the step
    assert loader_workers(-1, torch.device("cuda", 0)) == max(0, min(4, cores - 1))
    assert loader_workers(-1, torch.device("cuda", 0), local_world_size=cores) == 0  # a core per rank: none left


def test_no_resume_refuses_and_resume_path_must_exist(tiny_root, tmp_path):
    snap = str(tmp_path / "s")
    args = ["--root_path", tiny_root, "--patch_size", "32", "32", "--batch_size", "4", "--max_iterations", "2",
            "--val_interval", "2", "--gpu", TEST_GPU, "--snapshot_dir", snap]
    train_fully_supervised_ACDC.main(args)
    before = os.path.getmtime(os.path.join(snap, "last.pth"))
    r = subprocess.run([sys.executable, os.path.join(CODE, "train_fully_supervised_ACDC.py"), *args, "--no_resume"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "last.pth exists and --no_resume was given" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert os.path.getmtime(os.path.join(snap, "last.pth")) == before
    r = subprocess.run([sys.executable, os.path.join(CODE, "train_fully_supervised_ACDC.py"), *args,
                        "--resume", "/nonexistent/last.pth"], capture_output=True, text=True)
    assert r.returncode == 2 and "--resume /nonexistent/last.pth: file not found" in r.stderr


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pth")
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "v": 1}, path)
    original = open(path, "rb").read()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is interrupted mid-write

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "v": 2}, path)
    assert open(path, "rb").read() == original
    assert os.listdir(tmp_path) == ["last.pth"]  # no temp file left behind
    assert ckpt_mod.load_checkpoint(path)["v"] == 1


def test_non_finite_losses_skip_then_stop_with_last_good_state(tiny_root, tmp_path, monkeypatch):
    real = train_fully_supervised_ACDC.seg_loss
    calls = {"n": 0}

    def flaky(logits, target):  # iteration 1 is NaN once, then NaN forever from iteration 4
        calls["n"] += 1
        loss = real(logits, target)
        return loss * float("nan") if calls["n"] == 2 or calls["n"] >= 5 else loss

    monkeypatch.setattr(train_fully_supervised_ACDC, "seg_loss", flaky)
    snap = str(tmp_path / "nan")
    with pytest.raises(TooManyNonFinite, match="4 non-finite losses in a row at iteration 7"):
        train_fully_supervised_ACDC.main(["--root_path", tiny_root, "--patch_size", "32", "32", "--batch_size",
                                          "4", "--max_iterations", "20", "--val_interval", "10", "--gpu", TEST_GPU,
                                          "--max_nonfinite", "3", "--snapshot_dir", snap])
    state = torch.load(os.path.join(snap, "last.pth"), map_location="cpu", weights_only=False)
    assert state["iteration"] == 7 and state["nonfinite_total"] == 5
    for v in state["models"]["model"].values():
        assert torch.isfinite(v.float()).all()
    log = open(os.path.join(snap, "log.txt")).read()
    assert "iteration 1: non-finite loss" in log and "step skipped (1 in a row)" in log


# --------------------------------------------------------------------------------------------- bad inputs
def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(CODE, script), *args], capture_output=True, text=True)


def _break_slice(root, fn):
    sid = open(os.path.join(root, "train_slices.list")).readline().strip()
    path = os.path.join(root, "data", "slices", f"{sid}.h5")
    with h5py.File(path, "r") as f:
        image, label = f["image"][()], f["label"][()]
    image, label = fn(image, label)
    os.remove(path)
    with h5py.File(path, "w") as f:
        if image is not None:
            f["image"] = image
        if label is not None:
            f["label"] = label
    return sid


@pytest.mark.parametrize("case,breaker,expect", [
    ("nan", lambda i, l: (i * np.nan, l), "image has NaN"),
    ("range", lambda i, l: (i, l + 4), "label values span"),
    ("shape", lambda i, l: (i, l[:-1]), "must both be 2-D and equal"),
    ("dtype", lambda i, l: (i.astype("S4"), l), "image must be numeric"),
    ("nolabel", lambda i, l: (i, None), "has no label but is among the first"),  # a labeled slice
])
def test_bad_slices_fail_before_training(tiny_root, tmp_path, case, breaker, expect):
    root = _copy_dataset(tiny_root, str(tmp_path / "data"))
    sid = _break_slice(root, breaker)
    snap = str(tmp_path / "snap")
    r = _cli("train_fixmatch_ACDC.py", "--root_path", root, "--snapshot_dir", snap, "--patch_size", "32", "32",
             "--gpu", TEST_GPU, "--max_iterations", "2")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr and f"{sid}.h5" in r.stderr
    assert not os.path.exists(snap)  # nothing written


def test_bad_flags_and_paths(tiny_root, tmp_path):
    base = ["--root_path", tiny_root, "--gpu", TEST_GPU, "--snapshot_dir", str(tmp_path / "s")]
    cases = [
        (["--root_path", "/nonexistent"], "--root_path /nonexistent: folder not found"),
        (["--labelnum", "5"], "--labelnum 5 is not in the synthetic_ACDC table"),
        (["--labeled_bs", "8", "--batch_size", "8"], "--labeled_bs 8 must be in [1, --batch_size 8)"),
        (["--patch_size", "100", "100"], "--patch_size 100 100: both sides must be positive multiples of 16"),
        (["--num_workers", "-2"], "--num_workers -2: use 0 or more, or -1 for automatic"),
    ]
    for extra, expect in cases:
        r = _cli("train_diffrect_ACDC.py", *base, *extra)
        assert r.returncode == 2 and expect in r.stderr, (extra, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    root = _copy_dataset(tiny_root, str(tmp_path / "d"))
    open(os.path.join(root, "train_slices.list"), "a").write("ghost_slice_1\n")
    r = _cli("train_fully_supervised_ACDC.py", *base, "--root_path", root)
    assert r.returncode == 2 and "ghost_slice_1.h5: listed in train_slices.list but missing" in r.stderr
    r = _cli("test_ACDC.py", "--root_path", root, "--split", "val", "--checkpoint", str(tmp_path / "none.pth"))
    assert r.returncode == 2 and "none.pth: checkpoint not found" in r.stderr
    assert not os.path.exists(str(tmp_path / "s"))


def test_a_bad_dataset_json_stops_training_with_one_line(tiny_root, tmp_path):
    """3 class names for 4 classes would shift every table's names; the run stops before writing anything."""
    root = _copy_dataset(tiny_root, str(tmp_path / "d"))
    desc = json.load(open(os.path.join(root, "dataset.json")))
    json.dump(dict(desc, class_names=desc["class_names"][1:]), open(os.path.join(root, "dataset.json"), "w"))
    snap = str(tmp_path / "s")
    r = _cli("train_fully_supervised_ACDC.py", "--root_path", root, "--snapshot_dir", snap, "--gpu", TEST_GPU)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"error: {os.path.join(root, 'dataset.json')}: class_names must list all 4 class "
                               f"names as strings, background first, found 3 names;")
    assert not os.path.exists(snap)


def test_skip_bad_samples_counts_and_continues(tiny_root, tmp_path):
    root = _copy_dataset(tiny_root, str(tmp_path / "data"))
    sid = open(os.path.join(root, "train_slices.list")).read().split()[-1]  # an unlabeled slice
    path = os.path.join(root, "data", "slices", f"{sid}.h5")
    open(path, "r+b").truncate(300)
    snap = str(tmp_path / "snap")
    args = ["--root_path", root, "--snapshot_dir", snap, "--patch_size", "32", "32", "--batch_size", "4",
            "--labeled_bs", "2", "--gpu", TEST_GPU, "--max_iterations", "2", "--val_interval", "2"]
    r = _cli("train_fixmatch_ACDC.py", *args)
    assert r.returncode == 2 and f"{sid}.h5: unreadable h5 file" in r.stderr and not os.path.exists(snap)
    r = _cli("train_fixmatch_ACDC.py", *args, "--skip_bad_samples")
    assert r.returncode == 0, r.stderr
    log = open(os.path.join(snap, "log.txt")).read()
    assert f"skipping bad sample: {path}: unreadable h5 file" in log and "1 bad slices skipped" in log


def test_empty_val_list(tiny_root, tmp_path):
    root = _copy_dataset(tiny_root, str(tmp_path / "data"))
    open(os.path.join(root, "val.list"), "w").write("\n")
    r = _cli("train_fully_supervised_ACDC.py", "--root_path", root, "--snapshot_dir", str(tmp_path / "s"),
             "--gpu", TEST_GPU)
    assert r.returncode == 2 and "val.list: the list is empty" in r.stderr and not os.path.exists(tmp_path / "s")


def test_test_acdc_rejects_foreign_checkpoints(tiny_root, tmp_path):
    snap = str(tmp_path / "s")
    train_fully_supervised_ACDC.main(["--root_path", tiny_root, "--patch_size", "32", "32", "--batch_size", "4",
                                      "--max_iterations", "2", "--val_interval", "2", "--gpu", TEST_GPU,
                                      "--snapshot_dir", snap])
    best = torch.load(os.path.join(snap, "unet_best_model.pth"), weights_only=False)
    three = dict(best, arch=dict(best["arch"], num_classes=3))
    torch.save(three, str(tmp_path / "three.pth"))
    other = dict(best, model={k: v for k, v in best["model"].items() if "decoder" not in k})
    torch.save(other, str(tmp_path / "other.pth"))
    torch.save({"weights": 1}, str(tmp_path / "foreign.pth"))
    open(str(tmp_path / "trunc.pth"), "wb").write(open(os.path.join(snap, "unet_best_model.pth"), "rb").read()[:999])
    for name, expect in [("three.pth", "trained for 3 classes but"), ("other.pth", "does not match this architecture"),
                         ("foreign.pth", "not a checkpoint written by this project"),
                         ("trunc.pth", "not a readable checkpoint"),
                         (os.path.join(snap, "last.pth"), "this is a training-state file")]:
        r = _cli("test_ACDC.py", "--root_path", tiny_root, "--split", "val", "--gpu", TEST_GPU,
                 "--checkpoint", str(tmp_path / name))
        assert r.returncode == 2 and expect in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    assert not any(f.endswith(".csv") for f in os.listdir(tmp_path)) and not os.path.exists(
        os.path.join(snap, "val_per_case.csv"))
