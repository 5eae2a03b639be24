"""Deterministic synthetic cardiac-like phantoms written in the SSL4MIS (ACDC) layout.

Each volume is a short-axis stack: a left-ventricle blood pool (LV, class 3) inside a myocardium ring
(Myo, class 2), a right-ventricle crescent (RV, class 1) wrapped around the ring's outer side, on textured
background tissue inside a body outline (class 0). Radii shrink from base (slice 1) to apex; apical slices
may lose the RV and/or the LV cavity. The image gets per-class intensities, partial-volume blur, a smooth
multiplicative bias field and Gaussian noise, then is min-max normalised to [0, 1] over the whole volume
and stored on a 1/256 grid (exact in float32; keeps the default dataset ~11 MB).

Layout written by :func:`generate_dataset` (see docs/datasets.md, The prepared layout)::

    <out>/train_slices.list  train.list  val.list  test.list  dataset.json
    <out>/data/<volume>.h5                 'image' (D,H,W) float32 in [0,1], 'label' (D,H,W) uint8
    <out>/data/slices/<volume>_slice_<k>.h5  'image' (H,W) float32, 'label' (H,W) uint8, k = 1..D

Everything is a pure function of the seed: the same seed gives byte-identical arrays.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from dataloaders.components import CROSS3, largest_per_slice
from dataloaders.layout import atomic_folder, write_h5, write_list
from utils.safe_write import write_text

__all__ = [
    "CLASS_NAMES",
    "LABELNUMS",
    "sample_params",
    "make_volume",
    "generate_dataset",
]

CLASS_NAMES = ["BG", "RV", "Myo", "LV"]
# labelnum values (patients) for which dataset.json lists the slice count of the first N patients;
# the number of train patients is added as well.
LABELNUMS = (1, 2, 3, 4, 7)
# generate_dataset's limits, here for make_synthetic_data.py to name the flag at fault (patient numbers have 3
# digits, frame numbers 2)
MAX_PATIENTS, MAX_FRAMES, MIN_SIZE = 999, 99, 48
# Images are stored on a 1/256 grid (8-bit-like; exact in float32): 0 and 1 stay exact, files stay small.
_QUANT = 256.0


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_params(rng: np.random.Generator, height: int, width: int) -> dict:
    """Draw the per-patient anatomy and appearance (shared by the patient's frames)."""
    s = float(min(height, width))
    p = {
        "scale": s,
        # heart centre (pixels), kept near the image centre so the RV stays inside the field of view
        "cy": height / 2.0 + _u(rng, -0.05, 0.05) * s,
        "cx": width / 2.0 + _u(rng, -0.05, 0.05) * s,
        # centre drift from base to apex (pixels)
        "dy": _u(rng, -0.03, 0.03) * s,
        "dx": _u(rng, -0.03, 0.03) * s,
        "theta": _u(rng, 0.0, np.pi),  # orientation of the LV ellipse
        "r_lv": _u(rng, 0.085, 0.12) * s,  # LV cavity semi-axis at the base
        "ecc": _u(rng, 0.80, 1.0),  # minor/major ratio of the LV ellipse
        "t_myo": _u(rng, 0.04, 0.055) * s,  # myocardium thickness at the base
        "lv_end": _u(rng, 0.95, 1.35),  # z (0 base .. 1 apex) where the cavity closes (>1: never)
        "lv_pow": _u(rng, 1.6, 2.6),
        "myo_taper": _u(rng, 0.15, 0.35),
        # wall irregularity: harmonics 2 and 3 of the polar radius
        "h2": _u(rng, 0.0, 0.05), "p2": _u(rng, 0.0, 2 * np.pi),
        "h3": _u(rng, 0.0, 0.04), "p3": _u(rng, 0.0, 2 * np.pi),
        # RV: direction from the LV centre, radial / tangential semi-axes relative to the outer radius
        "rv_dir": _u(rng, 0.0, 2 * np.pi),
        "rv_thick": _u(rng, 0.40, 0.80),  # crescent thickness at the base (fraction of the outer radius)
        "rv_tan": _u(rng, 1.45, 1.85),  # tangential semi-axis (fraction of the outer radius)
        "rv_off": _u(rng, 0.45, 0.75),  # RV ellipse centre distance from the LV centre (fraction of r_o)
        "rv_end": _u(rng, 0.85, 1.20),  # z where the RV vanishes
        # body outline (fraction of the image size; may be cropped by the field of view)
        "body_a": _u(rng, 0.44, 0.52) * width,
        "body_b": _u(rng, 0.40, 0.50) * height,
        "body_rot": _u(rng, -0.3, 0.3),
        # intensities (before bias field / noise / normalisation)
        "i_lv": _u(rng, 0.75, 0.92),
        "i_rv": _u(rng, 0.65, 0.85),
        "i_myo": _u(rng, 0.15, 0.28),
        "i_bg": _u(rng, 0.32, 0.45),
        "i_air": _u(rng, 0.0, 0.05),
        "tex_std": _u(rng, 0.05, 0.10),
        "noise": _u(rng, 0.012, 0.03),
        "bias": _u(rng, 0.10, 0.25),
        "blur": _u(rng, 0.5, 0.9),
    }
    return p


def _frame_params(rng: np.random.Generator, p: dict, contraction: float) -> dict:
    """Second cardiac phase: LV and RV smaller, myocardium thicker, tiny pose jitter."""
    q = dict(p)
    if contraction > 0:
        s = p["scale"]
        q["r_lv"] = p["r_lv"] * (1.0 - contraction)
        q["t_myo"] = p["t_myo"] * (1.0 + 0.5 * contraction)
        q["rv_thick"] = p["rv_thick"] * (1.0 - 0.5 * contraction)
        q["rv_tan"] = p["rv_tan"] * (1.0 - 0.3 * contraction)
        q["cy"] = p["cy"] + _u(rng, -0.01, 0.01) * s
        q["cx"] = p["cx"] + _u(rng, -0.01, 0.01) * s
        q["theta"] = p["theta"] + _u(rng, -0.1, 0.1)
        q["rv_dir"] = p["rv_dir"] + _u(rng, -0.1, 0.1)
    return q


def make_volume(rng: np.random.Generator, depth: int, height: int, width: int,
                params: dict | None = None, contraction: float = 0.0):
    """Render one phantom volume.

    Args:
        rng: numpy Generator; the only source of randomness.
        depth, height, width: output shape (D, H, W).
        params: anatomy/appearance from :func:`sample_params` (drawn from ``rng`` when None).
        contraction: 0 for an ED-like frame; e.g. 0.25 shrinks the cavities like an ES frame.

    Returns:
        image float32 (D,H,W) min-max normalised to exactly [0,1] over the volume,
        label uint8 (D,H,W) with 0 BG, 1 RV, 2 Myo, 3 LV.
    """
    depth, height, width = int(depth), int(height), int(width)
    if depth < 1 or height < 8 or width < 8:
        raise ValueError(f"volume too small: {(depth, height, width)}")
    p = sample_params(rng, height, width) if params is None else params
    p = _frame_params(rng, p, float(contraction))

    # slice position z: 0 at the base (slice 1) .. 1 at the apex (slice D); shape (D,1,1)
    z = (np.arange(depth, dtype=np.float64) / max(depth - 1, 1)).reshape(-1, 1, 1)
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                         indexing="ij")
    yy = yy[None]
    xx = xx[None]

    # --- LV / myocardium: concentric ellipses with a shared angular modulation -----------------------
    cy = p["cy"] + p["dy"] * z
    cx = p["cx"] + p["dx"] * z
    ct, st = np.cos(p["theta"]), np.sin(p["theta"])
    u = (xx - cx) * ct + (yy - cy) * st
    v = -(xx - cx) * st + (yy - cy) * ct
    # angular modulation 1 + h2 cos(2 phi + p2) + h3 cos(3 phi + p3), phi = atan2(v, u), without trig per pixel
    r = np.hypot(u, v)
    safe = np.where(r > 0, r, 1.0)
    c1 = np.where(r > 0, u / safe, 1.0)
    s1 = v / safe
    c2, s2 = c1 * c1 - s1 * s1, 2.0 * c1 * s1
    c3, s3 = c1 * (4.0 * c1 * c1 - 3.0), s1 * (3.0 - 4.0 * s1 * s1)
    mod = (1.0 + p["h2"] * (c2 * np.cos(p["p2"]) - s2 * np.sin(p["p2"]))
           + p["h3"] * (c3 * np.cos(p["p3"]) - s3 * np.sin(p["p3"])))

    shrink = np.clip(1.0 - (z / p["lv_end"]) ** p["lv_pow"], 0.0, 1.0)
    a_lv = p["r_lv"] * shrink  # (D,1,1)
    b_lv = a_lv * p["ecc"]
    t = p["t_myo"] * (1.0 - p["myo_taper"] * z)
    t = np.maximum(t, 2.5)  # keeps >= 2 px of myocardium between LV and anything else
    a_o = a_lv + t
    b_o = b_lv + t
    outer = (u / a_o) ** 2 + (v / b_o) ** 2 < mod ** 2
    has_lv = a_lv >= 1.5  # a cavity smaller than this closes (apical slice: solid myocardium cap)
    lv = ((u / np.maximum(a_lv, 1e-6)) ** 2 + (v / np.maximum(b_lv, 1e-6)) ** 2 < mod ** 2) & has_lv

    # --- RV: a larger ellipse beside the ring, minus the ring region -> crescent touching the ring -----
    r_o = 0.5 * (a_o + b_o)  # mean outer radius per slice
    # outer (epicardial) radius in the RV direction, modulation included
    al = p["rv_dir"] - p["theta"]
    mod_dir = 1.0 + p["h2"] * np.cos(2 * al + p["p2"]) + p["h3"] * np.cos(3 * al + p["p3"])
    r_dir = mod_dir / np.sqrt((np.cos(al) / a_o) ** 2 + (np.sin(al) / b_o) ** 2)
    rv_scale = np.clip(1.0 - (z / p["rv_end"]) ** 2, 0.0, 1.0)
    # the RV ellipse's centre lies inside the ring (d < r_dir), so it overlaps the ring and what is left
    # after removing the ring is a crescent hugging the ring's outer side, rv_thick * r_o thick in its middle
    d = r_dir * p["rv_off"]
    A_r = r_dir * (1.0 - p["rv_off"]) + r_o * p["rv_thick"] * rv_scale
    A_t = p["rv_tan"] * r_o * np.sqrt(rv_scale)
    cd, sd = np.cos(p["rv_dir"]), np.sin(p["rv_dir"])
    ry = cy + d * sd
    rx = cx + d * cd
    ur = (xx - rx) * cd + (yy - ry) * sd
    vr = -(xx - rx) * sd + (yy - ry) * cd
    has_rv = rv_scale > 0.25
    rv = ((ur / np.maximum(A_r, 1e-6)) ** 2 + (vr / np.maximum(A_t, 1e-6)) ** 2 < 1.0) & has_rv & ~outer
    # in-plane opening drops the crescent's one-pixel-thin horn tips; then keep one piece per slice
    rv = largest_per_slice(ndimage.binary_opening(rv, structure=CROSS3), min_pixels=8)

    label = np.zeros((depth, height, width), dtype=np.uint8)
    label[rv] = 1
    label[outer] = 2
    label[lv] = 3

    # --- appearance -----------------------------------------------------------------------------------
    cb, sb = np.cos(p["body_rot"]), np.sin(p["body_rot"])
    by, bx = yy - height / 2.0, xx - width / 2.0
    bu = bx * cb + by * sb
    bv = -bx * sb + by * cb
    body = (bu / p["body_a"]) ** 2 + (bv / p["body_b"]) ** 2 < 1.0  # (1,H,W)

    # textured tissue: smoothed white noise (a few pixels correlation, coherent across slices)
    tex = ndimage.gaussian_filter(rng.standard_normal((depth, height, width)), sigma=(0.8, 2.5, 2.5))
    tex *= p["tex_std"] / max(float(tex.std()), 1e-8)
    img = np.where(body, p["i_bg"] + tex, p["i_air"])
    lut = np.array([0.0, p["i_rv"], p["i_myo"], p["i_lv"]])
    img = np.where(label > 0, lut[label], img)
    # partial-volume blur, in-plane only
    img = ndimage.gaussian_filter(img, sigma=(0.0, p["blur"], p["blur"]))

    # smooth multiplicative bias field: exp of a random low-order polynomial in normalised x, y, z
    yn = (yy - height / 2.0) / (height / 2.0)
    xn = (xx - width / 2.0) / (width / 2.0)
    zn = 2.0 * z - 1.0
    c = rng.uniform(-1.0, 1.0, size=6)
    poly = c[0] * xn + c[1] * yn + c[2] * xn * yn + c[3] * xn ** 2 + c[4] * yn ** 2 + c[5] * 0.5 * zn
    img = img * np.exp(p["bias"] * poly / 2.0)
    img = img + p["noise"] * rng.standard_normal((depth, height, width))

    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / max(hi - lo, 1e-12)
    img = np.round(img * _QUANT) / _QUANT  # 0 and 1 are kept exactly
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return img, label


# ---------------------------------------------------------------------------------------------------
def _patient_rng(seed: int, index: int) -> np.random.Generator:
    # each patient depends only on (seed, index): adding patients never changes earlier ones
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))


def generate_dataset(out_dir, seed: int = 0, n_train: int = 16, n_val: int = 4, n_test: int = 4,
                     size=(128, 128), depth_range=(6, 10), size_jitter: bool = True, frames: int = 2,
                     overwrite: bool = False, write_train_volumes: bool = True, where=None) -> dict:
    """Write a synthetic ACDC-like dataset in the SSL4MIS layout to ``out_dir`` and return a summary.

    Patients are numbered patient001.. in the order train, val, test; each has ``frames`` volumes
    ``patientXXX_frame01``, ``..._frame02`` (the second contracted like ES) of the same depth, drawn from
    ``depth_range`` (inclusive). With ``size_jitter`` each patient gets its own H, W = size ± up to 16 px
    (even numbers). The folder is built beside ``out_dir`` and renamed into place; an existing non-empty
    ``out_dir`` is refused unless ``overwrite``. Train volumes are also written as ``data/<volume>.h5``
    unless ``write_train_volumes=False``. Patient i's data depend only on (seed, i). ``where``: the flag that
    chose ``out_dir``, named when the folder cannot be written.

    Returns a summary dict: out_dir, seconds, patients, {train,val,test}_patients, volumes (per split),
    train_slices, patients_to_slices, train_patient_slices, shapes ({volume: [D,H,W]}), class_fractions.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    n_train, n_val, n_test, frames = int(n_train), int(n_val), int(n_test), int(frames)
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ValueError("need n_train >= 1 and n_val, n_test >= 0")
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be in 1..{MAX_FRAMES}")
    if n_train + n_val + n_test > MAX_PATIENTS:
        raise ValueError(f"at most {MAX_PATIENTS} patients")
    dmin, dmax = int(depth_range[0]), int(depth_range[1])
    if not 1 <= dmin <= dmax:
        raise ValueError(f"bad depth_range {depth_range}")
    H0, W0 = int(size[0]), int(size[1])
    if min(H0, W0) < MIN_SIZE:
        raise ValueError(f"size too small: {size} (need >= {MIN_SIZE})")
    with atomic_folder(out_dir, overwrite, where) as tmp:
        summary = _build(tmp, seed, n_train, n_val, n_test, (H0, W0), (dmin, dmax), size_jitter, frames,
                         write_train_volumes)
    summary["out_dir"] = str(out_dir)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _build(root: Path, seed, n_train, n_val, n_test, size, depth_range, size_jitter, frames,
           write_train_volumes) -> dict:
    data = root / "data"
    slices_dir = data / "slices"
    slices_dir.mkdir(parents=True)
    H0, W0 = size
    splits = {"train": [], "val": [], "test": []}
    train_slices, train_patient_slices = [], []
    counts = np.zeros(4, dtype=np.int64)
    shapes = {}
    n_pat = n_train + n_val + n_test
    for i in range(n_pat):
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        pid = f"patient{i + 1:03d}"
        rng = _patient_rng(seed, i)
        depth = int(rng.integers(depth_range[0], depth_range[1] + 1))
        if size_jitter:
            H = H0 + 2 * int(rng.integers(-8, 9))
            W = W0 + 2 * int(rng.integers(-8, 9))
        else:
            H, W = H0, W0
        params = sample_params(rng, H, W)
        contraction = _u(rng, 0.20, 0.35)
        n_sl = 0
        for f in range(frames):
            vid = f"{pid}_frame{f + 1:02d}"
            img, lab = make_volume(rng, depth, H, W, params=params, contraction=0.0 if f == 0 else contraction)
            counts += np.bincount(lab.ravel(), minlength=4)[:4]
            shapes[vid] = [depth, H, W]
            splits[split].append(vid)
            if split != "train" or write_train_volumes:
                write_h5(data / f"{vid}.h5", img, lab)
            if split == "train":
                for k in range(depth):
                    sid = f"{vid}_slice_{k + 1}"
                    write_h5(slices_dir / f"{sid}.h5", img[k], lab[k])
                    train_slices.append(sid)
                    n_sl += 1
        if split == "train":
            train_patient_slices.append(n_sl)

    write_list(root / "train_slices.list", train_slices)
    write_list(root / "train.list", splits["train"])
    write_list(root / "val.list", splits["val"])
    write_list(root / "test.list", splits["test"])
    cum = np.cumsum(train_patient_slices)
    keys = sorted({k for k in LABELNUMS if k <= n_train} | {n_train})
    p2s = {str(k): int(cum[k - 1]) for k in keys}
    desc = {
        "name": "synthetic_ACDC",
        "dataset": "ACDC",
        "num_classes": 4,
        "class_names": list(CLASS_NAMES),
        "patients_to_slices": p2s,
        "seed": int(seed),
        "generator": "code/dataloaders/synthetic.py",
        "n_train": n_train, "n_val": n_val, "n_test": n_test, "frames": frames,
        "size": [H0, W0], "depth_range": list(depth_range), "size_jitter": bool(size_jitter),
    }
    write_text(root / "dataset.json", lambda f: f.write(json.dumps(desc, indent=2) + "\n"))
    return {
        "patients": n_pat,
        "train_patients": n_train, "val_patients": n_val, "test_patients": n_test,
        "volumes": {k: list(v) for k, v in splits.items()},
        "train_slices": len(train_slices),
        "patients_to_slices": p2s,
        "train_patient_slices": list(map(int, train_patient_slices)),
        "shapes": shapes,
        "class_fractions": {n: float(c) / max(int(counts.sum()), 1) for n, c in zip(CLASS_NAMES, counts)},
    }
