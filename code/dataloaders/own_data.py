"""Your own data: finding the cases of an nnU-Net raw dataset or of a folder of 2-D images, and reading them.

nnU-Net raw format (what `prepare_data.py nnunet` reads):
    dataset.json   {"channel_names": {"0": "MRI"}, "labels": {"background": 0, "RV": 1, ...},
                    "file_ending": ".nii.gz", ...}
    imagesTr/      {case}_{channel:04d}{file_ending}, e.g. patient001_0000.nii.gz
    labelsTr/      {case}{file_ending}; a case without one here is unlabeled training data
    imagesTs/      not read (segment those scans with predict.py)
Image folder (what `prepare_data.py folder` reads): --images holds pictures, --masks holds masks with the same
file name stem (any ending); an image without a mask is unlabeled.

Every case becomes a Volume: the image normalised to [0, 1] (dataloaders/intensity.py), the label as contiguous
class ids 0..C-1 (or None), the spacing per array axis and the attributes that place it (origin, direction).
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from dataloaders.dataset import DataError
from dataloaders.image_io import IMAGE_ENDINGS, VOLUME_ENDINGS, file_ending, read_image, read_mask, strip_ending
from dataloaders.intensity import normalize


@dataclass
class OwnCase:
    name: str
    image_path: str
    label_path: str = None  # None: unlabeled
    channel: int = None     # of a multi-channel image file (folder --channel); nnU-Net files hold one each


@dataclass
class Volume:
    image: np.ndarray    # (D, H, W) float32 in [0, 1]
    label: np.ndarray    # (D, H, W) uint8 class ids, or None (unlabeled)
    spacing: tuple       # (D, H, W) mm
    attrs: dict          # origin, direction, intensity_range: written into the case's h5 files


def read_nnunet_description(root, channel):
    """dataset.json -> (class names in id order, the label value of each class, file ending, channel, its name)."""
    path = os.path.join(root, "dataset.json")
    try:
        with open(path) as f:
            desc = json.load(f)
        labels, channels = desc["labels"], desc["channel_names"]
        ending = desc.get("file_ending", ".nii.gz")
    except FileNotFoundError:
        raise DataError(f"{path}: not found; an nnU-Net raw dataset has dataset.json, imagesTr/ and labelsTr/")
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not an nnU-Net dataset description ({type(e).__name__}: {e}); it needs "
                        f"'labels' and 'channel_names'")
    bad = [n for n, v in labels.items() if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise DataError(f"{path}: label {bad[0]!r} is a region (a list of values); only plain integer labels "
                        f"are supported")
    if "ignore" in labels:
        raise DataError(f"{path}: the 'ignore' label (sparse annotation) is not supported; relabel those voxels")
    pairs = sorted(labels.items(), key=lambda kv: kv[1])
    if not pairs or pairs[0][1] != 0:
        raise DataError(f"{path}: labels must include the background as value 0")
    if ending not in VOLUME_ENDINGS + IMAGE_ENDINGS:
        raise DataError(f"{path}: file_ending {ending!r} is not supported; one of "
                        f"{', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)}")
    keys = sorted(channels, key=int)
    if channel is None:
        if len(keys) > 1:
            raise DataError(f"{path}: {len(keys)} channels ({', '.join(f'{k}: {channels[k]}' for k in keys)}); "
                            f"choose one with --channel K")
        channel = int(keys[0])
    elif str(channel) not in channels:
        raise DataError(f"--channel {channel}: {path} lists channels {', '.join(keys)}")
    return [n for n, _ in pairs], [v for _, v in pairs], ending, channel, channels[str(channel)]


def find_nnunet(root, ending, channel):
    """imagesTr/{case}_{channel:04d}{ending} -> OwnCase list (label path None when labelsTr has no file)."""
    images_dir = os.path.join(root, "imagesTr")
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: not found; an nnU-Net raw dataset has imagesTr/ (and labelsTr/)")
    suffix = f"_{channel:04d}{ending}"
    cases = []
    for name in sorted(os.listdir(images_dir)):
        if name.startswith(".") or not name.endswith(suffix):
            continue
        case = name[:-len(suffix)]
        label = os.path.join(root, "labelsTr", case + ending)
        cases.append(OwnCase(case, os.path.join(images_dir, name), label if os.path.isfile(label) else None))
    if not cases:
        raise DataError(f"{images_dir}: no files named <case>{suffix}; check --channel and dataset.json's file_ending")
    labels_dir = os.path.join(root, "labelsTr")
    names = {c.name for c in cases}
    stray = sorted(n for n in os.listdir(labels_dir) if not n.startswith(".") and
                   (not n.endswith(ending) or n[:-len(ending)] not in names)) if os.path.isdir(labels_dir) else []
    if stray:  # a label that matches no image would silently turn its case into unlabeled data
        raise DataError(f"{os.path.join(labels_dir, stray[0])}: matches no imagesTr/<case>{suffix} "
                        f"({len(stray)} such files); check the names and dataset.json's file_ending {ending!r}")
    return cases


def find_folder(images_dir, masks_dir, channel=None):
    """Pictures (or volumes) in images_dir, masks with the same stem in masks_dir (optional); `channel`: the one
    to read of a 4-D or colour image."""
    for flag, d in (("--images", images_dir), ("--masks", masks_dir)):
        if d is not None and not os.path.isdir(d):
            raise DataError(f"{flag} {d}: folder not found")
    masks = {}
    for name in sorted(os.listdir(masks_dir)) if masks_dir else []:
        if file_ending(name) and not name.startswith("."):
            if strip_ending(name) in masks:
                raise DataError(f"--masks {masks_dir}: two masks for {strip_ending(name)!r}; keep one")
            masks[strip_ending(name)] = os.path.join(masks_dir, name)
    cases, seen = [], {}
    for n in sorted(os.listdir(images_dir)):
        if file_ending(n) and not n.startswith("."):
            if strip_ending(n) in seen:
                raise DataError(f"--images {images_dir}: {seen[strip_ending(n)]} and {n} are the same case "
                                f"{strip_ending(n)!r}; keep one")
            seen[strip_ending(n)] = n
            cases.append(OwnCase(strip_ending(n), os.path.join(images_dir, n), masks.pop(strip_ending(n), None),
                                 channel))
    if not cases:
        raise DataError(f"--images {images_dir}: no image files ({', '.join(IMAGE_ENDINGS + VOLUME_ENDINGS)})")
    if masks:
        raise DataError(f"--masks {masks_dir}: {sorted(masks)[0]} has no image of the same name in --images "
                        f"({len(masks)} such masks)")
    return cases


def load_own_case(case, values=None, colours=None):
    """-> (raw image float32 (D, H, W), label uint8 (D, H, W) class ids or None, Geometry).
    values: the label value of each class (nnU-Net); colours: the --classes table (folder)."""
    raw, geometry = read_image(case.image_path, case.channel)
    if not case.label_path:
        return raw, None, geometry
    ids, mask_geometry = read_mask(case.label_path, colours)
    if ids.shape != raw.shape:
        raise DataError(f"case {case.name}: image {raw.shape} and mask {ids.shape} ({case.label_path}) differ in "
                        f"size (D, H, W)")
    for what in ("spacing", "origin", "direction"):  # a mask placed elsewhere in the scanner does not overlay
        a, b = getattr(geometry, what), getattr(mask_geometry, what)
        if geometry.volume_file and mask_geometry.volume_file and not np.allclose(a, b, rtol=1e-3, atol=1e-3):
            raise DataError(f"case {case.name}: image and mask ({case.label_path}) differ in {what} "
                            f"({tuple(round(v, 4) for v in a)} vs {tuple(round(v, 4) for v in b)}); resample the mask")
    if values is not None:  # nnU-Net label values -> contiguous ids
        unknown = sorted(set(np.unique(ids).tolist()) - set(values))
        if unknown:
            raise DataError(f"{case.label_path}: label values {unknown} are not in dataset.json's labels {values}")
        if values != list(range(len(values))):
            lut = np.zeros(max(values) + 1, np.uint8)
            lut[values] = np.arange(len(values))
            ids = lut[ids]
    if ids.min() < 0 or ids.max() > 254:
        raise DataError(f"{case.label_path}: class ids must be in 0..254, found {ids.min()}..{ids.max()}; map mask "
                        f"values to classes with --classes (e.g. BG=0 lesion=255)")
    return raw, ids.astype(np.uint8), geometry


def to_volume(raw, label, geometry, normalization):
    """A read case -> the Volume written to the prepared folder."""
    attrs = {k: v for k, v in geometry.h5_attrs().items() if k != "spacing"}
    attrs["intensity_range"] = [float(raw.min()), float(raw.max())]
    return Volume(normalize(raw, normalization), label, geometry.spacing_dhw(), attrs)
