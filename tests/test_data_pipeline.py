"""Sampler composition/reproducibility, augmentation invariants, dataset reading and its errors."""
import json
import os

import h5py
import numpy as np
import pytest
import torch

from dataloaders.augmentation import make_views, random_geometry, resize_pair, strong_photometric
from dataloaders.dataset import NO_LABEL, DataError, SliceDataset, VolumeDataset, read_case
from dataloaders.datasets import DATASETS, labeled_slice_count, load_dataset_info
from dataloaders.random_streams import stream_rng
from dataloaders.sampler import TwoStreamBatchSampler
from conftest import REAL_ACDC

ACDC = REAL_ACDC


# ----------------------------------------------------------------------------------------------- sampler
def test_sampler_composition_and_epochs():
    s = TwoStreamBatchSampler(range(10), range(10, 40), batch_size=5, labeled_bs=2, seed=3, total=25)
    batches = list(s)
    assert len(batches) == 25 == len(s)
    for b in batches:
        idx = [i for i, _ in b]
        assert all(i < 10 for i in idx[:2]) and all(i >= 10 for i in idx[2:]) and len(idx) == 5
    # labeled indices: each epoch (5 steps of 2) is a permutation of all 10
    for e in range(5):
        lab = [i for b in batches[5 * e:5 * e + 5] for i, _ in b[:2]]
        assert sorted(lab) == list(range(10))
    # unlabeled: every 30 consecutive draws (one pass) cover all 30 indices
    unl = [i for b in batches for i, _ in b[2:]]
    for p in range(len(unl) // 30):
        assert sorted(unl[30 * p:30 * p + 30]) == list(range(10, 40))
    # augmentation seeds are unique per (iteration, slot)
    seeds = [sd for b in batches for _, sd in b]
    assert len(set(seeds)) == len(seeds)


def test_sampler_reproducible_and_resumable():
    a = list(TwoStreamBatchSampler(range(8), range(8, 30), 6, 3, seed=1, total=20))
    b = list(TwoStreamBatchSampler(range(8), range(8, 30), 6, 3, seed=1, total=20))
    c = list(TwoStreamBatchSampler(range(8), range(8, 30), 6, 3, seed=2, total=20))
    tail = list(TwoStreamBatchSampler(range(8), range(8, 30), 6, 3, seed=1, start=13, total=20))
    assert a == b and a != c and a[13:] == tail


def test_sampler_ranks_share_the_global_batch():
    one = TwoStreamBatchSampler(range(12), range(12, 50), 8, 4, seed=0, world_size=1)
    r0 = TwoStreamBatchSampler(range(12), range(12, 50), 4, 2, seed=0, rank=0, world_size=2)
    r1 = TwoStreamBatchSampler(range(12), range(12, 50), 4, 2, seed=0, rank=1, world_size=2)
    for k in range(7):
        i0, i1 = [i for i, _ in r0.batch(k)], [i for i, _ in r1.batch(k)]
        assert all(i < 12 for i in i0[:2] + i1[:2]) and all(i >= 12 for i in i0[2:] + i1[2:])
        assert not set(i0) & set(i1)
        assert sorted(i0 + i1) == sorted(i for i, _ in one.batch(k))


def test_sampler_rejects_too_few_labeled():
    with pytest.raises(ValueError, match="labeled"):
        TwoStreamBatchSampler(range(2), range(2, 9), 6, 3)


# ------------------------------------------------------------------------------------------ augmentation
def _phantom(h=40, w=56):
    yy, xx = np.mgrid[:h, :w]
    label = ((yy - 15) ** 2 + (xx - 30) ** 2 < 64).astype(np.uint8) * 3
    label[5:9, 5:20] = 1
    image = (0.2 + 0.5 * (label > 0) + 0.01 * xx).astype(np.float32)
    return image / image.max(), label


def test_resize_linear_image_nearest_label():
    image, label = _phantom()
    im, lb = resize_pair(image, label, (32, 32))
    assert im.shape == lb.shape == (32, 32) and im.dtype == np.float32 and lb.dtype == np.uint8
    assert set(np.unique(lb)) <= {0, 1, 3}  # nearest: no invented classes


def test_geometry_moves_image_and_label_together():
    image, label = _phantom(48, 48)
    # encode the label into the image exactly so any mismatch shows up
    coded = (label.astype(np.float32) + 1.0)
    for s in range(20):
        im, lb = random_geometry(coded, label, np.random.default_rng(s))
        inside = im > 0.5  # zero fill outside the rotated frame
        assert np.abs(np.rint(im[inside]) - 1 - lb[inside]).mean() < 0.05
        assert lb[~inside].max(initial=0) == 0


def test_strong_differs_from_weak_only_photometrically():
    image, label = _phantom(64, 64)
    for s in range(10):
        rng_a, rng_b = np.random.default_rng([7, s]), np.random.default_rng([7, s])
        weak, strong, lb = make_views(image, label, rng_a, (64, 64), strong=True)
        weak_only, none, lb2 = make_views(image, label, rng_b, (64, 64), strong=False)
        assert none is None and np.array_equal(weak, weak_only) and np.array_equal(lb, lb2)
        assert strong.shape == weak.shape and strong.dtype == np.float32
        assert strong.min() >= 0 and strong.max() <= 1
        # photometric only: the strong view stays strongly correlated with the weak view, pixel for pixel
        assert np.corrcoef(weak.ravel(), strong.ravel())[0, 1] > 0.9


def test_strong_photometric_changes_something_and_is_seeded():
    image, _ = _phantom(64, 64)
    outs = [strong_photometric(image, np.random.default_rng(s)) for s in range(16)]
    assert any(not np.allclose(o, image) for o in outs)
    assert np.array_equal(strong_photometric(image, np.random.default_rng(3)), outs[3])


# ---------------------------------------------------------------------------------------------- datasets
def _write(path, image, label):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        if image is not None:
            f["image"] = image
        if label is not None:
            f["label"] = label


def _tiny_root(tmp_path, n=6):
    root = tmp_path / "ds"
    ids = [f"case{i}_slice_1" for i in range(n)]
    for i, s in enumerate(ids):
        img, lab = _phantom(40 + 2 * i, 56)
        _write(str(root / "data" / "slices" / f"{s}.h5"), img, lab)
    (root / "train_slices.list").write_text("\n".join(ids) + "\n")
    vol = np.stack([_phantom()[0]] * 3), np.stack([_phantom()[1]] * 3)
    _write(str(root / "data" / "vol1.h5"), *vol)
    (root / "val.list").write_text("vol1\n")
    return root


def test_slice_dataset_items(tmp_path):
    ds = SliceDataset(str(_tiny_root(tmp_path)), 4, (32, 48))
    item = ds[(2, (0, "augmentation", 0, 0))]
    assert item["image"].shape == item["image_strong"].shape == (1, 32, 48)
    assert item["label"].shape == (32, 48) and str(item["label"].dtype) == "torch.int64"
    vols = VolumeDataset(str(tmp_path / "ds"), "val", 4)
    name, image, label, spacing = vols[0]
    assert name == "vol1" and image.shape == (3, 40, 56) and spacing is None


def test_second_strong_view_is_an_independent_draw_on_the_same_geometry(tmp_path):
    """strong_views=2 (UniMatch) adds image_strong2: the weak view's photometric perturbation drawn again from the
    slice's own stream (aug_seed + (1,)), so the first view, the weak view and the label are those of
    strong_views=1 and a resumed run redraws it."""
    root = str(_tiny_root(tmp_path))
    one, two = SliceDataset(root, 4, (32, 48)), SliceDataset(root, 4, (32, 48), strong_views=2)
    none = SliceDataset(root, 4, (32, 48), strong_views=0)
    key = (2, (7, "augmentation", 3, 5))
    a, b = one[key], two[key]
    assert "image_strong2" not in a and set(none[key]) == {"image", "label", "index"}
    for k in ("image", "image_strong", "label"):
        assert torch.equal(a[k], b[k])
    expected = strong_photometric(b["image"][0].numpy(), stream_rng(7, "augmentation", 3, 5, 1))
    assert np.array_equal(b["image_strong2"][0].numpy(), expected)
    assert torch.equal(two[key]["image_strong2"], b["image_strong2"])
    with pytest.raises(ValueError, match="strong_views=3"):
        SliceDataset(root, 4, (32, 48), strong_views=3)


@pytest.mark.parametrize("image,label,match", [
    (None, np.zeros((4, 4), np.uint8), "no dataset 'image'"),
    (np.zeros((4, 4), np.float32), None, "no dataset 'label'"),
    (np.full((4, 4), np.nan, np.float32), np.zeros((4, 4), np.uint8), "NaN"),
    (np.zeros((4, 4), np.float32), np.full((4, 4), 7, np.uint8), r"label values span \[7, 7\]"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 5), np.uint8), "must both be 2-D and equal"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), "label integer"),
])
def test_read_case_errors_name_the_file(tmp_path, image, label, match):
    p = str(tmp_path / "bad.h5")
    _write(p, image, label)
    with pytest.raises(DataError, match=match) as e:
        read_case(p, 4, 2)
    assert "bad.h5" in str(e.value)


def test_truncated_h5_is_reported(tmp_path):
    p = tmp_path / "trunc.h5"
    _write(str(p), np.zeros((64, 64), np.float32), np.zeros((64, 64), np.uint8))
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match="trunc.h5: unreadable h5"):
        read_case(str(p), 4, 2)


def test_bad_spacing_and_empty_images_are_refused(tmp_path):
    p = str(tmp_path / "v.h5")
    for spacing, found in ((1.5, "1.5"), ("1x1x1", "'1x1x1'"), ([1.0, 2.0], r"\[1.0, 2.0\]")):
        _write(p, np.zeros((2, 8, 8), np.float32), np.zeros((2, 8, 8), np.uint8))
        with h5py.File(p, "r+") as f:
            f.attrs["spacing"] = spacing
        with pytest.raises(DataError, match=rf"v.h5: 'spacing' attribute must be 3 positive numbers \(z, y, x\), "
                                            rf"found {found};"):
            read_case(p, 4, 3)
    with h5py.File(p, "r+") as f:
        f.attrs["spacing"] = [5.0, 1.25, 1.25]
    assert read_case(p, 4, 3)[2] == (5.0, 1.25, 1.25)
    _write(p, np.zeros((0, 8, 8), np.float32), np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"v.h5: image \(0, 8, 8\) is empty"):
        read_case(p, 4, 3)


def test_missing_files_and_lists(tmp_path):
    root = _tiny_root(tmp_path)
    os.remove(root / "data" / "slices" / "case3_slice_1.h5")
    with pytest.raises(DataError, match="case3_slice_1.h5: listed in train_slices.list but missing"):
        SliceDataset(str(root), 4, (32, 32))
    (root / "val.list").write_text("\n")
    with pytest.raises(DataError, match="val.list: the list is empty"):
        VolumeDataset(str(root), "val", 4)
    # a prepared folder without a test split (own data with --test_fraction 0): say so, and what to use
    with pytest.raises(DataError, match=r"test.list: .*ds has no test split \(no test.list\); use --split val$"):
        VolumeDataset(str(root), "test", 4)
    (root / "test.list").write_text("\n")  # an empty test split: the same advice
    with pytest.raises(DataError, match=r"test.list: the list is empty; use --split val$"):
        VolumeDataset(str(root), "test", 4)
    (root / "val.list").write_text("vol1\n")
    (root / "test.list").write_text("vol9\n")
    with pytest.raises(DataError, match=r"vol9.h5: listed in test.list but missing"):  # valtest: the real list
        VolumeDataset(str(root), "valtest", 4)
    os.remove(root / "train_slices.list")  # not a prepared folder at all: the list-file advice
    os.remove(root / "test.list")
    with pytest.raises(DataError, match=r"test.list: list file not found; is --root_path the prepared dataset"):
        VolumeDataset(str(root), "test", 4)


def test_skip_bad_samples(tmp_path):
    root = _tiny_root(tmp_path)
    _write(str(root / "data" / "slices" / "case1_slice_1.h5"), np.full((4, 4), np.nan, np.float32), None)
    with pytest.raises(DataError, match="case1_slice_1.h5: image has NaN"):
        SliceDataset(str(root), 4, (32, 32))
    ds = SliceDataset(str(root), 4, (32, 32), skip_bad=True, log=lambda m: None)
    assert ds.skipped == [1] and ds.valid_indices(range(6)) == [0, 2, 3, 4, 5]


def test_a_slice_without_label_is_unlabeled_training_data(tmp_path):
    root = _tiny_root(tmp_path)
    image, _ = _phantom(40, 56)
    _write(str(root / "data" / "slices" / "case1_slice_1.h5"), image, None)
    ds = SliceDataset(str(root), 4, (32, 32))
    assert ds.has_label == [True, False, True, True, True, True]
    item = ds[(1, (0, "augmentation", 0, 0))]
    assert item["image"].shape == (1, 32, 32) and bool((item["label"] == NO_LABEL).all())
    with pytest.raises(DataError, match="case1_slice_1.h5: no dataset 'label'"):  # evaluation needs labels
        read_case(str(root / "data" / "slices" / "case1_slice_1.h5"), 4, 2)


def test_labelnum_table():
    assert labeled_slice_count(DATASETS["ACDC"], 3, 1312) == 68
    assert labeled_slice_count(DATASETS["ACDC"], 7, 1312) == 136
    with pytest.raises(DataError, match="--labelnum 5 is not in the ACDC table"):
        labeled_slice_count(DATASETS["ACDC"], 5, 1312)
    with pytest.raises(DataError, match="needs 68 labeled slices but train_slices.list has only 20"):
        labeled_slice_count(DATASETS["ACDC"], 3, 20)
    assert load_dataset_info("/nonexistent", "Prostate_split1").num_classes == 3
    with pytest.raises(DataError, match="--dataset 'Foo' is unknown"):
        load_dataset_info("/nonexistent", "Foo")


GOOD_DESC = {"name": "mine", "num_classes": 4, "class_names": ["BG", "RV", "Myo", "LV"],
             "patients_to_slices": {"1": 4, "2": 9}}


@pytest.mark.parametrize("desc,match", [
    ("{not json", "cannot read it as JSON"),
    ([GOOD_DESC], "holds a JSON list, not an object"),
    ({**GOOD_DESC, "num_classes": 1}, r"num_classes must be a whole number in 2\.\.255 .*found 1;"),
    ({**GOOD_DESC, "num_classes": 256}, r"num_classes must be a whole number in 2\.\.255 .*found 256;"),
    ({**GOOD_DESC, "num_classes": "4"}, r"num_classes must be a whole number .*found '4';"),
    ({**GOOD_DESC, "class_names": ["RV", "Myo", "LV"]}, "class_names must list all 4 class names .*found 3 names"),
    ({**GOOD_DESC, "class_names": ["BG", "RV", "Myo", "LV", "Aorta"]}, "class_names must list all 4 .*found 5 names"),
    ({**GOOD_DESC, "class_names": ["BG", 1, 2, 3]}, "class_names must list all 4 class names as strings"),
    ({k: v for k, v in GOOD_DESC.items() if k != "class_names"}, "class_names must list all 4 .*found None"),
    ({**GOOD_DESC, "patients_to_slices": [4, 9]}, "patients_to_slices must be an object"),
    ({**GOOD_DESC, "patients_to_slices": {"1": 0}}, "patients_to_slices entry '1': 0 must map a positive"),
    ({**GOOD_DESC, "patients_to_slices": {"one": 4}}, "patients_to_slices entry 'one': 4 must map a positive"),
    ({**GOOD_DESC, "normalization": {"scheme": "clip"}}, "normalization scheme 'clip' is not one of minmax, "
                                                         "percentile, zscore, ct"),
    ({**GOOD_DESC, "normalization": {"scheme": "ct"}}, r"normalization ct needs a window \[lo, hi\].*found None"),
    ({**GOOD_DESC, "normalization": {"scheme": "ct", "window": [300, -100]}},
     r"normalization ct needs a window \[lo, hi\] of finite numbers with lo < hi, found \[300, -100\]"),
])
def test_dataset_json_is_checked_entry_by_entry(tmp_path, desc, match):
    """A wrong dataset.json stops with one line naming the file and the fix, instead of training with shifted
    class names (3 names for 4 classes) or failing deep inside a run."""
    path = tmp_path / "dataset.json"
    path.write_text(desc if isinstance(desc, str) else json.dumps(desc))
    with pytest.raises(DataError, match=match) as e:
        load_dataset_info(str(tmp_path))
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and message.endswith("code/prepare_data.py")


def test_a_valid_dataset_json_is_read_whole(tmp_path):
    window = {"scheme": "ct", "window": [-100, 240.5]}
    (tmp_path / "dataset.json").write_text(json.dumps({**GOOD_DESC, "normalization": window}))
    info = load_dataset_info(str(tmp_path))
    assert (info.name, info.num_classes, info.class_names) == ("mine", 4, ["BG", "RV", "Myo", "LV"])
    assert info.patients_to_slices == {1: 4, 2: 9} and info.normalization == window
    (tmp_path / "dataset.json").write_text(json.dumps({"num_classes": 2, "class_names": ["BG", "lesion"]}))
    info = load_dataset_info(str(tmp_path), "ACDC")  # no table of its own: --dataset's
    assert info.patients_to_slices == DATASETS["ACDC"].patients_to_slices and info.normalization == {"scheme": "minmax"}


@pytest.mark.skipif(not os.path.isdir(ACDC), reason="real ACDC not present")
def test_reads_real_acdc_files():
    ds = SliceDataset(ACDC, 4, (128, 128), ids=["patient099_frame01_slice_1", "patient099_frame01_slice_11"])
    assert ds.images[0].shape == (128, 128) and 0 <= ds.images[0].min() and ds.images[0].max() <= 1
    name, image, label, _ = VolumeDataset(ACDC, "val", 4)[0]
    assert image.ndim == 3 and image.shape == label.shape and set(np.unique(label)) <= {0, 1, 2, 3}


# -------------------------------------------------------------------------------------------- random streams
def test_random_streams_never_coincide():
    import torch

    from dataloaders.random_streams import STREAMS, stream_rng, stream_seed
    from utils.trainer import seed_everything

    seeds = {(s, k) for s in STREAMS for k in [(), (0,), (1,), (0, 0), (0, 1), (1, 0)]}
    assert len({stream_seed(1337, s, *k) for s, k in seeds}) == len(seeds)
    assert all(0 <= stream_seed(1337, s, *k) < 2 ** 63 for s, k in seeds)
    # the diffusion generator no longer replays the global generator that initialises θ
    seed_everything(1337, True)
    theta_draws = torch.rand(16)
    diffusion_draws = torch.rand(16, generator=torch.Generator().manual_seed(stream_seed(1337, "diffusion")))
    assert not torch.equal(theta_draws, diffusion_draws)
    # the sampler's permutation of (stream 0, epoch 0) and the augmentation of (iteration 0, slot 0) differ
    assert not np.array_equal(stream_rng(1337, "sampler", 0, 0).random(8),
                              stream_rng(1337, "augmentation", 0, 0).random(8))
    # a stream is a pure function of (seed, stream, key)
    assert np.array_equal(stream_rng(5, "sampler", 1, 2).random(4), stream_rng(5, "sampler", 1, 2).random(4))
    with pytest.raises(KeyError, match="unknown random stream"):
        stream_seed(1, "dropout")


def test_sampler_hands_out_augmentation_stream_keys():
    s = TwoStreamBatchSampler(range(4), range(4, 12), 4, 2, seed=9)
    assert [sd for _, sd in s.batch(3)] == [(9, "augmentation", 3, j) for j in range(4)]
