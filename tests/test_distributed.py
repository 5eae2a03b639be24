"""torchrun with 2 CPU processes (gloo): sampler shares, one writer, replicas in sync, resume; and the sampler
algebra behind it."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dataloaders.sampler import TwoStreamBatchSampler

CODE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "code")


def test_distributed_sampler_shares_each_step():
    labeled, unlabeled = list(range(10)), list(range(10, 40))
    ranks = [TwoStreamBatchSampler(labeled, unlabeled, 5, 2, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for k in range(25):  # crosses several epochs of both streams
        batches = [[i for i, _ in s.batch(k)] for s in ranks]
        for b in batches:
            assert len(b) == 5 and sum(i < 10 for i in b[:2]) == 2 and all(i >= 10 for i in b[2:])
        assert not set(batches[0]) & set(batches[1]), (k, batches)
        seeds = [s for sm in ranks for _, s in sm.batch(k)]
        assert len(set(seeds)) == 10  # distinct augmentation per slot across ranks
    assert len({i for k in range(5) for s in ranks for i, _ in s.batch(k)[:2]}) == 10  # one labeled epoch


def torchrun(script, root, snap, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), os.path.join(CODE, script), "--root_path", root, "--snapshot_dir", snap,
           "--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2", "--gpu", "-1", "--log_interval", "1",
           "--val_interval", "2", "--consistency_rampup", "0", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=CODE, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.parametrize("script, extra", [("train_fixmatch_ACDC.py", []),
                                           ("train_diffrect_ACDC.py", ["--refine_start", "1"])])
def test_torchrun_two_processes_one_writer_in_sync_and_resume(tiny_root, tmp_path, script, extra):
    snap = str(tmp_path / "ddp")
    torchrun(script, tiny_root, snap, "--max_iterations", "4", "--max_run_iterations", "2", *extra)
    out = torchrun(script, tiny_root, snap, "--max_iterations", "4", *extra)
    assert "FutureWarning" not in out.stderr, out.stderr[-2000:]  # (broadcast_buffers is deprecated in torch 2.13)
    log = open(os.path.join(snap, "log.txt")).read()
    iterations = [int(m) for m in re.findall(r"iteration (\d+): ", log)]
    assert iterations == [1, 2, 3, 4], iterations  # rank 0 alone writes the log
    assert "distributed: 2 processes" in log and "global batch 8 (4 labeled)" in log
    assert "resumed from" in log and "at iteration 2" in log
    assert log.count("weights identical on all 2 ranks") == 2 and "differ between ranks" not in log
    assert len([f for f in os.listdir(os.path.join(snap, "log")) if "tfevents" in f]) == 2  # one per invocation
    values = [float(v) for v in re.findall(r"seg/sup ([\d.]+)", log)]
    assert all(np.isfinite(values))
    assert os.path.isfile(os.path.join(snap, "last.pth")) and os.path.isfile(os.path.join(snap, "unet_best_model.pth"))
