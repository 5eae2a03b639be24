"""Checkpoints: written atomically (utils/safe_write.py), read with one-line errors.

Two files per run: `{model}_best_model.pth` (the segmentation net test_ACDC.py loads, plus its architecture)
and `last.pth` (the full training state: every model, optimizer, iteration, best metric, RNG states).
"""
import os
import random

import numpy as np
import torch

from utils.errors import CheckpointError, one_line
from utils.safe_write import write_file, write_text

FORMAT = "diffrect-ckpt-1"


def atomic_save(obj, path):
    """torch.save through write_file: a crash at any moment leaves either the old file or the new one, and a
    failed write (full disk) is one line with the old file intact."""
    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: a failed write's OSError stays in torch's error chain
            torch.save(obj, f)

    write_file(path, write)


atomic_write_text = write_text  # (the name the scripts import)


def load_checkpoint(path, map_location="cpu"):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint not found; train first or pass --checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated or foreign files fail in many ways inside torch/pickle
        raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(e, with_type=True)})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint written by this project (format {FORMAT})")
    return ckpt


def load_state(module, state, what, path):
    """load_state_dict with a one-line error when the architecture or class count differs."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        detail = (lines[1:] or lines or [type(e).__name__])[0][:200]  # the first line only says which class
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
