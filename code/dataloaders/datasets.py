"""Per-dataset descriptions (docs/datasets.md): classes, and how many labeled slices `--labelnum` patients give.

A prepared folder may carry a `dataset.json` ({"name", "num_classes", "class_names",
"patients_to_slices", optional "normalization"}); otherwise the dataset is named explicitly with `--dataset`. Nothing is guessed from
substrings of the path (the reference's habit).
"""
import json
import os
from dataclasses import dataclass, field

from dataloaders.dataset import DataError


@dataclass
class DatasetInfo:
    name: str
    num_classes: int
    class_names: list
    patients_to_slices: dict = field(default_factory=dict)  # labelnum (patients) -> first N slices
    # how raw intensities became [0, 1] (dataloaders/intensity.py); the paper's datasets: per-volume min-max
    normalization: dict = field(default_factory=lambda: {"scheme": "minmax"})


DATASETS = {
    "ACDC": DatasetInfo("ACDC", 4, ["BG", "RV", "Myo", "LV"],
                        {1: 32, 3: 68, 7: 136, 14: 256, 21: 396, 28: 512, 35: 664, 140: 1312}),
    # two train/val splits each; the paper reports the mean of both on val
    "MSCMR_split1": DatasetInfo("MSCMR_split1", 4, ["BG", "RV", "Myo", "LV"], {7: 110}),
    "MSCMR_split2": DatasetInfo("MSCMR_split2", 4, ["BG", "RV", "Myo", "LV"], {7: 103}),
    "Prostate_split1": DatasetInfo("Prostate_split1", 3, ["BG", "PZ", "TZ"], {2: 30}),
    "Prostate_split2": DatasetInfo("Prostate_split2", 3, ["BG", "PZ", "TZ"], {2: 40}),
}


def load_dataset_info(root_path, dataset=None):
    """The description of the data under `root_path`: its dataset.json if present, else DATASETS[dataset]."""
    desc = os.path.join(root_path, "dataset.json")
    if os.path.isfile(desc):
        try:
            with open(desc) as f:
                d = json.load(f)
            info = DatasetInfo(d.get("name", d.get("dataset", "custom")), int(d["num_classes"]),
                               list(d["class_names"]),
                               {int(k): int(v) for k, v in d.get("patients_to_slices", {}).items()},
                               dict(d.get("normalization", {"scheme": "minmax"})))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{desc}: not a valid dataset description ({e}); it needs num_classes, class_names "
                             f"and patients_to_slices")
        if dataset and dataset in DATASETS and not info.patients_to_slices:
            info.patients_to_slices = dict(DATASETS[dataset].patients_to_slices)
        return info
    name = dataset or "ACDC"
    if name not in DATASETS:
        raise DataError(f"--dataset {name!r} is unknown; choose one of {sorted(DATASETS)} or put a dataset.json "
                         f"in {root_path}")
    return DATASETS[name]


def labeled_slice_count(info, labelnum, n_slices):
    """docs/datasets.md, Labeled slices: the labeled set is the first N slices of train_slices.list, N from the table."""
    if labelnum not in info.patients_to_slices:
        raise DataError(f"--labelnum {labelnum} is not in the {info.name} table; choose one of "
                         f"{sorted(info.patients_to_slices)}")
    n = info.patients_to_slices[labelnum]
    if n > n_slices:
        raise DataError(f"--labelnum {labelnum} needs {n} labeled slices but train_slices.list has only {n_slices}")
    return n
