"""The SSL4MIS folder layout (docs/datasets.md, The prepared layout): writing h5 files, list files (and reading
them back), and the folder itself, atomically.

A dataset folder is built in a temporary sibling and renamed into place at the end, so a half-written folder
is never mistaken for a finished one; an existing non-empty folder is only replaced on request.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import h5py

from utils.safe_write import write_bytes, write_error, write_text


def write_h5(path, image, label, spacing=None, attrs=None, where=None):
    """image float32 and label uint8, (H, W) or (D, H, W); label None: an unlabeled slice (no 'label' dataset).
    spacing (per array axis, mm) and any `attrs` (origin, direction, intensity_range, ...) become attributes.
    The file is built in memory and written through utils/safe_write.py: h5py's own writes to a full disk fail
    while it closes the file, where the error is dropped, and then crash the interpreter."""
    chunks = image.shape if image.ndim == 2 else (1,) + image.shape[1:]  # one chunk per slice
    with h5py.File(os.fspath(path), "w", driver="core", backing_store=False, libver="v110") as f:  # (never on disk)
        for name, arr in (("image", image), ("label", label)):
            if arr is not None:
                f.create_dataset(name, data=arr, chunks=chunks, compression="gzip", compression_opts=4, shuffle=True)
        if spacing is not None:
            f.attrs["spacing"] = [float(s) for s in spacing]
        for key, value in (attrs or {}).items():
            if value is not None:
                f.attrs[key] = value
        f.flush()
        data = f.id.get_file_image()
    write_bytes(path, data, where)


def write_list(path, items, where=None):
    write_text(path, lambda f: f.write("".join(f"{x}\n" for x in items)), where)


def read_ids(path):
    """The ids of a .list file, one per line, blank lines skipped; None when the file does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def check_output(out_dir, overwrite):
    """Refuse an existing non-empty folder unless overwrite; raises ValueError naming it."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise ValueError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_folder(out_dir, overwrite=False, where=None):
    """Yields a temporary sibling folder to fill; on success it replaces `out_dir`, on any error it is removed.
    A folder that cannot be made or renamed (read-only, full disk) raises WriteError naming `where` (a flag)."""
    out_dir = Path(out_dir).expanduser().resolve()
    check_output(out_dir, overwrite)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as e:
        raise write_error(out_dir, e, where, existed=False) from None
    try:
        yield tmp
        trash = None
        try:
            if out_dir.exists():  # the old folder is renamed away first, then removed
                trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                os.replace(out_dir, trash / "old")
            os.replace(tmp, out_dir)
        except OSError as e:
            if trash is not None and (trash / "old").exists() and not out_dir.exists():
                os.replace(trash / "old", out_dir)  # the old folder back in its place
            raise write_error(out_dir, e, where, existed=False) from None
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
