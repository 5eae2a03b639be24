"""pack_dataset.py: a dataset folder survives pack -> unpack (labels, lists, spacing exact; images to 1/510 of
their range), and bad paths end with one clear line."""
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import pack_dataset
from dataloaders.dataset import DataError
from utils.errors import UsageError

CODE = os.path.join(os.path.dirname(__file__), "..", "code")


def test_pack_unpack_round_trip(tiny_root, tmp_path):
    packed, out = tmp_path / "p" / "ds.npz", tmp_path / "unpacked"
    r = pack_dataset.pack(tiny_root, packed)
    h5s = sorted(Path(tiny_root).rglob("*.h5"))
    assert r["files"] == len(h5s) > 0 and "train_slices.list" in r["meta"] and packed.is_file()
    assert not list(packed.parent.glob("*.tmp*"))
    pack_dataset.unpack(str(packed), out)
    for name in r["meta"]:
        assert (out / name).read_text() == (Path(tiny_root) / name).read_text()
    for path in h5s:
        with h5py.File(path) as f, h5py.File(out / path.relative_to(tiny_root)) as g:
            assert g["image"].dtype == np.float32 and g["image"].shape == f["image"].shape
            np.testing.assert_array_equal(g["label"][()], f["label"][()])
            image = f["image"][()]
            step = (image.max() - image.min()) / 255
            assert np.abs(g["image"][()] - image).max() <= step / 2 + 1e-6
            assert dict(g.attrs).keys() == dict(f.attrs).keys()
            if "spacing" in f.attrs:
                np.testing.assert_allclose(g.attrs["spacing"], f.attrs["spacing"])


def test_quantize_constant_image_and_non_finite():
    codes, lo_hi = pack_dataset.quantize(np.full((4, 4), 0.3, np.float32))
    np.testing.assert_allclose(pack_dataset.dequantize(codes, lo_hi), 0.3, atol=1e-7)
    with pytest.raises(ValueError, match="non-finite"):
        pack_dataset.quantize(np.array([0.0, np.nan], np.float32))


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(CODE, "pack_dataset.py"), *args], capture_output=True,
                          text=True)


def test_bad_paths_give_one_line(tiny_root, tmp_path):
    r = _cli("pack", "--root_path", str(tmp_path / "missing"), "--out", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: --root_path {tmp_path / 'missing'}: folder not found"
    (tmp_path / "empty").mkdir()
    r = _cli("pack", "--root_path", str(tmp_path / "empty"), "--out", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and "no .h5 files" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    r = _cli("unpack", "--packed", str(tmp_path / "junk.npz"), "--root_path", str(tmp_path / "u"))
    assert r.returncode == 2 and "not a file written by pack_dataset.py" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "u").exists()
    np.save(tmp_path / "one.npy", np.arange(3))  # a .npy: np.load gives an array, not an archive
    with pytest.raises(UsageError, match=r"one.npy: one array, not a file written by pack_dataset.py"):
        pack_dataset.unpack(str(tmp_path / "one.npy"), tmp_path / "u")
    packed = tmp_path / "ok.npz"
    pack_dataset.pack(tiny_root, packed)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    r = _cli("unpack", "--packed", str(packed), "--root_path", str(tmp_path / "full"))
    assert r.returncode == 2 and "--overwrite" in r.stderr and (tmp_path / "full" / "keep.txt").exists()


def test_a_cut_or_changed_pack_is_named_damaged_in_one_line(tiny_root, tmp_path):
    packed, out = tmp_path / "ds.npz", tmp_path / "u"
    pack_dataset.pack(tiny_root, packed)
    data = packed.read_bytes()
    assert data[:4] == b"PK\x03\x04"
    packed.write_bytes(data[:len(data) // 2])  # a copy cut half-way (was: a zipfile.BadZipFile traceback)
    r = _cli("unpack", "--packed", str(packed), "--root_path", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == (f"error: --packed {packed}: damaged (BadZipFile: File is not a zip file); copy it "
                                f"again from where it was packed, or pack the dataset folder again "
                                f"(pack_dataset.py pack)")
    changed = bytearray(data)
    changed[len(data) // 2] ^= 0xFF  # a byte changed inside an array: found by the member's read
    packed.write_bytes(changed)
    with pytest.raises(DataError, match=rf"^--packed {re.escape(str(packed))}: damaged \(.+\); copy it again"):
        pack_dataset.unpack(str(packed), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds.npz"]  # no folder, nothing half-built
