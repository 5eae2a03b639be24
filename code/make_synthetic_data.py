"""Write the synthetic cardiac-phantom dataset (SSL4MIS / ACDC layout) used as the demo default and by tests.

    python code/make_synthetic_data.py                       # -> <project>/data/synthetic_ACDC
    python code/make_synthetic_data.py --out /tmp/syn --seed 1 --n_train 8 --size 96 96 --overwrite
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from dataloaders.layout import check_output
from dataloaders.synthetic import MAX_FRAMES, MAX_PATIENTS, MIN_SIZE, generate_dataset
from utils.config import SEED, UsageError, run_main

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "synthetic_ACDC"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help=f"output folder (default: {DEFAULT_OUT})")
    ap.add_argument("--seed", type=SEED, default=0)
    ap.add_argument("--n_train", type=int, default=16, help="train patients")
    ap.add_argument("--n_val", type=int, default=4, help="val patients")
    ap.add_argument("--n_test", type=int, default=4, help="test patients")
    ap.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"),
                    help="nominal slice size (each patient gets its own size within +-16 px unless --no_size_jitter)")
    ap.add_argument("--depth_range", type=int, nargs=2, default=(6, 10), metavar=("MIN", "MAX"),
                    help="slices per volume, inclusive")
    ap.add_argument("--frames", type=int, default=2, help="volumes per patient (frame01 ED-like, frame02 ES-like)")
    ap.add_argument("--no_size_jitter", action="store_true", help="every patient gets exactly --size")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return ap


def check_args(args, out: Path) -> None:
    """Each bad flag as one line naming it and the fix, before anything is written (generate_dataset's own
    errors name no flag)."""
    if args.n_train < 1:
        raise UsageError(f"--n_train {args.n_train}: use 1 or more (training needs a patient)")
    for flag, n in (("--n_val", args.n_val), ("--n_test", args.n_test)):
        if n < 0:
            raise UsageError(f"{flag} {n}: use 0 or more")
    total = args.n_train + args.n_val + args.n_test
    if total > MAX_PATIENTS:
        raise UsageError(f"--n_train + --n_val + --n_test = {total} patients: use at most {MAX_PATIENTS} in all")
    if not 1 <= args.frames <= MAX_FRAMES:
        raise UsageError(f"--frames {args.frames}: use 1 to {MAX_FRAMES}")
    lo, hi = args.depth_range
    if not 1 <= lo <= hi:
        raise UsageError(f"--depth_range {lo} {hi}: use MIN MAX with 1 <= MIN <= MAX, e.g. 6 10")
    if min(args.size) < MIN_SIZE:
        raise UsageError(f"--size {args.size[0]} {args.size[1]}: too small; use at least {MIN_SIZE} {MIN_SIZE}")
    try:
        check_output(out, args.overwrite)
    except ValueError as e:  # a non-empty folder without --overwrite
        raise UsageError(f"--out {e}") from None


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    out = args.out if args.out.is_absolute() else Path(os.getcwd()) / args.out
    check_args(args, out)
    s = generate_dataset(out, seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                         size=tuple(args.size), depth_range=tuple(args.depth_range),
                         size_jitter=not args.no_size_jitter, frames=args.frames, overwrite=args.overwrite,
                         where="--out")
    n_vol = sum(len(v) for v in s["volumes"].values())
    hs = sorted({sh[1] for sh in s["shapes"].values()})
    ws = sorted({sh[2] for sh in s["shapes"].values()})
    ds = sorted({sh[0] for sh in s["shapes"].values()})
    fr = ", ".join(f"{k} {100 * v:.2f}%" for k, v in s["class_fractions"].items())
    p2s = ", ".join(f"{k}->{v}" for k, v in s["patients_to_slices"].items())
    size_mb = _dir_bytes(Path(s["out_dir"])) / 2 ** 20
    print(f"Wrote synthetic_ACDC (seed {args.seed}) to {s['out_dir']} in {s['seconds']:.2f} s: "
          f"{s['patients']} patients ({s['train_patients']} train / {s['val_patients']} val / "
          f"{s['test_patients']} test), {n_vol} volumes of {ds[0]}-{ds[-1]} slices, H {hs[0]}-{hs[-1]}, "
          f"W {ws[0]}-{ws[-1]}; {s['train_slices']} train slices (labelnum->slices: {p2s}); "
          f"class voxel fractions: {fr}; {size_mb:.1f} MB on disk.")
    return s


if __name__ == "__main__":
    run_main(main)
