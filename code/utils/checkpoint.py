"""Checkpoints: written atomically (temp file + fsync + rename), read with one-line errors.

Two files per run: `{model}_best_model.pth` (the segmentation net test_ACDC.py loads, plus its architecture)
and `last.pth` (the full training state: every model, optimizer, iteration, best metric, RNG states).
"""
import os
import random
import tempfile

import numpy as np
import torch

from utils.errors import CheckpointError, UsageError

FORMAT = "diffrect-ckpt-1"


def atomic_save(obj, path):
    """A crash at any moment leaves either the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path), dir=directory)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write here ({e.strerror}); make the folder writable or choose "
                              f"another --snapshot_dir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a checkpoint is as readable as any file
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "write" in str(e).lower()):
            raise CheckpointError(f"{path}: writing failed ({getattr(e, 'strerror', None) or str(e)[:80]}); "
                                  f"free disk space and run again (the previous file is intact)") from None
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path, write):
    """write(f) into a temporary neighbour of `path`, then rename: readers never see a partial file, and a failed
    write (full disk, read-only folder) leaves none behind and ends in one line naming the file."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise UsageError(f"{path}: cannot be written ({e.strerror}); free disk space or make the folder "
                         f"writable") from None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found; train first or pass --checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign files fail in many ways inside torch/pickle
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (format {FORMAT})")
    return ckpt


def load_state(module, state, what, path):
    """load_state_dict with a one-line error when the architecture or class count differs."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = next((l.strip() for l in first[1:] if l.strip()), first[0])[:200]
        raise CheckpointError(f"{path}: {what} does not match this architecture ({detail}); check --model and "
                         f"--num_classes")


def rng_state():
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
