"""Validate a prepared dataset folder (SSL4MIS layout, docs/datasets.md) and print every problem, case by case.

    python code/check_data.py --root_path data/ACDC

Checks: the dataset description, lists vs files, each file readable with 'image' and 'label' of equal 2-D
(slices) or 3-D (volumes) shape, numeric image in [0, 1] without NaN, integer labels in [0, num_classes),
no duplicate ids, no val/test volume that also gives training slices, and every labeled-slice table entry
covered by train_slices.list. A training slice without 'label' is unlabeled data: fine, unless a table entry's
labeled set (the first N slices) includes it. Exit code 0 when all is well, 1 when anything is wrong.
"""
import argparse
import os
import sys
from collections import Counter


from dataloaders.dataset import DataError, read_case
from dataloaders.datasets import load_dataset_info
from dataloaders.layout import read_ids
from utils.errors import UsageError



def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root_path", required=True)
    p.add_argument("--dataset", default=None, help="dataset table when the folder has no dataset.json")
    p.add_argument("--num_classes", type=int, default=None, help="default: from the dataset description")
    args = p.parse_args(argv)
    if args.num_classes is not None and args.num_classes < 2:
        raise UsageError(f"--num_classes {args.num_classes}: must be at least 2 (background and one class); leave "
                         f"it out to take the dataset description's")
    return args


def check_file(path, num_classes, ndim, need_label=True):
    """-> (list of problems of one h5 file (empty when it is fine), whether it has a label)."""
    if not os.path.isfile(path):
        return ["file not found"], False
    try:
        _, label, _ = read_case(path, num_classes, ndim, need_label)  # every check, the [0, 1] range included
    except DataError as e:
        return [str(e).replace(f"{path}: ", "")], False
    return [], label is not None


def check_dataset(root, dataset=None, num_classes=None):
    """-> (problems: list of (where, message), stats dict)."""
    problems, stats = [], {"slices": 0, "volumes": 0}
    try:
        info = load_dataset_info(root, dataset)
    except DataError as e:
        return [("dataset description", str(e))], stats
    c = num_classes or info.num_classes
    lists = {}
    for name in ("train_slices", "val", "test"):
        ids = read_ids(os.path.join(root, f"{name}.list"))
        if ids is None:
            if name != "test":  # a folder may hold back its test split (so that nobody tunes on it)
                problems.append((f"{name}.list", "not found"))
            continue
        lists[name] = ids
        if not lists[name]:
            problems.append((f"{name}.list", "empty"))
        for ident, n in Counter(lists[name]).items():
            if n > 1:
                problems.append((f"{name}.list", f"{ident} listed {n} times"))
    unlabeled = []  # positions in train_slices.list of slices without a label
    for k, sid in enumerate(lists.get("train_slices", [])):
        msgs, has_label = check_file(os.path.join(root, "data", "slices", f"{sid}.h5"), c, 2, need_label=False)
        for msg in msgs:
            problems.append((f"slice {sid}", msg))
        if not msgs and not has_label:
            unlabeled.append(k)
        stats["slices"] += 1
    stats["unlabeled_slices"] = len(unlabeled)
    for labelnum, n in sorted(info.patients_to_slices.items()):
        inside = [k for k in unlabeled if k < n]
        if inside:
            problems.append(("dataset table", f"--labelnum {labelnum}'s labeled set (the first {n} slices) includes "
                             f"{len(inside)} slice(s) without a label, first {lists['train_slices'][inside[0]]}"))
    for split in ("val", "test"):
        for vid in lists.get(split, []):
            for msg in check_file(os.path.join(root, "data", f"{vid}.h5"), c, 3)[0]:
                problems.append((f"{split} volume {vid}", msg))
            stats["volumes"] += 1
    train_volumes = {s.rsplit("_slice_", 1)[0] for s in lists.get("train_slices", [])}
    for split in ("val", "test"):
        for vid in sorted(train_volumes & set(lists.get(split, []))):
            problems.append((f"{split} volume {vid}", "also gives training slices (a train/eval leak)"))
    n_train = len(lists.get("train_slices", []))
    for labelnum, n in sorted(info.patients_to_slices.items()):
        if n > n_train:
            problems.append(("dataset table", f"--labelnum {labelnum} needs {n} labeled slices but "
                             f"train_slices.list has {n_train}"))
    stats.update(dataset=info.name, num_classes=c, lists={k: len(v) for k, v in lists.items()})
    return problems, stats


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.root_path):
        print(f"error: --root_path {args.root_path}: folder not found", file=sys.stderr)
        return 1
    problems, stats = check_dataset(args.root_path, args.dataset, args.num_classes)
    for where, msg in problems:
        print(f"{where}: {msg}")
    verdict = "OK" if not problems else f"{len(problems)} problem(s)"
    print(f"{args.root_path}: {stats.get('dataset', '?')}, {stats['slices']} train slices "
          f"({stats.get('unlabeled_slices', 0)} without label), {stats['volumes']} eval volumes checked: {verdict}")
    return 0 if not problems else 1


if __name__ == "__main__":
    from utils.config import run_main

    sys.exit(run_main(main))
