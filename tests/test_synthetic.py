"""Tests of the synthetic cardiac-phantom dataset (code/dataloaders/synthetic.py, code/make_synthetic_data.py)."""
import json
import os
import re
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from dataloaders.synthetic import generate_dataset, make_volume, sample_params
from utils.config import run_main
from utils.errors import UsageError

CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity
CODE = os.path.join(os.path.dirname(__file__), "..", "code")


def _read(path):
    with h5py.File(path, "r") as f:
        return f["image"][()], f["label"][()]


def _lines(path):
    return Path(path).read_text().splitlines()


def _neighbours4(mask):
    """For each pixel, the set of labels of its 4-neighbours is read via shifted copies (padded with -1)."""
    p = np.pad(mask.astype(np.int16), 1, constant_values=-1)
    return [p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]]


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "synthetic_ACDC"
    t0 = time.perf_counter()
    summary = generate_dataset(out)  # the documented defaults
    dt = time.perf_counter() - t0
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2 ** 20
    print(f"\n[synthetic] default dataset: {dt:.2f} s, {size_mb:.1f} MB, {summary['train_slices']} train slices")
    assert dt < 30, f"default dataset took {dt:.1f} s"
    return out, summary


@pytest.fixture(scope="module")
def volumes(default_ds):
    """All volumes of the default dataset: {volume_id: (image, label)}."""
    out, _ = default_ds
    vids = _lines(out / "train.list") + _lines(out / "val.list") + _lines(out / "test.list")
    return OrderedDict((v, _read(out / "data" / f"{v}.h5")) for v in vids)


# ------------------------------------------------------------------------------------------- layout
def test_layout_and_lists_agree_with_files(default_ds):
    out, s = default_ds
    for name in ("train_slices.list", "train.list", "val.list", "test.list", "dataset.json"):
        assert (out / name).is_file(), name
    train, val, test = _lines(out / "train.list"), _lines(out / "val.list"), _lines(out / "test.list")
    assert len(train) == 16 * 2 and len(val) == 4 * 2 and len(test) == 4 * 2
    assert len(set(train + val + test)) == len(train + val + test)
    pat = re.compile(r"^patient\d{3}_frame\d{2}$")
    assert all(pat.match(v) for v in train + val + test)
    # patients are disjoint between splits
    pid = lambda v: v.split("_")[0]  # noqa: E731
    assert not ({pid(v) for v in train} & {pid(v) for v in val + test}) and not ({pid(v) for v in val} & {pid(v) for v in test})
    assert train[:4] == ["patient001_frame01", "patient001_frame02", "patient002_frame01", "patient002_frame02"]
    vol_files = {p.stem for p in (out / "data").glob("*.h5")}
    assert vol_files == set(train + val + test)
    slices = _lines(out / "train_slices.list")
    slice_files = {p.stem for p in (out / "data" / "slices").glob("*.h5")}
    assert slice_files == set(slices) and len(slices) == len(set(slices)) == s["train_slices"]
    assert not any(any((out / "data" / "slices").glob(f"{pid(v)}_*")) for v in val + test)
    # no temporary siblings left behind
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_slice_ids_1_based_contiguous_and_ordered(default_ds, volumes):
    out, _ = default_ds
    slices = _lines(out / "train_slices.list")
    train = _lines(out / "train.list")
    seen = OrderedDict()
    for sid in slices:
        m = re.match(r"^(patient\d{3}_frame\d{2})_slice_(\d+)$", sid)
        assert m, sid
        seen.setdefault(m.group(1), []).append(int(m.group(2)))
    assert list(seen) == train  # patient by patient, frame by frame
    for vid, ks in seen.items():
        depth = volumes[vid][0].shape[0]
        assert ks == list(range(1, depth + 1)), vid
    # the slice files are exactly the volume's slices
    for vid in train[:3]:
        img, lab = volumes[vid]
        for k in range(img.shape[0]):
            si, sl = _read(out / "data" / "slices" / f"{vid}_slice_{k + 1}.h5")
            assert np.array_equal(si, img[k]) and np.array_equal(sl, lab[k])


def test_dtypes_shapes_range(default_ds, volumes):
    out, _ = default_ds
    shapes = set()
    for vid, (img, lab) in volumes.items():
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert img.ndim == 3 and img.shape == lab.shape
        D, H, W = img.shape
        assert 6 <= D <= 10
        assert H % 2 == 0 and W % 2 == 0 and abs(H - 128) <= 16 and abs(W - 128) <= 16
        assert img.min() == 0.0 and img.max() == 1.0, vid  # whole-volume min-max normalisation
        assert np.isfinite(img).all()
        assert set(np.unique(lab)) <= {0, 1, 2, 3}
        shapes.add((H, W))
    assert len(shapes) >= 3  # size jitter exercises resizing
    # both frames of a patient share the volume shape, but differ in content
    for vid in list(volumes)[::2]:
        other = vid.replace("frame01", "frame02")
        a, b = volumes[vid], volumes[other]
        assert a[0].shape == b[0].shape
        assert not np.array_equal(a[1], b[1])
    slice_file = next((out / "data" / "slices").glob("*.h5"))
    with h5py.File(slice_file, "r") as f:
        assert f["image"].ndim == 2 and f["image"].dtype == np.float32 and f["label"].dtype == np.uint8
        assert f["image"].compression == "gzip"


def test_dataset_json(default_ds):
    out, s = default_ds
    d = json.loads((out / "dataset.json").read_text())
    assert d["name"] == "synthetic_ACDC" and d["dataset"] == "ACDC" and d["seed"] == 0
    assert d["num_classes"] == 4 and d["class_names"] == ["BG", "RV", "Myo", "LV"]
    per_patient = OrderedDict()
    for sid in _lines(out / "train_slices.list"):
        per_patient[sid.split("_")[0]] = per_patient.get(sid.split("_")[0], 0) + 1
    counts = list(per_patient.values())
    assert set(d["patients_to_slices"]) == {"1", "2", "3", "4", "7", "16"}
    for k, n in d["patients_to_slices"].items():
        assert n == sum(counts[: int(k)]), k
    assert d["patients_to_slices"]["16"] == len(_lines(out / "train_slices.list"))
    assert d["patients_to_slices"] == s["patients_to_slices"]


# ------------------------------------------------------------------------------------------- anatomy
def test_classes_present_and_spatial_relations(volumes):
    n_slices = n_all4 = n_rv = 0
    for vid, (img, lab) in volumes.items():
        for k in range(lab.shape[0]):
            sl = lab[k]
            present = set(np.unique(sl))
            n_slices += 1
            n_all4 += present == {0, 1, 2, 3}
            assert 2 in present, f"{vid} slice {k + 1}: no myocardium"
            # every LV pixel's 4-neighbours are LV or Myo (the ring encloses the cavity)
            lv = sl == 3
            for nb in _neighbours4(sl):
                assert np.all((nb[lv] == 3) | (nb[lv] == 2)), f"{vid} slice {k + 1}: LV leaks"
            # the LV cavity is a single blob
            if lv.any():
                assert ndimage.label(lv, CROSS)[1] == 1
            # RV touches (or nearly touches) the myocardium and never touches the LV
            rv = sl == 1
            if rv.any():
                n_rv += 1
                myo_near = ndimage.binary_dilation(sl == 2, CROSS)
                assert (rv & myo_near).any(), f"{vid} slice {k + 1}: RV detached"
                assert not (rv & ndimage.binary_dilation(lv, CROSS)).any()
                assert ndimage.label(rv, CROSS)[1] == 1  # one crescent
        # apex smaller than base
        area = (lab > 0).reshape(lab.shape[0], -1).sum(1)
        assert area[0] > area[-1], vid
    assert n_all4 / n_slices >= 0.6, n_all4 / n_slices
    assert n_all4 < n_slices  # some apical slices lack the RV or the cavity
    assert n_rv / n_slices >= 0.6


def test_intensities_are_learnable(volumes):
    lv_gt_myo, rv_gt_myo, diffs = [], [], []
    for img, lab in volumes.values():
        m = {c: float(img[lab == c].mean()) for c in (1, 2, 3)}
        lv_gt_myo.append(m[3] > m[2])
        rv_gt_myo.append(m[1] > m[2])
        diffs.append(m[3] - m[2])
    assert np.mean(diffs) > 0.2
    assert np.mean(lv_gt_myo) >= 0.95 and np.mean(rv_gt_myo) >= 0.9


def test_es_frame_has_smaller_lv(volumes):
    ratios = []
    for vid in list(volumes)[::2]:
        ed = (volumes[vid][1] == 3).sum()
        es = (volumes[vid.replace("frame01", "frame02")][1] == 3).sum()
        ratios.append(es / max(ed, 1))
    assert np.mean(ratios) < 0.85


def test_make_volume_direct():
    rng = np.random.default_rng(5)
    t0 = time.perf_counter()
    img, lab = make_volume(rng, 7, 96, 112)
    assert time.perf_counter() - t0 < 2.0
    assert img.shape == lab.shape == (7, 96, 112)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert img.min() == 0.0 and img.max() == 1.0
    # same params, same rng state -> same volume; contraction shrinks the LV
    p = sample_params(np.random.default_rng(1), 96, 96)
    a = make_volume(np.random.default_rng(2), 8, 96, 96, params=p)
    b = make_volume(np.random.default_rng(2), 8, 96, 96, params=p)
    c = make_volume(np.random.default_rng(2), 8, 96, 96, params=p, contraction=0.3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert (c[1] == 3).sum() < (a[1] == 3).sum()
    with pytest.raises(ValueError):
        make_volume(rng, 0, 64, 64)


# ------------------------------------------------------------------------------------------- determinism / IO
SMALL = dict(n_train=3, n_val=1, n_test=1, size=(64, 64), depth_range=(4, 6))


def _all_arrays(root):
    root = Path(root)
    out = {}
    for p in sorted((root / "data").rglob("*.h5")):
        out[str(p.relative_to(root))] = _read(p)
    for name in ("train_slices.list", "train.list", "val.list", "test.list", "dataset.json"):
        out[name] = (root / name).read_text()
    return out


def test_determinism(tmp_path):
    a = _all_arrays(generate_dataset(tmp_path / "a", seed=3, **SMALL)["out_dir"])
    b = _all_arrays(generate_dataset(tmp_path / "b", seed=3, **SMALL)["out_dir"])
    c = _all_arrays(generate_dataset(tmp_path / "c", seed=4, **SMALL)["out_dir"])
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], str):
            assert a[k] == b[k], k
        else:
            for x, y in zip(a[k], b[k]):
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), k
    common = [k for k in a if k in c and not isinstance(a[k], str)]
    assert common and all(not np.array_equal(a[k][0], c[k][0]) for k in common if a[k][0].shape == c[k][0].shape)
    assert any(not np.array_equal(a[k][0], c[k][0]) for k in common)
    # adding patients does not change the earlier ones
    d = _all_arrays(generate_dataset(tmp_path / "d", seed=3, **{**SMALL, "n_train": 4})["out_dir"])
    k = "data/patient001_frame01.h5"
    assert np.array_equal(a[k][0], d[k][0]) and np.array_equal(a[k][1], d[k][1])


def test_no_jitter_and_frames(tmp_path):
    s = generate_dataset(tmp_path / "o", seed=0, n_train=2, n_val=1, n_test=0, size=(64, 80), depth_range=(5, 5),
                         size_jitter=False, frames=1)
    assert set(map(tuple, s["shapes"].values())) == {(5, 64, 80)}
    assert _lines(tmp_path / "o" / "train.list") == ["patient001_frame01", "patient002_frame01"]
    assert _lines(tmp_path / "o" / "val.list") == ["patient003_frame01"]
    assert _lines(tmp_path / "o" / "test.list") == []
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["patients_to_slices"] == {"1": 5, "2": 10}


def test_refuses_non_empty_out_dir(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    generate_dataset(out, **SMALL)  # an existing empty folder is fine
    before = _lines(out / "train_slices.list")
    (out / "extra.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        generate_dataset(out, seed=9, **SMALL)
    assert (out / "extra.txt").exists() and _lines(out / "train_slices.list") == before
    generate_dataset(out, seed=9, overwrite=True, **{**SMALL, "n_train": 1})
    assert not (out / "extra.txt").exists()
    assert json.loads((out / "dataset.json").read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing temporary left behind
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError):
        generate_dataset(f, **SMALL)


def test_cli_main(tmp_path, capsys):
    from make_synthetic_data import DEFAULT_OUT, main

    assert DEFAULT_OUT == Path(__file__).resolve().parents[1] / "data" / "synthetic_ACDC"
    out = tmp_path / "cli"
    s = main(["--out", str(out), "--seed", "2", "--n_train", "2", "--n_val", "1", "--n_test", "1",
              "--size", "64", "64"])
    text = capsys.readouterr().out
    assert "4 patients" in text and "8 volumes" in text and "class voxel fractions" in text
    assert (out / "train_slices.list").is_file() and s["train_patients"] == 2
    with pytest.raises(UsageError, match=r"^--out .*cli exists and is not empty; pass --overwrite to replace it$"):
        main(["--out", str(out), "--n_train", "1", "--n_val", "0", "--n_test", "0", "--size", "64", "64"])
    main(["--out", str(out), "--n_train", "1", "--n_val", "0", "--n_test", "0", "--size", "64", "64",
          "--overwrite"])
    assert len(_lines(out / "train.list")) == 2


def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(CODE, script), *args], capture_output=True, text=True)


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_cli_bad_flags_end_in_one_line_naming_the_flag(tmp_path, capsys):
    from make_synthetic_data import main

    # as a user runs it: the same command twice (was: a traceback from generate_dataset's ValueError)
    out, small = tmp_path / "twice", ["--n_train", "1", "--n_val", "0", "--n_test", "0", "--size", "48", "48",
                                      "--depth_range", "2", "2", "--frames", "1"]
    assert _cli("make_synthetic_data.py", "--out", str(out), *small).returncode == 0
    r = _cli("make_synthetic_data.py", "--out", str(out), *small)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"error: --out {out} exists and is not empty; pass --overwrite to replace it"
    (tmp_path / "file").write_text("x")
    new = str(tmp_path / "new")
    for argv, line in [
        (["--size", "32", "32"], "--size 32 32: too small; use at least 48 48"),
        (["--n_train", "0"], "--n_train 0: use 1 or more (training needs a patient)"),
        (["--n_test", "-1"], "--n_test -1: use 0 or more"),
        (["--n_train", "990", "--n_val", "10"],
         "--n_train + --n_val + --n_test = 1004 patients: use at most 999 in all"),
        (["--frames", "0"], "--frames 0: use 1 to 99"),
        (["--depth_range", "5", "3"], "--depth_range 5 3: use MIN MAX with 1 <= MIN <= MAX, e.g. 6 10"),
        (["--out", str(tmp_path / "file")], f"--out {tmp_path / 'file'} exists and is not a directory"),
    ]:
        with pytest.raises(SystemExit) as e:
            run_main(main, ["--out", new, *argv])
        assert e.value.code == 2 and _error_line(capsys) == f"error: {line}", argv
    with pytest.raises(SystemExit) as e:  # numpy's seeding refuses negative seeds: argparse's usage error
        run_main(main, ["--out", new, "--seed", "-1"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith("argument --seed: -1 must be in [0, inf)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "twice"]  # nothing written


def test_demo_refuses_a_root_path_it_can_neither_train_on_nor_fill(tmp_path, capsys):
    import demo

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        run_main(demo.main, ["--root_path", str(folder), "--gpu", "-1"])
    assert e.value.code == 2  # (was: "pass --overwrite", a flag the demo does not have)
    assert _error_line(capsys) == (f"error: --root_path {folder}: a folder with files but no train_slices.list; "
                                   f"pass a prepared dataset folder, or a new or empty folder for the synthetic "
                                   f"dataset")
    assert os.listdir(folder) == ["notes.txt"]


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    import dataloaders.synthetic as syn

    calls = {"n": 0}
    real = syn.write_h5

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError("disk full (simulated)")
        return real(*a, **k)

    monkeypatch.setattr(syn, "write_h5", flaky)
    with pytest.raises(OSError):
        generate_dataset(tmp_path / "x", **SMALL)
    assert list(tmp_path.iterdir()) == []
