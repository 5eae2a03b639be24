"""Pack a prepared dataset folder (SSL4MIS layout) into one compressed file, and unpack it again.

A GPU machine may take only a small tree along (e.g. 64 MiB), and real ACDC is 107 MB of float32 h5 files.
Packed, every image is stored as 8-bit codes of its own [min, max] range (ACDC's images are min-max
normalised to [0, 1], so the step is 1/255 and the largest error 1/510); labels (absent for unlabeled slices) and
attributes (spacing, origin, ...) are kept exactly, and so are the folder's `.list` files and `dataset.json`.
Real ACDC (train slices + val) packs to 53 MiB.

    python pack_dataset.py pack --root_path ../data/ACDC --out ../.gpu_data/ACDC.npz
    python pack_dataset.py unpack --packed ../.gpu_data/ACDC.npz --root_path /tmp/ACDC

Keep the packed file out of the repository (it is the data: e.g. a folder listed in .git/info/exclude).
Results on an unpacked copy differ from the original's by the quantisation of the images.
"""
import argparse
import json
import os
import zipfile
import zlib
from pathlib import Path

import h5py
import numpy as np

from dataloaders.dataset import DataError
from dataloaders.layout import atomic_folder, check_output, write_h5
from utils.config import UsageError, run_main
from utils.errors import one_line
from utils.safe_write import write_file, write_text

META_SUFFIXES = (".list", ".json")  # the folder's own small files, packed verbatim
# a pack cut short or changed on its way (an interrupted copy, a full disk): zipfile's and zlib's own errors,
# neither OSError nor ValueError; np.load meets a cut one (no zip directory at its end), a member read a changed one
DAMAGED = (zipfile.BadZipFile, EOFError, zlib.error)


def quantize(image):
    """float image -> (uint8 codes, float64 [lo, hi]) with image ≈ lo + codes * (hi - lo) / 255."""
    lo, hi = float(image.min()), float(image.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError("image has non-finite values")
    scale = (hi - lo) / 255 or 1.0
    return np.rint((image - lo) / scale).astype(np.uint8), np.array([lo, hi])


def dequantize(codes, lo_hi):
    lo, hi = lo_hi
    return (lo + codes.astype(np.float64) * ((hi - lo) / 255)).astype(np.float32)


def pack(root, out):
    """Every .h5 under `root` (path kept relative) and the .list/.json files at its top -> one .npz."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--root_path {root}: folder not found")
    h5_files = sorted(root.rglob("*.h5"))
    if not h5_files:
        raise UsageError(f"--root_path {root}: no .h5 files; is this a prepared dataset folder?")
    arrays, index = {}, []
    for i, path in enumerate(h5_files):
        rel = path.relative_to(root).as_posix()
        try:
            with h5py.File(path, "r") as f:
                image = f["image"][()]
                label = f["label"][()] if "label" in f else None  # an unlabeled training slice has none
                attrs = {k: np.asarray(v).tolist() for k, v in f.attrs.items()}  # spacing, origin, direction, ...
        except (OSError, KeyError) as e:
            raise UsageError(f"{path}: unreadable or without 'image' ({e})") from None
        try:
            arrays[f"i{i}"], arrays[f"r{i}"] = quantize(image)
        except ValueError as e:
            raise UsageError(f"{path}: {e}") from None
        if label is not None:
            arrays[f"l{i}"] = label.astype(np.uint8)
        index.append({"path": rel, "attrs": attrs})
    meta = {p.name: p.read_text() for p in sorted(root.iterdir()) if p.is_file() and p.suffix in META_SUFFIXES}
    arrays["index"] = np.frombuffer(json.dumps({"files": index, "meta": meta}).encode(), dtype=np.uint8)
    out = Path(out)
    write_file(out, lambda tmp: np.savez_compressed(tmp, **arrays), where="--out")  # never a half-written pack
    return {"files": len(index), "meta": sorted(meta), "bytes": out.stat().st_size}


def damaged(packed, e):
    return DataError(f"--packed {packed}: damaged ({one_line(e, with_type=True)}); copy it again from where it was "
                     f"packed, or pack the dataset folder again (pack_dataset.py pack)")


def member(z, name, packed):
    """One array of the open pack `z`, its damage or absence as one line naming the file."""
    try:
        return z[name]
    except DAMAGED + (ValueError,) as e:  # ValueError: a changed byte in the array's header, read before its CRC
        raise damaged(packed, e) from None
    except KeyError:
        raise UsageError(f"--packed {packed}: has no array {name!r}; not a file written by pack_dataset.py") from None


def unpack(packed, root, overwrite=False):
    """The .npz of `pack` -> a dataset folder at `root` (built aside, renamed into place)."""
    if not os.path.isfile(packed):
        raise UsageError(f"--packed {packed}: file not found")
    try:
        check_output(root, overwrite)  # here, where no error of reading the pack can pass for it
    except ValueError as e:  # an existing folder without --overwrite
        raise UsageError(f"--root_path {root}: {e}") from None
    try:
        z = np.load(packed)
    except DAMAGED as e:
        raise damaged(packed, e) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"--packed {packed}: not a file written by pack_dataset.py ({e})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a .npy holds one array, no index
        raise UsageError(f"--packed {packed}: one array, not a file written by pack_dataset.py (an .npz)")
    with z:
        index = member(z, "index", packed)
        try:
            index = json.loads(index.tobytes().decode())
            meta, files = index["meta"], index["files"]
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"--packed {packed}: not a file written by pack_dataset.py ({e})") from None
        with atomic_folder(root, overwrite, "--root_path") as tmp:
            for name, text in meta.items():
                write_text(tmp / name, lambda f: f.write(text), "--root_path")
            for i, entry in enumerate(files):
                path = tmp / entry["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                attrs = entry.get("attrs", {"spacing": entry.get("spacing")})  # packs of older versions: spacing
                label = member(z, f"l{i}", packed) if f"l{i}" in z.files else None
                image = dequantize(member(z, f"i{i}", packed), member(z, f"r{i}", packed))
                write_h5(path, image, label, attrs=attrs, where="--root_path")
    return {"files": len(files), "meta": sorted(meta)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pack", help="dataset folder -> one .npz")
    a.add_argument("--root_path", required=True, help="the prepared dataset folder")
    a.add_argument("--out", required=True, help="the .npz to write")
    b = sub.add_parser("unpack", help="one .npz -> dataset folder")
    b.add_argument("--packed", required=True, help="a .npz written by 'pack'")
    b.add_argument("--root_path", required=True, help="the dataset folder to create")
    b.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    args = p.parse_args(argv)
    if args.command == "pack":
        r = pack(args.root_path, args.out)
        print(f"packed {r['files']} h5 files and {', '.join(r['meta']) or 'no list files'} into {args.out} "
              f"({r['bytes'] / 2 ** 20:.1f} MiB)")
    else:
        r = unpack(args.packed, args.root_path, args.overwrite)
        print(f"unpacked {r['files']} h5 files and {', '.join(r['meta']) or 'no list files'} into {args.root_path}")
    return r


if __name__ == "__main__":
    run_main(main)
