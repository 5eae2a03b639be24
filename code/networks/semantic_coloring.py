"""Semantic colouring scheme (SCS, docs/method.md, Networks) and the one-hot alternative of the `--no_scs` ablation (docs/method.md, Ablations).

A label map (B, H, W) long becomes a colour map (B, 3, H, W) float by one index into a fixed (C, 3) palette
held on the labels' device (no host round trip). Palette, chosen for maximal mutual distance:
  C = 2: black, white
  C = 3: black, red, green
  C = 4: black, red, green, blue
  C > 4 (ours; the reference has none): the first C entries of one fixed sequence
      black, red, green, blue, white, yellow, magenta, cyan          (the 8 corners of the RGB cube)
      then greedy farthest-point colours from the grid {0, 1/8, ..., 1}^3: each next colour is the grid
      point whose smallest Euclidean distance to the colours already taken is largest; ties go to the
      lowest grid index (r major, then g, then b), so the sequence is deterministic.
  Up to 8 classes the values lie in {0, 1}; beyond 8 they lie in [0, 1] (the 9th is mid-grey).
"""
import functools

import torch
import torch.nn.functional as F

_CORNERS = (
    (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0),
    (1.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0),
)
_GRID_LEVELS = 9  # grid step 1/8 -> 729 candidate colours
SCHEMES = ("color", "onehot")


@functools.lru_cache(maxsize=None)
def _palette_values(num_classes):
    """The palette as a tuple of (r, g, b) float tuples, computed once on the host (construction time only)."""
    if num_classes < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    if num_classes == 2:
        return ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    if num_classes <= len(_CORNERS):
        return _CORNERS[:num_classes]
    lv = torch.linspace(0, 1, _GRID_LEVELS, dtype=torch.float64)
    grid = torch.cartesian_prod(lv, lv, lv)  # (729, 3), r major
    if num_classes > grid.shape[0]:
        raise ValueError(f"palette supports at most {grid.shape[0]} classes, got {num_classes}")
    chosen = torch.tensor(_CORNERS, dtype=torch.float64)
    min_d = torch.cdist(grid, chosen).min(dim=1).values  # distance of each grid point to the taken set
    picked = []
    for _ in range(num_classes - len(_CORNERS)):
        i = int(torch.argmax(min_d))  # argmax returns the first maximum -> lowest-index tie break
        picked.append(grid[i])
        min_d = torch.minimum(min_d, (grid - grid[i]).norm(dim=1))
    return _CORNERS + tuple(tuple(float(v) for v in p) for p in picked)


@functools.lru_cache(maxsize=None)
def _palette_cached(num_classes, device, dtype):
    # One tensor per (C, device, dtype): later calls do no host-to-device copy (which would sync a GPU stream).
    return torch.tensor(_palette_values(num_classes), dtype=dtype, device=device)


def _cached(num_classes, device, dtype):
    return _palette_cached(num_classes, torch.device(device) if device is not None else torch.device("cpu"), dtype)


def palette(num_classes, device=None, dtype=torch.float32):
    """(C, 3) palette, row c = colour of class c. A fresh tensor (safe to modify)."""
    return _cached(num_classes, device, dtype).clone()


def colorize(labels, num_classes, dtype=torch.float32):
    """Paper eq. 4, the semantic colouring scheme: labels (B, H, W) long -> colour map (B, 3, H, W) on the labels'
    device."""
    pal = _cached(num_classes, labels.device, dtype)  # (C, 3)
    return pal[labels].permute(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)


def decolorize(colors, num_classes):
    """colour map (B, 3, H, W) -> labels (B, H, W) long, nearest palette colour (exact inverse of colorize)."""
    pal = _cached(num_classes, colors.device, colors.dtype)  # (C, 3)
    d = (colors[:, None] - pal[None, :, :, None, None]).pow(2).sum(dim=2)  # (B, C, H, W)
    return d.argmin(dim=1)


def one_hot_map(labels, num_classes, dtype=torch.float32):
    """labels (B, H, W) long -> one-hot map (B, C, H, W) (the w/o-SCS ablation's label input)."""
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).to(dtype)


def label_channels(num_classes, scheme="color"):
    """Number of channels `encode_labels` produces."""
    if scheme == "color":
        return 3
    if scheme == "onehot":
        return num_classes
    raise ValueError(f"label scheme {scheme!r} is unknown; choose one of {SCHEMES}")


def encode_labels(labels, num_classes, scheme="color", dtype=torch.float32):
    """labels (B, H, W) long -> (B, label_channels(C, scheme), H, W) float: colour map or one-hot map."""
    if scheme == "color":
        return colorize(labels, num_classes, dtype)
    if scheme == "onehot":
        return one_hot_map(labels, num_classes, dtype)
    raise ValueError(f"label scheme {scheme!r} is unknown; choose one of {SCHEMES}")
