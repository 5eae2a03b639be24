"""Prepare a dataset of the paper from its official download (NIfTI) into the SSL4MIS layout (README, Method: Data).

    python code/prepare_data.py acdc --input ~/ACDC/database --split_lists ~/SSL4MIS/data/ACDC   # SSL4MIS split
    python code/prepare_data.py acdc --input ~/ACDC/database                 # seeded 70/10/20 patient split
    python code/prepare_data.py mscmr --input ~/MSCMRSeg19                    # -> data/MSCMR/split1, split2
    python code/prepare_data.py prostate --input ~/Task05_Prostate            # -> data/Prostate/split1, split2

Each volume is min-max normalised to [0, 1] as a whole and cut into 1-based slice files for the training
patients; labels are remapped to contiguous ids (MS-CMRSEG19: 600 RV -> 1, 200 Myo -> 2, 500 LV -> 3); the
spacing (mm, per array axis) is kept as an h5 attribute (`test_ACDC.py --use_spacing`). A `dataset.json`
describes classes and the labeled-slice table, so training and testing need only `--root_path`.
Splits: ACDC from SSL4MIS list files (--split_lists) or a seeded 70/10/20 split of the patients;
MS-CMRSEG19 and Task05 get two seeded train/val splits (seeds --seed and --seed + 1, --val_fraction to val),
each a complete folder. The output is built in a temporary sibling and renamed at the end.
"""
import argparse
import json
import os
from collections import OrderedDict

import numpy as np
from tqdm import tqdm

from dataloaders.dataset import DataError
from dataloaders.datasets import DATASETS
from dataloaders.layout import atomic_folder, check_output, read_ids, write_h5, write_list
from dataloaders.official_sources import CLASS_NAMES, FINDERS, load_case
from utils.config import PROJECT_ROOT, UsageError

OUTPUT_NAMES = {"acdc": "ACDC", "mscmr": "MSCMR", "prostate": "Prostate"}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=sorted(FINDERS))
    p.add_argument("--input", required=True, help="the official download's folder")
    p.add_argument("--output", default=None, help="default: data/ACDC, data/MSCMR or data/Prostate")
    p.add_argument("--split_lists", default=None, help="ACDC: folder with SSL4MIS val.list, test.list and "
                   "train.list or train_slices.list")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient splits")
    p.add_argument("--val_fraction", type=float, default=0.2, help="MS-CMRSEG19 / Task05: patients to val")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    args.output = args.output or os.path.join(PROJECT_ROOT, "data", OUTPUT_NAMES[args.dataset])
    if not os.path.isdir(args.input):
        raise UsageError(f"--input {args.input}: folder not found")
    if args.split_lists and (args.dataset != "acdc" or not os.path.isdir(args.split_lists)):
        raise UsageError(f"--split_lists {args.split_lists}: must be an existing folder, and only for acdc")
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction {args.val_fraction} must be in (0, 1)")
    return args


def seeded_split(patients, fractions, seed):
    """Shuffle the patients with `seed`, cut by `fractions` (dict name -> fraction; the first takes the rest)."""
    order = list(np.random.default_rng(seed).permutation(len(patients)))
    names = list(fractions)
    counts = {n: int(round(fractions[n] * len(patients))) for n in names[1:]}
    counts[names[0]] = len(patients) - sum(counts.values())
    if min(counts.values()) < 1:
        raise DataError(f"{len(patients)} patients are too few for the split {fractions}")
    out, start = {}, 0
    for n in names:
        out[n] = sorted(patients[i] for i in order[start:start + counts[n]])
        start += counts[n]
    return out


def acdc_split_from_lists(folder, volumes):
    """SSL4MIS lists -> {split: [volume ids]} and the train slice order (or None: slices in volume order)."""
    split, slices = {}, read_ids(os.path.join(folder, "train_slices.list"))
    for s in ("val", "test"):
        split[s] = read_ids(os.path.join(folder, f"{s}.list"))
        if split[s] is None:
            raise UsageError(f"--split_lists {folder}: {s}.list not found")
    split["train"] = read_ids(os.path.join(folder, "train.list")) or \
        list(OrderedDict.fromkeys(s.rsplit("_slice_", 1)[0] for s in slices or []))
    if not split["train"]:
        raise UsageError(f"--split_lists {folder}: needs train.list or train_slices.list")
    for s, ids in split.items():
        missing = [v for v in ids if v not in volumes]
        if missing:
            raise DataError(f"{s}.list names {missing[0]} (and {len(missing) - 1} more) that the download lacks")
    return split, slices


def labeled_table(train_volumes, depths, patient_of):
    """{n patients: slices of the first n train patients} for the train order of a prepared folder."""
    table, total, seen = {}, 0, []
    for v in train_volumes:
        pid = patient_of[v]
        if pid not in seen:
            if seen:
                table[len(seen)] = total
            seen.append(pid)
        total += depths[v]
    table[len(seen)] = total
    return table


def write_dataset(out, dataset, name, split, slice_order, table, arrays):
    """One SSL4MIS folder: data/<volume>.h5 for every volume, data/slices/ for the train volumes, lists."""
    os.makedirs(os.path.join(out, "data", "slices"))
    for s, vols in split.items():
        write_list(os.path.join(out, f"{s}.list"), vols)
        for v in vols:
            image, label, spacing = arrays[v]
            write_h5(os.path.join(out, "data", f"{v}.h5"), image, label, spacing)
    slices = slice_order or [f"{v}_slice_{k + 1}" for v in split["train"] for k in range(arrays[v][0].shape[0])]
    for sid in slices:
        v, k = sid.rsplit("_slice_", 1)
        image, label, spacing = arrays[v]
        if not 1 <= int(k) <= image.shape[0]:
            raise DataError(f"train_slices.list: {sid} is beyond the {image.shape[0]} slices of {v}")
        write_h5(os.path.join(out, "data", "slices", f"{sid}.h5"), image[int(k) - 1], label[int(k) - 1],
                 spacing[1:])
    write_list(os.path.join(out, "train_slices.list"), slices)
    desc = {"name": name, "num_classes": len(CLASS_NAMES[dataset]), "class_names": CLASS_NAMES[dataset],
            "patients_to_slices": {str(k): v for k, v in table.items()}}
    with open(os.path.join(out, "dataset.json"), "w") as f:
        json.dump(desc, f, indent=2)
    return len(slices)


def main(argv=None):
    args = parse_args(argv)
    try:
        check_output(args.output, args.overwrite)  # before the slow reading
    except ValueError as e:
        raise UsageError(f"--output {e}")
    cases = FINDERS[args.dataset](args.input)
    if not cases:
        raise DataError(f"--input {args.input}: no {args.dataset} cases found in the official folder structure "
                        f"(see the header of code/prepare_data.py)")
    arrays = {c.volume: load_case(c, args.dataset) for c in tqdm(cases, desc=f"reading {args.dataset}", ncols=80)}
    patient_of = {c.volume: c.patient for c in cases}
    patients = sorted(set(patient_of.values()))
    depths = {v: a[0].shape[0] for v, a in arrays.items()}

    def volumes_of(pids):
        return [c.volume for c in cases if c.patient in set(pids)]

    folders = {}  # relative folder -> (name, split, slice order, table)
    if args.dataset == "acdc":
        if args.split_lists:
            split, slices = acdc_split_from_lists(args.split_lists, arrays)
            n_train = len(slices) if slices else sum(depths[v] for v in split["train"])
            table = {k: n for k, n in DATASETS["ACDC"].patients_to_slices.items() if n <= n_train}
        else:
            split = {k: volumes_of(p) for k, p in seeded_split(patients, {"train": .7, "val": .1, "test": .2},
                                                               args.seed).items()}
            slices, table = None, labeled_table(split["train"], depths, patient_of)
        folders["."] = ("ACDC", split, slices, table)
    else:
        for k in (1, 2):
            parts = seeded_split(patients, {"train": 1 - args.val_fraction, "val": args.val_fraction},
                                 args.seed + k - 1)
            split = {s: volumes_of(p) for s, p in parts.items()}
            folders[f"split{k}"] = (f"{OUTPUT_NAMES[args.dataset]}_split{k}", split, None,
                                    labeled_table(split["train"], depths, patient_of))
    with atomic_folder(args.output, args.overwrite) as tmp:
        n_slices = {rel: write_dataset(os.path.join(tmp, rel), args.dataset, *spec, arrays)
                    for rel, spec in tqdm(folders.items(), desc="writing", ncols=80)}
    counts = np.zeros(len(CLASS_NAMES[args.dataset]), dtype=np.int64)
    for _, label, _ in arrays.values():
        counts += np.bincount(label.ravel(), minlength=len(counts))
    summary = {"output": os.path.abspath(args.output), "cases": len(cases), "patients": len(patients),
               "folders": {rel: {s: len(v) for s, v in spec[1].items()} | {"train_slices": n_slices[rel]}
                           for rel, spec in folders.items()},
               "class_voxels": dict(zip(CLASS_NAMES[args.dataset], counts.tolist()))}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from utils.config import run_main

    run_main(main)
