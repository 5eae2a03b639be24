"""Dataset preparation from the official downloads (synthetic NIfTI in each official naming) and check_data."""
import json
import os
import re

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

import check_data
import prepare_data
from dataloaders.dataset import DataError
from utils.errors import UsageError
from conftest import REAL_ACDC, TEST_GPU

SPACING_XYZ = (1.25, 1.5, 8.0)  # (x, y, z) as ITK stores it; our h5 keeps (D, H, W) = (8, 1.5, 1.25)


def nifti(path, array, spacing=SPACING_XYZ):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing if array.ndim == 3 else (*spacing, 1.0))
    sitk.WriteImage(img, path)


def volume(rng, depth, codes, shape=(20, 24)):
    image = rng.integers(10, 700, size=(depth, *shape)).astype(np.int16)
    label = rng.choice(np.array(codes, dtype=np.int16), size=(depth, *shape))
    return image, label


def read(path):
    with h5py.File(path, "r") as f:
        return f["image"][()], f["label"][()], tuple(f.attrs["spacing"])


def make_acdc(root, n_patients=10, seed=0):
    """training/patientXXX/patientXXX_frameYY.nii.gz + _gt (and a 4-D cine file that must be ignored)."""
    rng, originals = np.random.default_rng(seed), {}
    for i in range(1, n_patients + 1):
        pid = f"patient{i:03d}"
        depth = 3 + i % 2
        for frame in ("01", "12"):
            image, label = volume(rng, depth, [0, 1, 2, 3])
            base = os.path.join(root, "training", pid, f"{pid}_frame{frame}")
            nifti(base + ".nii.gz", image)
            nifti(base + "_gt.nii.gz", label.astype(np.uint8))
            originals[f"{pid}_frame{frame}"] = (image, label)
        nifti(os.path.join(root, "training", pid, f"{pid}_4d.nii.gz"), rng.random((2, depth, 20, 24)).astype(np.float32))
    return originals


def test_acdc_seeded_split(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "ACDC")
    originals = make_acdc(src)
    summary = prepare_data.main(["acdc", "--input", src, "--output", out, "--seed", "3"])
    assert summary["cases"] == 20 and summary["patients"] == 10
    lists = {s: open(os.path.join(out, f"{s}.list")).read().split() for s in ("val", "test")}
    slices = open(os.path.join(out, "train_slices.list")).read().split()
    train_vols = list(dict.fromkeys(s.rsplit("_slice_", 1)[0] for s in slices))
    pat = {s: {v.split("_")[0] for v in vols} for s, vols in [("train", train_vols), *lists.items()]}
    assert [len(pat[s]) for s in ("train", "val", "test")] == [7, 1, 2]  # 70/10/20 of 10 patients
    assert not (pat["train"] & pat["val"]) and not (pat["train"] & pat["test"]) and not (pat["val"] & pat["test"])
    assert train_vols == sorted(train_vols) and len(lists["val"]) == 2 and len(lists["test"]) == 4
    # slice order: volumes in order, slices 1..D within each
    expected = [f"{v}_slice_{k + 1}" for v in train_vols for k in range(originals[v][0].shape[0])]
    assert slices == expected
    for vid, (image, label) in originals.items():
        img, lab, spacing = read(os.path.join(out, "data", f"{vid}.h5"))
        ref = (image - image.min()) / (image.max() - image.min())
        assert img.dtype == np.float32 and lab.dtype == np.uint8
        assert np.allclose(img, ref, atol=1e-6) and img.min() == 0 and img.max() == 1
        assert np.array_equal(lab, label) and spacing == (8.0, 1.5, 1.25)
    img, lab, spacing = read(os.path.join(out, "data", "slices", f"{train_vols[0]}_slice_2.h5"))
    vol_img, vol_lab, _ = read(os.path.join(out, "data", f"{train_vols[0]}.h5"))
    assert np.array_equal(img, vol_img[1]) and np.array_equal(lab, vol_lab[1]) and spacing == (1.5, 1.25)
    desc = json.load(open(os.path.join(out, "dataset.json")))
    assert desc["num_classes"] == 4 and desc["class_names"] == ["BG", "RV", "Myo", "LV"]
    first = train_vols[0].split("_")[0]
    assert desc["patients_to_slices"]["1"] == 2 * originals[f"{first}_frame01"][0].shape[0]
    assert desc["patients_to_slices"]["7"] == len(slices)
    assert check_data.main(["--root_path", out]) == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary siblings left


def test_acdc_split_from_ssl4mis_lists(tmp_path):
    src, out, lists = str(tmp_path / "src"), str(tmp_path / "ACDC"), tmp_path / "lists"
    make_acdc(src)
    lists.mkdir()
    (lists / "val.list").write_text("patient002_frame01\npatient002_frame12\n")
    (lists / "test.list").write_text("patient003_frame01\n")
    order = ["patient005_frame12_slice_1", "patient001_frame01_slice_3", "patient001_frame01_slice_1"]
    (lists / "train_slices.list").write_text("\n".join(order) + "\n")
    prepare_data.main(["acdc", "--input", src, "--output", out, "--split_lists", str(lists)])
    assert open(os.path.join(out, "train_slices.list")).read().split() == order  # the list's own order
    assert open(os.path.join(out, "val.list")).read().split() == ["patient002_frame01", "patient002_frame12"]
    assert sorted(os.listdir(os.path.join(out, "data", "slices"))) == sorted(f"{s}.h5" for s in order)
    (lists / "train_slices.list").write_text("patient001_frame01_slice_9\n")  # beyond the volume's 4 slices
    with pytest.raises(DataError, match="patient001_frame01_slice_9"):
        prepare_data.main(["acdc", "--input", src, "--output", str(tmp_path / "bad"), "--split_lists", str(lists)])
    assert not (tmp_path / "bad").exists()


def test_acdc_slice_list_lines_are_checked_against_the_download(tmp_path):
    """With train.list present, every train_slices.list line is still checked: its form, its volume, its slice
    number, and that it is no slice of a val / test volume; a bad one is one DataError naming the list and the
    line, before anything is written."""
    src, lists = str(tmp_path / "src"), tmp_path / "lists"
    make_acdc(src, n_patients=4)
    lists.mkdir()
    (lists / "train.list").write_text("patient001_frame01\npatient001_frame12\npatient004_frame01\n")
    (lists / "val.list").write_text("patient002_frame01\n")
    (lists / "test.list").write_text("patient003_frame01\n")
    good = ["patient004_frame01_slice_2", "patient001_frame01_slice_1", "patient001_frame12_slice_3"]
    (lists / "train_slices.list").write_text("\n".join(good) + "\n")
    out = str(tmp_path / "ok")
    prepare_data.main(["acdc", "--input", src, "--output", out, "--split_lists", str(lists)])
    assert open(os.path.join(out, "train_slices.list")).read().split() == good
    assert check_data.main(["--root_path", out]) == 0  # its dataset.json included
    slice_list = lists / "train_slices.list"
    for line, expect in [("patient001_frame01", "is not <volume>_slice_<k>"),
                         ("patient001_frame01_slice_x", "is not <volume>_slice_<k>"),
                         ("patient009_frame01_slice_1", "is a slice of patient009_frame01, which the download "
                                                        r"\(--input\) lacks"),
                         ("patient001_frame01_slice_0", "is beyond the 4 slices of patient001_frame01"),
                         ("patient002_frame01_slice_1", "is a slice of patient002_frame01, which val.list / "
                                                        r"test.list hold out \(a train/eval leak\)"),
                         (good[1], "is listed twice")]:
        slice_list.write_text("\n".join(good + [line]) + "\n")
        with pytest.raises(DataError, match=f"^{re.escape(str(slice_list))}: line '{line}' {expect}"):
            prepare_data.main(["acdc", "--input", src, "--output", str(tmp_path / "bad"), "--split_lists",
                               str(lists)])
        assert not (tmp_path / "bad").exists()


def test_mscmr_label_codes_and_two_splits(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "MSCMR")
    rng, originals = np.random.default_rng(1), {}
    for i in range(1, 11):
        image, label = volume(rng, 3, [0, 200, 500, 600])
        nifti(os.path.join(src, "lge", f"patient{i}_LGE.nii.gz"), image)
        nifti(os.path.join(src, "labels", f"patient{i}_LGE_manual.nii.gz"), label)
        originals[f"patient{i}"] = label
    summary = prepare_data.main(["mscmr", "--input", src, "--output", out])
    assert summary["class_voxels"]["RV"] == sum(int((lab == 600).sum()) for lab in originals.values())
    vals = []
    for k in (1, 2):
        root = os.path.join(out, f"split{k}")
        val = open(os.path.join(root, "val.list")).read().split()
        train = {s.split("_slice_")[0] for s in open(os.path.join(root, "train_slices.list")).read().split()}
        assert len(val) == 2 and len(train) == 8 and not set(val) & train
        assert json.load(open(os.path.join(root, "dataset.json")))["name"] == f"MSCMR_split{k}"
        assert check_data.main(["--root_path", root]) == 0
        vals.append(val)
    assert vals[0] != vals[1]
    _, lab, _ = read(os.path.join(out, "split1", "data", "patient4.h5"))
    ref = originals["patient4"]
    assert np.array_equal(lab == 1, ref == 600) and np.array_equal(lab == 2, ref == 200)
    assert np.array_equal(lab == 3, ref == 500) and np.array_equal(lab == 0, ref == 0)


def test_prostate_takes_t2_channel(tmp_path):
    src, out = str(tmp_path / "src"), str(tmp_path / "Prostate")
    rng = np.random.default_rng(2)
    t2 = {}
    for i in (0, 1, 2, 4, 6):
        image = rng.random((2, 3, 16, 16)).astype(np.float32) * 100
        image[1] += 1000  # ADC channel on a different scale
        _, label = volume(rng, 3, [0, 1, 2], (16, 16))
        nifti(os.path.join(src, "imagesTr", f"prostate_{i:02d}.nii.gz"), image)
        nifti(os.path.join(src, "labelsTr", f"prostate_{i:02d}.nii.gz"), label.astype(np.uint8))
        t2[f"prostate_{i:02d}"] = image[0]
    prepare_data.main(["prostate", "--input", src, "--output", out])
    img, _, spacing = read(os.path.join(out, "split2", "data", "prostate_04.h5"))
    ref = t2["prostate_04"]
    assert np.allclose(img, (ref - ref.min()) / (ref.max() - ref.min()), atol=1e-6) and spacing == (8.0, 1.5, 1.25)
    assert json.load(open(os.path.join(out, "split1", "dataset.json")))["class_names"] == ["BG", "PZ", "TZ"]


@pytest.mark.parametrize("breaker, dataset, expect", [
    ("missing_gt", "acdc", "patient004_frame12"),
    ("bad_code", "mscmr", "patient2: label codes \\[300\\]"),
    ("four_d", "acdc", "patient001_frame01: .* is 4-D"),
    ("corrupt", "acdc", "patient007_frame01: cannot read .*patient007_frame01.nii.gz"),
])
def test_bad_inputs_name_the_case_and_leave_nothing(tmp_path, breaker, dataset, expect):
    src, out = str(tmp_path / "src"), tmp_path / "out"
    rng = np.random.default_rng(3)
    if dataset == "acdc":
        make_acdc(src, n_patients=10)
        if breaker == "missing_gt":
            os.remove(os.path.join(src, "training", "patient004", "patient004_frame12_gt.nii.gz"))
        elif breaker == "corrupt":  # a truncated download
            path = os.path.join(src, "training", "patient007", "patient007_frame01.nii.gz")
            data = open(path, "rb").read()
            open(path, "wb").write(data[:len(data) // 3])
        else:
            nifti(os.path.join(src, "training", "patient001", "patient001_frame01.nii.gz"),
                  rng.random((2, 3, 20, 24)).astype(np.float32))
    else:
        for i in (1, 2, 3):
            image, label = volume(rng, 3, [0, 200, 500, 600] if i != 2 else [0, 200, 300])
            nifti(os.path.join(src, f"patient{i}_LGE.nii.gz"), image)
            nifti(os.path.join(src, f"patient{i}_LGE_manual.nii.gz"), label)
    with pytest.raises(DataError, match=expect):
        prepare_data.main([dataset, "--input", src, "--output", str(out)])
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_existing_output_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "ACDC"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(ValueError, match="--overwrite"):
        prepare_data.main(["acdc", "--input", str(tmp_path), "--output", str(out)])
    assert (out / "keep").read_text() == "x"


def test_check_data_reports_each_problem(tiny_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "ACDC"
    shutil.copytree(tiny_root, root)
    slices = (root / "train_slices.list").read_text().split()
    os.remove(root / "data" / "slices" / f"{slices[3]}.h5")
    with h5py.File(root / "data" / "slices" / f"{slices[5]}.h5", "r+") as f:
        f["label"][0, 0] = 7
    val = (root / "val.list").read_text().split()
    with h5py.File(root / "data" / f"{val[0]}.h5", "r+") as f:
        f["image"][0, 0, 0] = 3.0
    (root / "test.list").write_text((root / "test.list").read_text() + slices[0].rsplit("_slice_", 1)[0] + "\n")
    assert check_data.main(["--root_path", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"slice {slices[3]}: file not found" in out
    assert f"slice {slices[5]}: label values span [0, 7]" in out
    assert f"val volume {val[0]}: image range [0, 3] is outside [0, 1]" in out
    assert "train/eval leak" in out and "4 problem(s)" in out


def test_check_data_reports_bad_spacing_and_empty_images_and_refuses_num_classes_below_2(tiny_root, tmp_path,
                                                                                           capsys):
    import shutil

    root = tmp_path / "ACDC"
    shutil.copytree(tiny_root, root)
    slices = (root / "train_slices.list").read_text().split()
    with h5py.File(root / "data" / "slices" / f"{slices[2]}.h5", "w") as f:  # a (0, W) slice
        f["image"], f["label"] = np.zeros((0, 64), np.float32), np.zeros((0, 64), np.uint8)
    val = (root / "val.list").read_text().split()
    with h5py.File(root / "data" / f"{val[0]}.h5", "r+") as f:
        f.attrs["spacing"] = 1.5  # a scalar, not (z, y, x)
    capsys.readouterr()
    assert check_data.main(["--root_path", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert f"slice {slices[2]}: image (0, 64) is empty; re-prepare this case or remove it from its list" in out
    assert (f"val volume {val[0]}: 'spacing' attribute must be 3 positive numbers (z, y, x), found 1.5; "
            f"re-prepare this case or correct the attribute") in out
    assert len(out) == 3 and out[-1].endswith("2 problem(s)")
    for n in ("0", "-1", "1"):
        with pytest.raises(UsageError, match=rf"^--num_classes {n}: must be at least 2"):
            check_data.main(["--root_path", str(root), "--num_classes", n])


def test_check_data_reports_a_bad_dataset_json_as_one_problem(tiny_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "ACDC"
    shutil.copytree(tiny_root, root)
    desc = json.load(open(root / "dataset.json"))
    json.dump(dict(desc, class_names=["RV", "Myo", "LV"]), open(root / "dataset.json", "w"))  # 3 names, 4 classes
    capsys.readouterr()
    assert check_data.main(["--root_path", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"dataset description: {root / 'dataset.json'}: class_names must list all 4 class names as "
                      f"strings, background first, found 3 names; correct the file, or prepare the folder again "
                      f"with code/prepare_data.py")
    assert len(out) == 2 and out[1].endswith("1 problem(s)")


def test_check_data_accepts_the_real_acdc():
    root = REAL_ACDC
    if not os.path.isdir(root):
        pytest.skip("the real ACDC is not here ($DIFFRECT_ACDC or data/ACDC)")
    problems, stats = check_data.check_dataset(root)
    assert problems == [] and stats["slices"] == 1312 and stats["volumes"] == 20


def test_prepared_prostate_trains_and_tests_without_code_edits(tmp_path):
    """3 classes, class names and the labeled table all come from the prepared folder's dataset.json."""
    import average_splits
    import test_ACDC
    import train_fully_supervised_ACDC

    src, out = str(tmp_path / "src"), str(tmp_path / "Prostate")
    rng = np.random.default_rng(4)
    for i in range(5):
        image = rng.random((2, 4, 32, 32)).astype(np.float32)
        _, label = volume(rng, 4, [0, 1, 2], (32, 32))
        nifti(os.path.join(src, "imagesTr", f"prostate_{i:02d}.nii.gz"), image)
        nifti(os.path.join(src, "labelsTr", f"prostate_{i:02d}.nii.gz"), label.astype(np.uint8))
    prepare_data.main(["prostate", "--input", src, "--output", out])
    summaries = []
    for k in (1, 2):
        root, snap = os.path.join(out, f"split{k}"), str(tmp_path / f"run{k}")
        train_fully_supervised_ACDC.main(["--root_path", root, "--snapshot_dir", snap, "--labelnum", "2",
                                          "--patch_size", "32", "32", "--batch_size", "2", "--max_iterations", "2",
                                          "--val_interval", "2", "--gpu", TEST_GPU])
        summaries.append(test_ACDC.main(["--root_path", root, "--checkpoint", os.path.join(snap, "unet_best_model.pth"),
                                         "--split", "val", "--gpu", TEST_GPU, "--use_spacing"]))
        assert summaries[-1]["classes"] == ["PZ", "TZ"] and summaries[-1]["num_cases"] == 1
    rows = average_splits.average(summaries)
    for m in ("dice", "hd95"):
        a, b = summaries[0]["mean"][m]["mean"], summaries[1]["mean"][m]["mean"]
        assert rows["mean"][m] == pytest.approx([a, b, (a + b) / 2])
    assert rows["TZ"]["dice"][2] == pytest.approx((summaries[0]["per_class"]["TZ"]["dice"]["mean"]
                                                   + summaries[1]["per_class"]["TZ"]["dice"]["mean"]) / 2)
