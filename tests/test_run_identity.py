"""A run's folder is its identity: resume refuses another run, nothing poisoned is kept, one writer at a time,
SIGTERM / Ctrl-C save and exit cleanly, and the small faults end in one clear line."""
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

import test_ACDC
import train_diffrect_ACDC
import train_fixmatch_ACDC
import train_fully_supervised_ACDC
from conftest import TEST_GPU
from dataloaders.dataset import DataError
from utils import checkpoint as ckpt_mod
from utils.errors import TooManyNonFinite, UsageError, WriteError
from utils.run_folder import RESUMABLE_FLAGS
from utils.trainer import TrainingRun

CODE = os.path.join(os.path.dirname(__file__), "..", "code")


def _sup(root, snap, *extra, iters=6):
    return ["--root_path", root, "--patch_size", "32", "32", "--batch_size", "4", "--max_iterations", str(iters),
            "--val_interval", "3", "--gpu", TEST_GPU, "--snapshot_dir", snap, *extra]


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def finished(tiny_root, tmp_path_factory):
    """A finished 6-iteration supervised run (seed 1337)."""
    snap = str(tmp_path_factory.mktemp("identity") / "sup")
    train_fully_supervised_ACDC.main(_sup(tiny_root, snap))
    return snap


# -------------------------------------------------------------------------------------- 1. run identity
@pytest.mark.parametrize("change, named", [
    (["--seed", "2"], "--seed 1337 (now 2)"),
    (["--patch_size", "48", "48"], "--patch_size 32 32 (now 48 48)"),
    (["--batch_size", "6"], "--batch_size 4 (now 6)"),
    (["--base_lr", "0.02"], "--base_lr 0.01 (now 0.02)"),
    (["--labelnum", "1"], "--labelnum 3 (now 1)"),
])
def test_resume_with_other_run_flags_is_refused_before_writing(tiny_root, finished, change, named):
    before = {f: (os.path.getmtime(os.path.join(finished, f)), open(os.path.join(finished, f), "rb").read())
              for f in ("config.json", "last.pth", "log.txt")}
    with pytest.raises(UsageError, match="is another run") as e:
        train_fully_supervised_ACDC.main(_sup(tiny_root, finished, *change))
    assert named in str(e.value) and "--exp or --snapshot_dir" in str(e.value)
    after = {f: (os.path.getmtime(os.path.join(finished, f)), open(os.path.join(finished, f), "rb").read())
             for f in before}
    assert after == before


def test_another_script_on_the_folder_is_refused(tiny_root, finished):
    size = os.path.getsize(os.path.join(finished, "last.pth"))
    with pytest.raises(UsageError, match="the training script train_fully_supervised_ACDC "
                                         r"\(now train_fixmatch_ACDC\)"):
        train_fixmatch_ACDC.main(_sup(tiny_root, finished, "--labeled_bs", "2"))
    assert os.path.getsize(os.path.join(finished, "last.pth")) == size
    assert json.load(open(os.path.join(finished, "config.json")))["script"] == "train_fully_supervised_ACDC"


def test_resumable_flags_may_change(tiny_root, finished, tmp_path):
    import shutil

    snap = str(tmp_path / "extend")
    shutil.copytree(finished, snap)
    train_fully_supervised_ACDC.main(_sup(tiny_root, snap, "--log_interval", "1", "--num_workers", "0", iters=9))
    assert _load(os.path.join(snap, "last.pth"))["iteration"] == 9
    assert {"max_iterations", "val_interval", "num_workers", "max_run_iterations", "gpu"} <= set(RESUMABLE_FLAGS)


def test_num_classes_must_match_the_dataset(tiny_root, tmp_path):
    snap = str(tmp_path / "c5")
    with pytest.raises(UsageError, match="--num_classes 5: the dataset .* has 4 classes"):
        train_fully_supervised_ACDC.main(_sup(tiny_root, snap, "--num_classes", "5"))
    assert not os.path.exists(snap)


# --------------------------------------------------------------------------------- 2. non-finite states
def _poisoning_main(at):
    """The supervised script, except that after iteration `at` a BatchNorm running_var turns infinite."""
    def build(args, run):
        method = train_fully_supervised_ACDC.build(args, run)
        step, net = method.train_step, method.models["model"]
        bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))

        def train_step(batch, it):
            terms = step(batch, it)
            if it >= at:
                bn.running_var.fill_(float("inf"))
            return terms

        return dataclasses.replace(method, train_step=train_step)

    def main(argv):
        args = train_fully_supervised_ACDC.parse_args(argv)
        with TrainingRun(args, train_fully_supervised_ACDC.BATCHES, script="train_fully_supervised_ACDC") as run:
            return run.fit(build(args, run))

    return main


def test_a_poisoned_state_stops_and_keeps_the_last_good_checkpoint(tiny_root, tmp_path):
    snap = str(tmp_path / "poison")
    # poisoned after iteration 7; found at the next validation/checkpoint (9), before anything is written
    with pytest.raises(TooManyNonFinite, match=r"iteration 9: the weights or buffers of model are no longer "
                                               r"finite.*iteration 6\) is the last good state and was kept"):
        _poisoning_main(7)(_sup(tiny_root, snap, iters=12))
    state = _load(os.path.join(snap, "last.pth"))
    assert state["iteration"] == 6
    assert all(torch.isfinite(v.float()).all() for v in state["models"]["model"].values())
    # resuming the same run (the poison gone) continues from the good state
    _poisoning_main(10 ** 9)(_sup(tiny_root, snap, iters=12))
    assert _load(os.path.join(snap, "last.pth"))["iteration"] == 12


def test_huge_learning_rate_never_saves_a_non_finite_state(tiny_root, tmp_path):
    snap = str(tmp_path / "lr")
    with pytest.raises(TooManyNonFinite, match="no longer finite|non-finite losses"):
        train_fully_supervised_ACDC.main(_sup(tiny_root, snap, "--base_lr", "1e6", "--val_interval", "1", iters=30))
    if os.path.exists(os.path.join(snap, "last.pth")):
        state = _load(os.path.join(snap, "last.pth"))
        for m in state["models"].values():
            assert all(torch.isfinite(v.float()).all() for v in m.values())


# ------------------------------------------------------------------------------ 3. one writer per folder
def _spawn(args, **kw):
    return subprocess.Popen([sys.executable, os.path.join(CODE, "train_fully_supervised_ACDC.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path, text, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and text in open(path).read():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_a_second_process_on_the_folder_is_refused(tiny_root, tmp_path):
    snap = str(tmp_path / "busy")
    proc = _spawn(_sup(tiny_root, snap, "--log_interval", "1", "--val_interval", "1000", iters=100000))
    try:
        _wait_for(os.path.join(snap, "log.txt"), "iteration 2:", proc)
        with pytest.raises(UsageError, match=f"another training process \\(PID {proc.pid}\\) is writing this run"):
            train_fully_supervised_ACDC.main(_sup(tiny_root, snap, iters=100000))
    finally:
        proc.kill()
        proc.wait()
    # the lock died with its process; stale temporary files are cleared by the next writer
    open(os.path.join(snap, ".tmp-last.pthabc123"), "wb").write(b"half")
    from utils.run_folder import FolderLock

    lock = FolderLock(snap)
    assert not os.path.exists(os.path.join(snap, ".tmp-last.pthabc123"))
    lock.release()


# ------------------------------------------------------------------------------- 4. SIGTERM and Ctrl-C
def _slow(root, snap):  # ~0.5 s steps on a CPU, no checkpoint before the signal
    return ["--root_path", root, "--patch_size", "128", "128", "--batch_size", "8", "--max_iterations", "100000",
            "--val_interval", "100000", "--log_interval", "1", "--gpu", TEST_GPU, "--snapshot_dir", snap]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_finishes_the_step_saves_and_exits(synthetic_root, tmp_path, signum, code):
    snap = str(tmp_path / "sig")
    proc = _spawn(_slow(synthetic_root, snap))
    _wait_for(os.path.join(snap, "log.txt"), "iteration 2:", proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    assert f"stopped by {name} at iteration" in err and "Traceback" not in err
    at = int(err.split(f"stopped by {name} at iteration ")[1].split(":")[0])
    assert at >= 2 and _load(os.path.join(snap, "last.pth"))["iteration"] == at


def test_second_ctrl_c_stops_at_once(synthetic_root, tmp_path):
    snap = str(tmp_path / "int2")
    proc = _spawn(_slow(synthetic_root, snap))
    _wait_for(os.path.join(snap, "log.txt"), "iteration 2:", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "stopped at once" in err or "stopped by SIGINT" in err


# -------------------------------------------------------------------------------------- 5. small faults
def test_flag_values_that_cannot_work(tiny_root, tmp_path):
    snap = str(tmp_path / "flags")
    for flags in (["--checkpoint_interval", "0"], ["--image_interval", "0"], ["--max_run_iterations", "0"]):
        with pytest.raises(UsageError, match=f"{flags[0]} 0 must be positive"):
            train_fully_supervised_ACDC.main(_sup(tiny_root, snap, *flags))
    for flags, msg in ((["--ts", "0"], "--ts 0 must be positive"), (["--ts_sample", "0"], "--ts_sample 0 must be"),
                       (["--base_chn_rf", "0"], "--base_chn_rf 0 must be"), (["--ts_sample", "11"], "cannot exceed")):
        with pytest.raises(UsageError, match=msg):
            train_diffrect_ACDC.main(_sup(tiny_root, snap, "--labeled_bs", "2", *flags))
    assert not os.path.exists(snap)


def test_test_acdc_faults(tiny_root, finished, monkeypatch, tmp_path):
    ckpt = os.path.join(finished, "unet_best_model.pth")
    with pytest.raises(UsageError, match="--batch_size 0 must be positive"):
        test_ACDC.main(["--checkpoint", ckpt, "--root_path", tiny_root, "--batch_size", "0"])
    with pytest.raises(UsageError, match="--use_spacing: .* has no 'spacing' attribute"):
        test_ACDC.main(["--checkpoint", ckpt, "--root_path", tiny_root, "--split", "val", "--use_spacing",
                        "--gpu", TEST_GPU])
    root = shutil.copytree(tiny_root, tmp_path / "spaced")  # spacings another tool might write
    val = [os.path.join(root, "data", f"{v}.h5") for v in open(os.path.join(root, "val.list")).read().split()]
    for path in val:
        with h5py.File(path, "r+") as f:
            f.attrs["spacing"] = [10.0, 1.5, 1.5]
    for spacing in ([1.5, 1.5], [10.0, 0.0, 1.5]):
        with h5py.File(val[-1], "r+") as f:
            f.attrs["spacing"] = spacing
        found = re.escape(repr(spacing))  # (was: a ValueError traceback after every volume had been predicted)
        with pytest.raises(DataError, match=f"^{re.escape(val[-1])}: 'spacing' attribute must be 3 positive numbers "
                                            rf"\(z, y, x\), found {found}; re-prepare this case"):
            test_ACDC.main(["--checkpoint", ckpt, "--root_path", str(root), "--split", "val", "--use_spacing",
                            "--gpu", TEST_GPU])
    # a failing write leaves no partial table
    real_open = open

    def full_disk(path, mode="r", *a, **k):
        if os.path.basename(str(path)).startswith(".tmp-") and "w" in mode:  # write_file's temporary file
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", full_disk)
    csv_path = os.path.join(finished, "test_per_case.csv")
    if os.path.exists(csv_path):
        os.unlink(csv_path)
    with pytest.raises(UsageError, match="cannot be written \\(No space left on device\\)"):
        test_ACDC.main(["--checkpoint", ckpt, "--root_path", tiny_root, "--gpu", TEST_GPU])
    assert not os.path.exists(csv_path) and not [f for f in os.listdir(finished) if f.startswith(".tmp-")]


def test_checkpoint_writes_fail_cleanly_and_follow_the_umask(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pth")
    ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "v": 1}, path)
    mode, umask = stat.S_IMODE(os.stat(path).st_mode), os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask

    def no_space(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    with pytest.raises(WriteError, match="c.pth: cannot be written \\(No space left on device\\); free disk space "
                                         "and run again \\(the previous file is intact\\)"):
        ckpt_mod.atomic_save({"format": ckpt_mod.FORMAT, "v": 2}, path)
    monkeypatch.undo()
    assert ckpt_mod.load_checkpoint(path)["v"] == 1
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_snapshot_path_that_is_a_file(tiny_root, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot be created"):
        train_fully_supervised_ACDC.main(_sup(tiny_root, str(blocker / "snap")))


def test_images_outside_0_1_are_refused(tiny_root, tmp_path):
    import shutil

    root = str(tmp_path / "raw")
    shutil.copytree(tiny_root, root)
    sid = open(os.path.join(root, "train_slices.list")).readline().strip()
    path = os.path.join(root, "data", "slices", f"{sid}.h5")
    with h5py.File(path, "r+") as f:
        f["image"][...] = np.round(f["image"][()] * 255)
    with pytest.raises(DataError, match=rf"{sid}.h5: image range \[2, 252\] is outside \[0, 1\]"):
        train_fully_supervised_ACDC.main(_sup(root, str(tmp_path / "snap")))


def test_log_records_the_thread_count(finished):
    assert f"{torch.get_num_threads()} CPU threads" in open(os.path.join(finished, "log.txt")).read()


def test_resume_on_changed_data_is_refused_and_moved_data_resumes(tiny_root, tmp_path):
    """The data fingerprint is part of the run's identity: a copy of the same data elsewhere resumes, data whose
    files changed (a slice rewritten) is refused before anything is written."""
    import shutil

    data, moved, snap = str(tmp_path / "data"), str(tmp_path / "moved"), str(tmp_path / "run")
    shutil.copytree(tiny_root, data)
    train_fully_supervised_ACDC.main(_sup(data, snap, "--max_run_iterations", "3"))
    shutil.move(data, moved)
    train_fully_supervised_ACDC.main(_sup(moved, snap, "--max_run_iterations", "1"))  # same data, new place
    assert _load(os.path.join(snap, "last.pth"))["iteration"] == 4
    with open(os.path.join(moved, "train_slices.list")) as f:
        first = f.readline().strip()
    with h5py.File(os.path.join(moved, "data", "slices", f"{first}.h5"), "r+") as f:
        f.create_dataset("extra", data=np.zeros(1000))  # the file grows: other data
    before = open(os.path.join(snap, "last.pth"), "rb").read()
    with pytest.raises(UsageError, match="was trained on other data: the dataset at --root_path"):
        train_fully_supervised_ACDC.main(_sup(moved, snap))
    assert open(os.path.join(snap, "last.pth"), "rb").read() == before


def test_a_command_that_trains_nothing_leaves_config_json(finished, tiny_root):
    with open(os.path.join(finished, "config.json")) as f:
        config = f.read()
    train_fully_supervised_ACDC.main(_sup(tiny_root, finished, iters=3))  # "nothing to do"
    with open(os.path.join(finished, "config.json")) as f:
        assert f.read() == config and json.loads(config)["max_iterations"] == 6


def test_a_snapshot_folder_removed_while_training_is_not_recreated(tiny_root, tmp_path, monkeypatch):
    import shutil

    snap = str(tmp_path / "run")
    validate = TrainingRun._validate

    def remove_then_validate(self, *args, **kwargs):
        shutil.rmtree(self.snapshot)  # e.g. a user cleaning up model/ while the run trains
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "_validate", remove_then_validate)
    with pytest.raises(UsageError, match="the snapshot folder was removed or replaced while this run trained"):
        train_fully_supervised_ACDC.main(_sup(tiny_root, snap))
    assert not os.path.exists(snap)
