"""Per-dataset descriptions (docs/datasets.md): classes, and how many labeled slices `--labelnum` patients give.

A prepared folder may carry a `dataset.json` ({"name", "num_classes", "class_names", optional
"patients_to_slices" and "normalization"}), checked entry by entry as it is read; otherwise the dataset is named
explicitly with `--dataset`. Nothing is guessed from substrings of the path (the reference's habit).
"""
import json
import math
import os
from dataclasses import dataclass, field

from dataloaders.dataset import DataError
from dataloaders.intensity import SCHEMES
from utils.errors import one_line


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    class_names: list
    patients_to_slices: dict = field(default_factory=dict)  # labelnum (patients) -> first N slices
    # how raw intensities became [0, 1] (dataloaders/intensity.py); the paper's datasets: per-volume min-max
    normalization: dict = field(default_factory=lambda: {"scheme": "minmax"})
    # the channel read of each image file (prepare_data.py folder --channel), for predict.py to read the same one;
    # None: the file's only channel, or a colour picture's luminance
    channel: int = None


DATASETS = {
    "ACDC": DatasetInfo("ACDC", 4, ["BG", "RV", "Myo", "LV"],
                        {1: 32, 3: 68, 7: 136, 14: 256, 21: 396, 28: 512, 35: 664, 140: 1312}),
    # two train/val splits each; the paper reports the mean of both on val
    "MSCMR_split1": DatasetInfo("MSCMR_split1", 4, ["BG", "RV", "Myo", "LV"], {7: 110}),
    "MSCMR_split2": DatasetInfo("MSCMR_split2", 4, ["BG", "RV", "Myo", "LV"], {7: 103}),
    "Prostate_split1": DatasetInfo("Prostate_split1", 3, ["BG", "PZ", "TZ"], {2: 30}),
    "Prostate_split2": DatasetInfo("Prostate_split2", 3, ["BG", "PZ", "TZ"], {2: 40}),
}

# the fix every dataset.json error ends with
_FIX = "correct the file, or prepare the folder again with code/prepare_data.py"


def load_dataset_info(root_path, dataset=None):
    """The description of the data under `root_path`: its dataset.json if present, else DATASETS[dataset]."""
    desc = os.path.join(root_path, "dataset.json")
    if os.path.isfile(desc):
        info = read_description(desc)
        if dataset and dataset in DATASETS and not info.patients_to_slices:
            info.patients_to_slices = dict(DATASETS[dataset].patients_to_slices)
        return info
    name = dataset or "ACDC"
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r} is unknown; choose one of {sorted(DATASETS)} or put a dataset.json "
                         f"in {root_path}")
    return DATASETS[name]


def read_description(path):
    """A dataset.json -> DatasetInfo, every entry checked: a wrong one would otherwise pass silently (3 names for 4
    classes shift every table's class names) or fail deep inside training. DataError names the file and the fix."""
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
        raise DataError(f"{path}: cannot read it as JSON ({one_line(e)}); {_FIX}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: holds a JSON {type(d).__name__}, not an object with num_classes and class_names; "
                        f"{_FIX}")
    n = d.get("num_classes")
    if not _whole(n) or not 2 <= n <= 255:  # labels are uint8 class ids, background included
        raise DataError(f"{path}: num_classes must be a whole number in 2..255 (background + classes), found "
                        f"{_short(n)}; {_FIX}")
    names = d.get("class_names")
    if not isinstance(names, list) or len(names) != n or not all(isinstance(c, str) for c in names):
        found = f"{len(names)} names" if isinstance(names, list) and len(names) != n else _short(names)
        raise DataError(f"{path}: class_names must list all {n} class names as strings, background first, found "
                        f"{found}; {_FIX}")
    return DatasetInfo(str(d.get("name", d.get("dataset", "custom"))), n, list(names),
                       _slice_table(path, d.get("patients_to_slices", {})),
                       _normalization(path, d.get("normalization", {"scheme": "minmax"})), _image_channel(path, d))


def _image_channel(path, d):
    """source.channel of a `folder` preparation: the channel taken from within each image file. (nnU-Net's
    channel is a file of its own, _0000, _0001, ...: a new scan is that one file, with nothing to pick.)"""
    source = d.get("source")
    if not isinstance(source, dict) or source.get("format") != "folder" or source.get("channel") is None:
        return None
    if not _whole(source["channel"]) or source["channel"] < 0:
        raise DataError(f"{path}: source.channel must be a channel number (0 or more), found "
                        f"{_short(source['channel'])}; {_FIX}")
    return source["channel"]


def _whole(v):
    return isinstance(v, int) and not isinstance(v, bool)  # JSON true is a Python int too


def _short(v, limit=40):
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _slice_table(path, table):
    """patients_to_slices {"labelnum": slices} -> {int: int}, both positive."""
    if not isinstance(table, dict):
        raise DataError(f"{path}: patients_to_slices must be an object {{\"labelnum\": slices, ...}}, found "
                        f"{_short(table)}; {_FIX}")
    for k, v in table.items():
        if not (k.isascii() and k.isdigit() and int(k) > 0 and _whole(v) and v > 0):
            raise DataError(f"{path}: patients_to_slices entry {k!r}: {_short(v)} must map a positive number of "
                            f"patients to a positive number of slices; {_FIX}")
    return {int(k): v for k, v in table.items()}


def _normalization(path, norm):
    """The normalization entry, as dataloaders/intensity.py's normalize applies it: a known scheme, and for ct a
    window [lo, hi] of finite numbers with lo < hi."""
    if not isinstance(norm, dict):
        raise DataError(f"{path}: normalization must be an object {{\"scheme\": ...}}, found {_short(norm)}; {_FIX}")
    if norm.get("scheme") not in SCHEMES:
        raise DataError(f"{path}: normalization scheme {_short(norm.get('scheme'))} is not one of "
                        f"{', '.join(SCHEMES)} (dataloaders/intensity.py); {_FIX}")
    if norm["scheme"] == "ct":
        w = norm.get("window")
        ok = isinstance(w, list) and len(w) == 2 and all(_number(v) for v in w) and w[0] < w[1]
        if not ok:
            raise DataError(f"{path}: normalization ct needs a window [lo, hi] of finite numbers with lo < hi, "
                            f"found {_short(w)}; {_FIX}")
    return dict(norm)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def labeled_slice_count(info, labelnum, n_slices):
    """docs/datasets.md, Labeled slices: the labeled set is the first N slices of train_slices.list, N from the table."""
    if labelnum not in info.patients_to_slices:
        raise DataError(f"--labelnum {labelnum} is not in the {info.name} table; choose one of "
                         f"{sorted(info.patients_to_slices)}")
    n = info.patients_to_slices[labelnum]
    if n > n_slices:
        raise DataError(f"--labelnum {labelnum} needs {n} labeled slices but train_slices.list has only {n_slices}")
    return n
