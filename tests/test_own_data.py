"""Your own data end to end: an nnU-Net raw dataset (3-D NIfTI with spacing, origin and an oblique direction,
two cases without labels) and a folder of PNGs go through prepare_data -> training -> test_ACDC -> predict.
The unlabeled cases are used (unlabeled stream) and never supervised; predictions keep the input's geometry."""
import json
import os

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

import check_data
import predict
import prepare_data
import test_ACDC
import train_cps_ACDC
import train_diffrect_ACDC
import train_fixmatch_ACDC
import train_fully_supervised_ACDC
import train_ict_ACDC
import train_incl_ACDC
import train_mcnetv2_ACDC
import train_mean_teacher_ACDC
import train_uamt_ACDC
from dataloaders.dataset import NO_LABEL, DataError
from dataloaders.datasets import load_dataset_info
from dataloaders.intensity import ct_window, normalize
from own_data_fixtures import DIRECTION, ORIGIN, SPACING, make_nnunet, make_png_folder, nifti
from utils.errors import UsageError
from utils.evaluation import load_segmenter, predict_volume
from utils.trainer import TrainingRun
from conftest import TEST_GPU

TINY = ["--patch_size", "32", "32", "--batch_size", "4", "--labeled_bs", "2", "--log_interval", "1",
        "--gpu", TEST_GPU, "--max_iterations", "2", "--val_interval", "2"]
SCRIPTS = [train_fully_supervised_ACDC, train_fixmatch_ACDC, train_diffrect_ACDC, train_uamt_ACDC, train_cps_ACDC,
           train_ict_ACDC, train_mcnetv2_ACDC, train_incl_ACDC, train_mean_teacher_ACDC]
UNLABELED = ("case06", "case07")


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory):
    """(raw folder, prepared folder, {case: (raw image, label)}, prepare's summary)."""
    root = tmp_path_factory.mktemp("own")
    raw, prep = str(root / "raw"), str(root / "prepared")
    cases = make_nnunet(raw)
    summary = prepare_data.main(["nnunet", "--input", raw, "--output", prep, "--val_fraction", "0.25"])
    return raw, prep, cases, summary


@pytest.fixture(scope="module")
def trained(nnunet, tmp_path_factory):
    """A FixMatch checkpoint trained on the prepared nnU-Net dataset (2 labeled cases)."""
    _, prep, _, _ = nnunet
    snap = str(tmp_path_factory.mktemp("run") / "fixmatch")
    train_fixmatch_ACDC.main(["--root_path", prep, "--snapshot_dir", snap, "--labelnum", "2", *TINY])
    return os.path.join(snap, "unet_best_model.pth")


def lines(path):
    return open(path).read().split()


def test_nnunet_prepare_keeps_values_geometry_and_unlabeled_cases(nnunet):
    raw, prep, cases, summary = nnunet
    desc = json.load(open(os.path.join(prep, "dataset.json")))
    assert desc["class_names"] == ["background", "RV", "Myo", "LV"] and desc["num_classes"] == 4
    assert desc["normalization"] == {"scheme": "minmax"}  # an MRI channel
    val, train = lines(os.path.join(prep, "val.list")), lines(os.path.join(prep, "train_slices.list"))
    assert len(val) == 2 and not set(val) & set(UNLABELED) and summary["unlabeled"] == 2
    labeled_train = [c for c in cases if c not in val and c not in UNLABELED]
    # labeled train cases first (4 slices each), the unlabeled cases last: --labelnum N = the first N labeled
    assert desc["patients_to_slices"] == {str(n): 4 * n for n in range(1, len(labeled_train) + 1)}
    assert [s.rsplit("_slice_", 1)[0] for s in train[::4]] == labeled_train + list(UNLABELED)
    for sid in train:
        with h5py.File(os.path.join(prep, "data", "slices", f"{sid}.h5")) as f:
            assert ("label" in f) == (sid.rsplit("_slice_", 1)[0] not in UNLABELED)
    image, label = cases[val[0]]
    with h5py.File(os.path.join(prep, "data", f"{val[0]}.h5")) as f:
        np.testing.assert_array_equal(f["image"][()], normalize(image, {"scheme": "minmax"}))
        np.testing.assert_array_equal(f["label"][()], label)
        assert np.allclose(f.attrs["spacing"], SPACING[::-1]) and np.allclose(f.attrs["origin"], ORIGIN)
        assert np.allclose(f.attrs["direction"], DIRECTION)
        assert list(f.attrs["intensity_range"]) == [float(image.min()), float(image.max())]
    problems, stats = check_data.check_dataset(prep)
    assert problems == [] and stats["unlabeled_slices"] == 8


def test_unlabeled_cases_are_in_the_unlabeled_stream_and_never_supervised(nnunet, tmp_path):
    _, prep, _, _ = nnunet
    args = train_fixmatch_ACDC.parse_args(["--root_path", prep, "--snapshot_dir", str(tmp_path / "s"),
                                           "--labelnum", "2", *TINY])
    with TrainingRun(args, train_fixmatch_ACDC.BATCHES) as run:
        ids = run.train_set.ids
        no_label = {i for i, s in enumerate(ids) if s.rsplit("_slice_", 1)[0] in UNLABELED}
        assert no_label == {i for i, h in enumerate(run.train_set.has_label) if not h} and len(no_label) == 8
        assert no_label <= set(run.unlabeled_idx) and not no_label & set(run.labeled_idx)
        sampler, seen = run._sampler(0), set()
        for k in range(40):
            batch = sampler.batch(k)
            assert not {i for i, _ in batch[:args.labeled_bs]} & no_label  # labeled slots: labeled slices only
            seen |= {i for i, _ in batch[args.labeled_bs:]}
        assert seen & no_label  # and the label-less slices are drawn as unlabeled data
        item = run.train_set[(min(no_label), (1, "augmentation", 0, 0))]
        assert item["image"].shape == (1, 32, 32) and bool((item["label"] == NO_LABEL).all())
        with pytest.raises(IndexError):  # a loss that used such a label would fail, not learn from it
            torch.nn.functional.cross_entropy(torch.zeros(1, 4, 32, 32), item["label"][None])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_every_training_script_runs_on_prepared_own_data(nnunet, tmp_path, script):
    _, prep, _, _ = nnunet
    snap = str(tmp_path / "run")
    script.main(["--root_path", prep, "--snapshot_dir", snap, "--labelnum", "2", *TINY])
    assert [f for f in os.listdir(snap) if f.endswith("_best_model.pth")]


def read_geometry(path):
    img = sitk.ReadImage(path)
    return img.GetSpacing(), img.GetOrigin(), img.GetDirection(), sitk.GetArrayFromImage(img)


def test_test_acdc_and_predict_agree_voxel_for_voxel_with_the_source_geometry(nnunet, trained, tmp_path):
    raw, prep, cases, _ = nnunet
    test_ACDC.main(["--root_path", prep, "--checkpoint", trained, "--split", "val", "--gpu", TEST_GPU, "--save_nifti"])
    val = lines(os.path.join(prep, "val.list"))
    out = str(tmp_path / "masks")
    written = predict.main(["--checkpoint", trained, "--input", os.path.join(raw, "imagesTr"), "--output", out,
                            "--gpu", TEST_GPU])
    assert len(written) == len(cases)  # every scan, labeled or not
    for case in val:
        src = read_geometry(os.path.join(raw, "imagesTr", f"{case}_0000.nii.gz"))
        pred_dir = os.path.join(os.path.dirname(trained), "predictions_val")
        ours = read_geometry(os.path.join(pred_dir, f"{case}_pred.nii.gz"))
        img = read_geometry(os.path.join(pred_dir, f"{case}_img.nii.gz"))
        new = read_geometry(os.path.join(out, f"{case}_0000.nii.gz"))
        for g in (ours, img, new):
            assert np.allclose(g[0], SPACING) and np.allclose(g[1], ORIGIN) and np.allclose(g[2], DIRECTION)
        np.testing.assert_array_equal(new[3], ours[3])  # predict.py == test_ACDC.py, voxel for voxel
        assert new[3].shape == src[3].shape and new[3].dtype == np.uint8
        np.testing.assert_allclose(img[3], src[3], atol=1e-3)  # the scan in its own intensities again


def test_flip_tta_is_the_mean_of_the_flipped_predictions(nnunet, trained, tmp_path):
    raw, _, cases, _ = nnunet
    out = str(tmp_path / "tta")
    src = os.path.join(raw, "imagesTr", "case06_0000.nii.gz")
    predict.main(["--checkpoint", trained, "--input", src, "--output", out, "--tta", "--save_probabilities",
                  "--gpu", "-1"])
    probs = np.load(os.path.join(out, "case06_0000_probabilities.npz"))["probabilities"]
    model, ckpt = load_segmenter(trained, torch.device("cpu"))
    image = normalize(cases["case06"][0], ckpt["normalization"])
    expect = 0
    for axes in ((), (2,), (1,), (1, 2)):  # none, left-right, up-down, both: flip the slices, predict, flip back
        flipped = np.ascontiguousarray(np.flip(image, axes) if axes else image)
        _, p = predict_volume(model, flipped, ckpt["patch_size"], torch.device("cpu"), with_probabilities=True)
        expect = expect + (np.flip(p, tuple(a + 1 for a in axes)) if axes else p) / 4
    assert probs.shape == (4, *image.shape)
    np.testing.assert_allclose(probs, expect, atol=1e-5)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, "case06_0000.nii.gz")))
    np.testing.assert_array_equal(mask, probs.argmax(0))


def test_png_folder_end_to_end(tmp_path):
    images = make_png_folder(str(tmp_path / "png"))
    prep = str(tmp_path / "prepared")
    summary = prepare_data.main(["folder", "--images", str(tmp_path / "png" / "images"), "--masks",
                                 str(tmp_path / "png" / "masks"), "--output", prep, "--classes", "BG", "RV", "Myo",
                                 "LV", "--val_fraction", "0.34"])
    assert summary["unlabeled"] == 2 and summary["split"]["val"] == 2 and summary["class_names"][0] == "BG"
    val = lines(os.path.join(prep, "val.list"))
    with h5py.File(os.path.join(prep, "data", f"{val[0]}.h5")) as f:
        assert f["image"].shape == (1, 48, 56)
        np.testing.assert_array_equal(f["label"][0], images[val[0]][1])
    snap = str(tmp_path / "run")
    train_fixmatch_ACDC.main(["--root_path", prep, "--snapshot_dir", snap, "--labelnum", "2", *TINY])
    ckpt = os.path.join(snap, "unet_best_model.pth")
    test_ACDC.main(["--root_path", prep, "--checkpoint", ckpt, "--split", "val", "--gpu", TEST_GPU, "--save_nifti"])
    out = str(tmp_path / "masks")
    predict.main(["--checkpoint", ckpt, "--input", str(tmp_path / "png" / "images"), "--output", out,
                  "--gpu", TEST_GPU])
    mask = Image.open(os.path.join(out, f"{val[0]}.png"))
    assert mask.mode == "P" and mask.size == (56, 48)  # a palette PNG of the input's size, values = class ids
    ours = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(snap, "predictions_val", f"{val[0]}_pred.nii.gz")))
    np.testing.assert_array_equal(np.array(mask), ours)


def test_colour_masks_map_through_the_classes_table(tmp_path):
    make_png_folder(str(tmp_path / "png"))
    colour_dir = tmp_path / "colour"
    colour_dir.mkdir()
    table = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}
    for name in os.listdir(tmp_path / "png" / "masks"):
        ids = np.array(Image.open(tmp_path / "png" / "masks" / name))
        Image.fromarray(np.array([table[v] for v in ids.ravel()], np.uint8).reshape(*ids.shape, 3)).save(
            colour_dir / name)
    spec = ["BG=0,0,0", "RV=255,0,0", "Myo=0,255,0", "LV=0,0,255"]
    prepare_data.main(["folder", "--images", str(tmp_path / "png" / "images"), "--masks", str(colour_dir),
                       "--output", str(tmp_path / "a"), "--classes", *spec])
    prepare_data.main(["folder", "--images", str(tmp_path / "png" / "images"), "--masks",
                       str(tmp_path / "png" / "masks"), "--output", str(tmp_path / "b")])
    for sid in lines(str(tmp_path / "a" / "train_slices.list")):
        a, b = (h5py.File(tmp_path / d / "data" / "slices" / f"{sid}.h5") for d in "ab")
        assert ("label" in a) == ("label" in b)
        if "label" in a:
            np.testing.assert_array_equal(a["label"][()], b["label"][()])
    with pytest.raises(DataError, match=r"img00.png: value \(255, 0, 0\) is not one of the --classes"):
        prepare_data.main(["folder", "--images", str(tmp_path / "png" / "images"), "--masks", str(colour_dir),
                           "--output", str(tmp_path / "c"), "--classes", "BG=0,0,0", "Myo=0,255,0", "LV=0,0,255"])
    assert not (tmp_path / "c").exists()


def test_unusable_own_data_stops_with_one_line(tmp_path, nnunet):
    raw, prep, _, _ = nnunet
    # several channels and no --channel
    multi = tmp_path / "multi"
    make_nnunet(str(multi), n_cases=3, unlabeled=())
    desc = json.load(open(multi / "dataset.json"))
    desc["channel_names"] = {"0": "T2", "1": "ADC"}
    json.dump(desc, open(multi / "dataset.json", "w"))
    with pytest.raises(DataError, match="2 channels .*choose one with --channel"):
        prepare_data.main(["nnunet", "--input", str(multi), "--output", str(tmp_path / "o1")])
    # no case with a mask
    bare = tmp_path / "bare"
    make_png_folder(str(bare), n_images=3, unlabeled=(0, 1, 2))
    with pytest.raises(DataError, match="no case has a mask"):
        prepare_data.main(["folder", "--images", str(bare / "images"), "--masks", str(bare / "masks"),
                           "--output", str(tmp_path / "o2")])
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    # a label-less slice listed inside the labeled set
    moved = tmp_path / "moved"
    os.system(f"cp -r {prep} {moved}")
    ids = lines(str(moved / "train_slices.list"))
    (moved / "train_slices.list").write_text("\n".join(ids[-1:] + ids[:-1]) + "\n")
    problems, _ = check_data.check_dataset(str(moved))
    assert problems[0] == ("dataset table", "--labelnum 1's labeled set (the first 4 slices) includes 1 slice(s) "
                           "without a label, first case07_slice_4")
    with pytest.raises(DataError, match="case07_slice_4.h5: has no label but is among the first 4 slices"):
        train_fixmatch_ACDC.main(["--root_path", str(moved), "--snapshot_dir", str(tmp_path / "r1"),
                                  "--labelnum", "1", *TINY])
    # every labeled case labeled and no unlabeled case: a semi-supervised run has nothing to learn from
    full = tmp_path / "full"
    make_nnunet(str(full / "raw"), n_cases=4, unlabeled=())
    prepare_data.main(["nnunet", "--input", str(full / "raw"), "--output", str(full / "prep")])
    with pytest.raises(DataError, match="0 unlabeled slices"):
        train_fixmatch_ACDC.main(["--root_path", str(full / "prep"), "--snapshot_dir", str(tmp_path / "r2"),
                                  "--labelnum", "3", *TINY])
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_predict_refuses_bad_inputs_and_writes_nothing(trained, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    nifti(str(inputs / "a_good.nii.gz"), rng.random((3, 20, 24)).astype(np.float32))
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(rng.random((3, 20, 24)).astype(np.float32)) for _ in range(2)])
    sitk.WriteImage(four_d, str(inputs / "b_cine.nii.gz"))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"b_cine.nii.gz: has 2 channels; choose one with --channel"):
        predict.main(["--checkpoint", trained, "--input", str(inputs), "--output", str(out), "--gpu", "-1"])
    assert not out.exists()  # the good file before it was not segmented either
    (inputs / "b_cine.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"b_cine.nii.gz: cannot read it"):
        predict.main(["--checkpoint", trained, "--input", str(inputs), "--output", str(out), "--gpu", "-1"])
    (inputs / "b_cine.nii.gz").unlink()
    with pytest.raises(UsageError, match="a_good.nii.gz would overwrite it"):
        predict.main(["--checkpoint", trained, "--input", str(inputs), "--output", str(inputs), "--gpu", "-1"])
    written = predict.main(["--checkpoint", trained, "--input", str(inputs / "a_good.nii.gz"), "--output", str(out),
                            "--gpu", "-1"])
    assert [os.path.basename(w) for w in written] == ["a_good.nii.gz"] and sorted(os.listdir(out)) == ["a_good.nii.gz"]
    mask = sitk.ReadImage(written[0])
    assert mask.GetSize() == (24, 20, 3) and np.allclose(mask.GetDirection(), DIRECTION)


def test_predict_channel_takes_one_colour_of_a_picture(trained, tmp_path):
    """--channel K on a colour picture segments its colour K (as a grey picture of it), not the luminance; a
    channel the picture lacks is one line, and nothing is written."""
    rng = np.random.default_rng(3)
    green = np.round(rng.random((40, 48)) * 255).astype(np.uint8)
    rgb = np.stack([255 - green, green, np.zeros_like(green)], -1)
    for name, picture in (("colour", rgb), ("grey", green)):
        (tmp_path / name).mkdir()
        Image.fromarray(picture).save(tmp_path / name / "scan.png")
    base = ["--checkpoint", trained, "--gpu", "-1"]
    predict.main(base + ["--input", str(tmp_path / "colour"), "--output", str(tmp_path / "out_g"), "--channel", "1"])
    predict.main(base + ["--input", str(tmp_path / "grey"), "--output", str(tmp_path / "out_grey")])
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out_g" / "scan.png")),
                                  np.array(Image.open(tmp_path / "out_grey" / "scan.png")))
    with pytest.raises(DataError, match=r"colour/scan.png: --channel 3 does not exist \(it has 3: 0..2\)"):
        predict.main(base + ["--input", str(tmp_path / "colour"), "--output", str(tmp_path / "o3"), "--channel", "3"])
    with pytest.raises(DataError, match=r"grey/scan.png: has one channel \(grey\); --channel 1 does not exist"):
        predict.main(base + ["--input", str(tmp_path / "grey"), "--output", str(tmp_path / "o4"), "--channel", "1"])
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()
    ckpt = torch.load(trained, weights_only=False)
    assert ckpt["channel"] is None  # prepared from nnU-Net files: one channel each
    ckpt["channel"] = 1  # as training on a folder prepared with --channel 1 writes it
    torch.save(ckpt, tmp_path / "green.pth")
    predict.main(["--checkpoint", str(tmp_path / "green.pth"), "--gpu", "-1", "--input", str(tmp_path / "colour"),
                  "--output", str(tmp_path / "out_default")])  # no --channel: the checkpoint's
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out_default" / "scan.png")),
                                  np.array(Image.open(tmp_path / "out_g" / "scan.png")))
    with pytest.raises(DataError, match=r"grey/scan.png: has one channel \(grey\); --channel 1 does not exist; that "
                                        r"channel is the checkpoint's, not a flag you gave \(its training data was "
                                        r"prepared with --channel 1\): give --channel 0 to read a grey picture"):
        predict.main(["--checkpoint", str(tmp_path / "green.pth"), "--gpu", "-1", "--input", str(tmp_path / "grey"),
                      "--output", str(tmp_path / "o5")])
    predict.main(["--checkpoint", str(tmp_path / "green.pth"), "--gpu", "-1", "--input", str(tmp_path / "grey"),
                  "--output", str(tmp_path / "o6"), "--channel", "0"])  # the advice works
    assert not (tmp_path / "o5").exists() and (tmp_path / "o6" / "scan.png").exists()


def test_cmyk_pictures_are_read_as_colour_and_huge_pictures_are_one_line(tmp_path, monkeypatch):
    """A CMYK (or YCbCr, LAB, HSV) picture is converted to RGB, not read with C, M, Y as R, G, B (the inverted
    luminance); a picture above Pillow's decompression-bomb limit is one line, not a traceback."""
    from dataloaders.image_io import LUMA, read_image, read_mask

    rng = np.random.default_rng(5)
    rgb = np.round(rng.random((40, 48, 3)) * 255).astype(np.uint8)
    luma = rgb.astype(np.float32) @ LUMA
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.tif").mode == Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    np.testing.assert_allclose(read_image(str(tmp_path / "cmyk.tif"))[0][0], luma, atol=1e-3)
    assert np.abs(read_image(str(tmp_path / "cmyk.jpg"))[0][0] - luma).mean() < 4  # JPEG's loss only
    np.testing.assert_array_equal(read_image(str(tmp_path / "cmyk.tif"), channel=1)[0][0], rgb[..., 1])
    # a CMYK colour mask: its colours are the RGB ones (C, M, Y read as R, G, B matched no --classes colour)
    classes = np.arange(40 * 48).reshape(40, 48) % 3
    colours = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    Image.fromarray(np.asarray(colours, np.uint8)[classes]).convert("CMYK").save(tmp_path / "cmyk_mask.tif")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "cmyk_mask.tif"), colours)[0][0], classes)
    with pytest.raises(DataError, match=r"cmyk_mask.tif: a colour mask; give the colour of each class"):
        read_mask(str(tmp_path / "cmyk_mask.tif"))
    palette = Image.fromarray(np.arange(40 * 48).reshape(40, 48).astype(np.uint8) % 4, "P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "mask.png")  # a palette mask still gives its indices
    np.testing.assert_array_equal(read_mask(str(tmp_path / "mask.png"))[0][0], np.array(palette))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses pictures above twice this
    with pytest.raises(DataError, match=r"cmyk.tif: the picture is beyond the reader's limit of 200 pixels \(.*\); "
                                        r"downscale or tile it$"):
        read_image(str(tmp_path / "cmyk.tif"))
    with pytest.raises(DataError, match=r"mask.png: the picture is beyond the reader's limit"):
        read_mask(str(tmp_path / "mask.png"))


def test_folder_channel_picks_a_colour_or_a_channel_of_4d_images(tmp_path):
    make_png_folder(str(tmp_path / "png"), n_images=4, unlabeled=())
    images, masks = tmp_path / "png" / "images", tmp_path / "png" / "masks"
    grey = np.array(Image.open(images / "img00.png"))[..., 0]
    Image.fromarray(np.stack([grey, 255 - grey, grey // 2], -1)).save(images / "img00.png")
    base = ["folder", "--images", str(images), "--masks", str(masks)]
    prepare_data.main(base + ["--output", str(tmp_path / "g"), "--channel", "1"])
    with h5py.File(tmp_path / "g" / "data" / "img00.h5") as f:  # the green channel, min-max normalised
        green = (255 - grey).astype(np.float32)
        np.testing.assert_allclose(f["image"][0], (green - green.min()) / (green.max() - green.min()), atol=1e-6)
    assert json.load(open(tmp_path / "g" / "dataset.json"))["source"]["channel"] == 1
    assert load_dataset_info(str(tmp_path / "g")).channel == 1  # into every checkpoint, for predict.py
    with pytest.raises(DataError, match=r"img00.png: --channel 3 does not exist \(it has 3: 0..2\)"):
        prepare_data.main(base + ["--output", str(tmp_path / "bad"), "--channel", "3"])
    # 4-D NIfTI images: the message's --channel K is a flag of the folder subcommand
    vols, vol_masks = tmp_path / "vols", tmp_path / "vol_masks"
    vols.mkdir()
    vol_masks.mkdir()
    rng, second = np.random.default_rng(5), {}
    for i in range(4):
        channels = [rng.random((3, 20, 24)).astype(np.float32) for _ in range(2)]
        sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels]), str(vols / f"v{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 3, (3, 20, 24)).astype(np.uint8)),
                        str(vol_masks / f"v{i}.nii.gz"))
        second[f"v{i}"] = channels[1]
    vol_base = ["folder", "--images", str(vols), "--masks", str(vol_masks)]
    with pytest.raises(DataError, match=r"v0.nii.gz: has 2 channels; choose one with --channel K \(0..1\)"):
        prepare_data.main(vol_base + ["--output", str(tmp_path / "bad")])
    prepare_data.main(vol_base + ["--output", str(tmp_path / "v"), "--channel", "1"])
    with h5py.File(tmp_path / "v" / "data" / "v2.h5") as f:
        c = second["v2"]
        np.testing.assert_allclose(f["image"][()], (c - c.min()) / (c.max() - c.min()), atol=1e-6)
    assert not (tmp_path / "bad").exists()


def test_a_ct_channel_gets_one_window_for_the_dataset(tmp_path):
    cases = make_nnunet(str(tmp_path / "raw"), n_cases=5, unlabeled=("case04",))
    desc = json.load(open(tmp_path / "raw" / "dataset.json"))
    desc["channel_names"] = {"0": "CT"}
    json.dump(desc, open(tmp_path / "raw" / "dataset.json", "w"))
    prepare_data.main(["nnunet", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "p"),
                       "--val_fraction", "0.25"])
    norm = json.load(open(tmp_path / "p" / "dataset.json"))["normalization"]
    train = [c for c in lines(str(tmp_path / "p" / "train.list")) if c != "case04"]
    fg = np.concatenate([cases[c][0][cases[c][1] > 0] for c in train]).astype(np.float64)
    assert norm["scheme"] == "ct" and np.allclose(norm["window"], np.percentile(fg, [0.5, 99.5]))
    assert load_dataset_info(str(tmp_path / "p")).normalization == norm  # its window passes the reader's checks
    image, _ = cases["case04"]  # an unlabeled case is normalised with the same window
    with h5py.File(tmp_path / "p" / "data" / "case04.h5") as f:
        lo, hi = norm["window"]
        np.testing.assert_allclose(f["image"][()], np.clip((image.astype(np.float32) - lo) / (hi - lo), 0, 1),
                                   atol=1e-6)
    with pytest.raises(ValueError, match=r"one intensity \(3\) between its 0.5 and 99.5 percentiles, no window"):
        ct_window([np.full(50, 3.0), np.r_[np.full(500, 3.0), 9.0]])  # a flat foreground: no window to write


def test_nnunet_label_values_map_to_ids_and_mismatches_are_refused(tmp_path):
    raw = tmp_path / "raw"
    cases = make_nnunet(str(raw), n_cases=4, unlabeled=())
    desc = json.load(open(raw / "dataset.json"))
    desc["labels"] = {"background": 0, "RV": 1, "Myo": 5, "LV": 7}  # label values that are not the ids
    json.dump(desc, open(raw / "dataset.json", "w"))
    for name, (_, lab) in cases.items():
        nifti(str(raw / "labelsTr" / f"{name}.nii.gz"), np.array([0, 1, 5, 7], np.uint8)[lab])
    prepare_data.main(["nnunet", "--input", str(raw), "--output", str(tmp_path / "p"), "--val_fraction", "0.25"])
    for name in lines(str(tmp_path / "p" / "val.list")):
        with h5py.File(tmp_path / "p" / "data" / f"{name}.h5") as f:
            np.testing.assert_array_equal(f["label"][()], cases[name][1])  # values 0 1 5 7 -> ids 0 1 2 3
    nifti(str(raw / "labelsTr" / "case00.nii"), cases["case00"][1].astype(np.uint8))  # wrong ending
    with pytest.raises(DataError, match=r"labelsTr/case00.nii: matches no imagesTr/<case>_0000.nii.gz"):
        prepare_data.main(["nnunet", "--input", str(raw), "--output", str(tmp_path / "q")])
    os.remove(raw / "labelsTr" / "case00.nii")
    nifti(str(raw / "labelsTr" / "case01.nii.gz"), np.array([0, 1, 5, 7], np.uint8)[cases["case01"][1]],
          origin=(0.0, 0.0, 0.0))  # the mask lies elsewhere in the scanner
    with pytest.raises(DataError, match="case case01: image and mask .* differ in origin"):
        prepare_data.main(["nnunet", "--input", str(raw), "--output", str(tmp_path / "q")])
    assert not (tmp_path / "q").exists()


def test_scaled_nifti_is_read_with_its_scaling(tmp_path):
    """dcm2niix-style int16 with scl_slope / scl_inter: ITK returns float32, the file is not truncated."""
    from dataloaders.image_io import read_image

    path = tmp_path / "ct.nii"
    stored = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    nifti(str(path), stored)
    header = bytearray(path.read_bytes())
    header[112:120] = np.array([2.0, -1024.0], "<f4").tobytes()  # scl_slope, scl_inter of the NIfTI-1 header
    path.write_bytes(bytes(header))
    image, geometry = read_image(str(path))
    np.testing.assert_array_equal(image, stored * 2.0 - 1024.0)
    path.write_bytes(bytes(header)[:-10])
    with pytest.raises(DataError, match="ct.nii: the file is truncated"):
        read_image(str(path))


def test_folder_inputs_that_would_go_wrong_silently_are_refused(tmp_path):
    make_png_folder(str(tmp_path / "png"), n_images=4, unlabeled=())
    images, masks = tmp_path / "png" / "images", tmp_path / "png" / "masks"
    base = ["folder", "--images", str(images), "--masks", str(masks)]
    # palette masks with an RGB colour table: their colours are compared
    prepare_data.main(base + ["--output", str(tmp_path / "a"), "--classes", "BG=0,0,0", "RV=255,0,0", "Myo=0,255,0",
                              "LV=0,0,255"])
    # 0/128 and 0/255 grey masks need their values named
    for value, expect in ((128, r"mask values \[0, 128\] are not the class ids 0..C-1; .*BG=0 lesion=128"),
                          (255, r"img00.png: class ids must be in 0..254, found 0..255; .*BG=0 lesion=255")):
        for n in os.listdir(masks):
            ids = np.array(Image.open(masks / n))
            Image.fromarray(np.where(ids > 0, value, 0).astype(np.uint8)).save(masks / n)
        with pytest.raises(DataError, match=expect):
            prepare_data.main(base + ["--output", str(tmp_path / "b")])
    summary = prepare_data.main(base + ["--output", str(tmp_path / "c"), "--classes", "BG=0", "heart=255"])
    assert summary["class_names"] == ["BG", "heart"]
    # more classes than a dataset.json may hold (uint8 class ids), refused before the reading
    with pytest.raises(UsageError, match=r"^--classes: 256 classes; a dataset has 2 to 255, background included$"):
        prepare_data.main(base + ["--output", str(tmp_path / "many"), "--classes", "BG",
                                  *[f"c{k}" for k in range(1, 256)]])
    # RGB images become grey by luminance, not by their first channel
    rgb = np.zeros((48, 56, 3), np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(images / "img00.png")
    prepare_data.main(base + ["--output", str(tmp_path / "d"), "--classes", "BG=0", "heart=255"])
    with h5py.File(tmp_path / "d" / "data" / "img00.h5") as f:
        assert f.attrs["intensity_range"][1] == pytest.approx(0.587 * 200, rel=1e-5)
    # two images of one case
    Image.fromarray(rgb).save(images / "img01.tif")
    with pytest.raises(DataError, match="img01.png and img01.tif are the same case 'img01'"):
        prepare_data.main(base + ["--output", str(tmp_path / "e")])
    os.remove(images / "img01.tif")
    # no mask folder at all: nothing to validate on
    with pytest.raises(DataError, match="no case has a mask"):
        prepare_data.main(["folder", "--images", str(images), "--output", str(tmp_path / "f")])
