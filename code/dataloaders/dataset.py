"""h5 datasets in the SSL4MIS layout (docs/datasets.md, The prepared layout): training slices and evaluation volumes.

Every file is checked when it is read (datasets present, 2-D/3-D shapes agree, finite image, labels in
[0, num_classes)); a bad file raises DataError naming it. Training slices are read once, resized to the
patch and cached in memory (resizing comes first in the training iteration, so the cache holds exactly what augmentation
starts from).
"""
import os

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from dataloaders.augmentation import make_views, resize_pair, strong_photometric
from dataloaders.layout import read_ids
from dataloaders.random_streams import stream_rng
from utils.errors import one_line


RANGE_TOL = 1e-5  # float32 min-max normalisation can land a hair outside [0, 1]


NO_LABEL = 255  # the label of an unlabeled slice's pixels (never a class: num_classes <= 255)


class DataError(ValueError):
    """A data file or list that cannot be used; the message names it and says how to fix it."""


def read_list(root, name):
    path = os.path.join(root, name)
    ids = read_ids(path)
    if ids is None and name == "test.list" and os.path.isfile(os.path.join(root, "train_slices.list")):
        # a prepared folder that holds back no test split (own data with --test_fraction 0, MS-CMR, Prostate)
        raise DataError(f"{path}: {root} has no test split (no test.list); use --split val")
    if ids is None:
        raise DataError(f"{path}: list file not found; is --root_path the prepared dataset folder "
                        f"(it needs train_slices.list, val.list, data/)?")
    if not ids:
        hint = "; use --split val" if name == "test.list" else ""  # an empty test split is no test split either
        raise DataError(f"{path}: the list is empty{hint}")
    return ids


def read_case(path, num_classes, ndim, need_label=True):
    """-> image float32, label uint8 (None for an unlabeled slice when need_label=False), spacing or None;
    raises DataError on anything unusable."""
    try:
        with h5py.File(path, "r") as f:
            needed = ("image", "label") if need_label else ("image",)
            missing = [k for k in needed if k not in f]
            if missing:
                why = "it needs 'image' and 'label'" if need_label else "it needs 'image'"
                raise DataError(f"{path}: no dataset {missing[0]!r} in the h5 file ({why})")
            image = f["image"][()]
            label = f["label"][()] if "label" in f else None
            spacing = f.attrs.get("spacing", None)
    except DataError:
        raise
    except (OSError, KeyError, RuntimeError) as e:  # h5py reports truncation/corruption as OSError
        raise DataError(f"{path}: unreadable h5 file ({one_line(e)}); re-create or remove it")
    if image.ndim != ndim or (label is not None and image.shape != label.shape):
        shapes = f"image {image.shape}" + ("" if label is None else f" and label {label.shape}")
        raise DataError(f"{path}: {shapes} must {'be' if label is None else 'both be'} {ndim}-D"
                        f"{'' if label is None else ' and equal'}")
    if not np.issubdtype(image.dtype, np.number) or (label is not None and not np.issubdtype(label.dtype, np.integer)):
        raise DataError(f"{path}: image must be numeric and label integer, got {image.dtype} and "
                        f"{None if label is None else label.dtype}")
    if image.size == 0:
        raise DataError(f"{path}: image {image.shape} is empty; re-prepare this case or remove it from its list")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise DataError(f"{path}: image has NaN or infinite values; re-prepare this case")
    lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:  # e.g. raw 0-255 intensities: the networks expect [0, 1]
        raise DataError(f"{path}: image range [{lo:.4g}, {hi:.4g}] is outside [0, 1]; re-prepare it (per-volume "
                        f"min-max; code/check_data.py lists every such file)")
    if label is not None and label.size and (label.min() < 0 or label.max() >= num_classes):
        raise DataError(f"{path}: label values span [{label.min()}, {label.max()}] but --num_classes is "
                        f"{num_classes}; remap the labels or set --num_classes")
    return image, (None if label is None else label.astype(np.uint8)), _spacing(path, spacing, ndim)


def _spacing(path, spacing, ndim):
    """The 'spacing' attribute as floats per array axis ((z, y, x) of a volume, (y, x) of a slice), or None;
    DataError for anything else (a scalar, a string)."""
    if spacing is None:
        return None
    values = np.ravel(spacing).tolist()  # plain Python values; a scalar or a string gives one
    if len(values) != ndim or not all(type(v) in (int, float) and np.isfinite(v) and v > 0 for v in values):
        found = spacing.tolist() if hasattr(spacing, "tolist") else spacing
        raise DataError(f"{path}: 'spacing' attribute must be {ndim} positive numbers "
                        f"({'z, y, x' if ndim == 3 else 'y, x'}), found {found!r}; "
                        f"re-prepare this case or correct the attribute")
    return tuple(float(v) for v in values)


def read_geometry(path):
    """The h5 attributes that place a volume in the scanner: spacing (D, H, W), origin and direction (ITK's
    (x, y, z) convention, as the source NIfTI had them) and intensity_range (the source's [min, max] before
    min-max normalisation); each None when the file does not carry it."""
    with h5py.File(path, "r") as f:
        return {k: (None if k not in f.attrs else [float(v) for v in np.ravel(f.attrs[k])])
                for k in ("spacing", "origin", "direction", "intensity_range")}


class SliceDataset(Dataset):
    """Training slices of `train_slices.list`; item = (index, aug_seed) -> dict of tensors.

    image (1,H,W) weak view, label (H,W) long, index (); with strong_views >= 1 image_strong (1,H,W), the
    weak view's photometric strong view; with strong_views = 2 also image_strong2 (1,H,W), a second draw of it
    from the slice's own stream (aug_seed + (1,)).
    A slice file without a 'label' is unlabeled (`has_label[i]` False): its label tensor is all NO_LABEL, a
    value outside every class, so a loss that used it would fail instead of learning from it; the trainer
    keeps such slices out of the labeled stream.
    With skip_bad=True unreadable slices are dropped (counted in `skipped`) instead of stopping the run.
    """

    def __init__(self, root, num_classes, patch_size, strong_views=1, skip_bad=False, ids=None, log=print):
        if strong_views not in (0, 1, 2):
            raise ValueError(f"strong_views={strong_views}: 0, 1 or 2")
        self.root, self.num_classes, self.patch_size = root, num_classes, tuple(patch_size)
        self.strong_views = strong_views
        self.ids = ids if ids is not None else read_list(root, "train_slices.list")
        self.paths = [os.path.join(root, "data", "slices", f"{s}.h5") for s in self.ids]
        absent = [p for p in self.paths if not os.path.isfile(p)]
        if absent:
            raise DataError(f"{absent[0]}: listed in train_slices.list but missing ({len(absent)} missing in all); "
                            f"fix the list or the data folder")
        self.images, self.labels, self.skipped = [], [], []
        for i, p in enumerate(self.paths):
            try:
                image, label, _ = read_case(p, num_classes, 2, need_label=False)
            except DataError as e:
                if not skip_bad:
                    raise
                log(f"skipping bad sample: {e}")
                self.skipped.append(i)
                image, label = None, None
            else:
                image, label = resize_pair(image, label, self.patch_size)
            self.images.append(image)
            self.labels.append(label)
        self.has_label = [lab is not None for lab in self.labels]

    def valid_indices(self, indices):
        bad = set(self.skipped)
        return [i for i in indices if i not in bad]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, item):
        idx, seed = item
        rng = stream_rng(*seed)  # seed = (run seed, "augmentation", iteration, slot)
        weak, strong, label = make_views(self.images[idx], self.labels[idx], rng, self.patch_size,
                                         self.strong_views > 0)
        label = np.full(weak.shape, NO_LABEL, np.int64) if label is None else label.astype(np.int64)
        out = {"image": torch.from_numpy(weak)[None], "label": torch.from_numpy(label),
               "index": torch.tensor(idx)}
        if strong is not None:
            out["image_strong"] = torch.from_numpy(strong)[None]
        if self.strong_views == 2:
            out["image_strong2"] = torch.from_numpy(strong_photometric(weak, stream_rng(*seed, 1)))[None]
        return out


class VolumeDataset:
    """Evaluation volumes of `<split>.list` (val, test, or valtest = both): (name, image, label, spacing)."""

    def __init__(self, root, split, num_classes):
        names, lists = [], []
        for s in (["val", "test"] if split == "valtest" else [split]):
            ids = read_list(root, f"{s}.list")
            names += ids
            lists += [f"{s}.list"] * len(ids)
        self.root, self.num_classes, self.names = root, num_classes, names
        self.paths = [os.path.join(root, "data", f"{n}.h5") for n in names]
        absent = [k for k, p in enumerate(self.paths) if not os.path.isfile(p)]
        if absent:
            raise DataError(f"{self.paths[absent[0]]}: listed in {lists[absent[0]]} but missing; fix the list or the "
                            f"data folder")
        self._cache = {}

    def __len__(self):
        return len(self.names)

    def __getitem__(self, i):
        if i not in self._cache:
            self._cache[i] = read_case(self.paths[i], self.num_classes, 3)
        image, label, spacing = self._cache[i]
        return self.names[i], image, label, spacing
