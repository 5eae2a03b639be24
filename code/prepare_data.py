"""Prepare a dataset into the SSL4MIS layout that training and test_ACDC.py read (docs/datasets.md; README,
Train on your own data).

The paper's datasets, from their official downloads (NIfTI):
    python code/prepare_data.py acdc --input ~/ACDC/database --split_lists ~/SSL4MIS/data/ACDC   # SSL4MIS split
    python code/prepare_data.py acdc --input ~/ACDC/database                 # seeded 70/10/20 patient split
    python code/prepare_data.py mscmr --input ~/MSCMRSeg19                    # -> data/MSCMR/split1, split2
    python code/prepare_data.py prostate --input ~/Task05_Prostate            # -> data/Prostate/split1, split2
Your own data:
    python code/prepare_data.py nnunet --input ~/nnUNet_raw/Dataset042_Heart --output data/Heart
    python code/prepare_data.py folder --images ~/scans --masks ~/masks --output data/Lesions --classes BG lesion

Official datasets: each volume is min-max normalised to [0, 1] as a whole and cut into 1-based slice files for
the training patients; labels are remapped to contiguous ids (MS-CMRSEG19: 600 RV -> 1, 200 Myo -> 2, 500 LV ->
3); the spacing (mm, per array axis) is kept as an h5 attribute (`test_ACDC.py --use_spacing`). Splits: ACDC from
SSL4MIS list files (--split_lists) or a seeded 70/10/20 split of the patients; MS-CMRSEG19 and Task05 get two
seeded train/val splits (seeds --seed and --seed + 1, --val_fraction to val), each a complete folder.
Own data: one channel (--channel K picks it), intensities normalised as --normalize says (default: min-max per
case; the dataset-wide CT window for a channel named CT), native in-plane size kept, spacing, origin and direction
kept as attributes; cases without a mask are unlabeled training data (their slice files have no 'label'); the
labeled cases are split by case into train / val (/ test), seeded, and listed first in train_slices.list, so
--labelnum N takes the first N labeled cases.
A `dataset.json` describes classes, the labeled-slice table and the normalisation, so training and testing need
only `--root_path`. The output is built in a temporary sibling and renamed at the end.
"""
import argparse
import json
import os
from collections import OrderedDict

import numpy as np

from dataloaders.dataset import DataError
from dataloaders.datasets import DATASETS
from dataloaders.layout import atomic_folder, check_output, read_ids, write_h5, write_list
from dataloaders.intensity import SCHEMES, ct_window, default_scheme, foreground_sample
from dataloaders.official_sources import CLASS_NAMES, FINDERS, load_case
from dataloaders.own_data import Volume, find_folder, find_nnunet, load_own_case, read_nnunet_description, to_volume
from utils.config import PROJECT_ROOT, SEED, HelpFormatter, UsageError
from utils.safe_write import write_text
from utils.progress import progress

OUTPUT_NAMES = {"acdc": "ACDC", "mscmr": "MSCMR", "prostate": "Prostate"}
OWN_FORMATS = ("nnunet", "folder")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="dataset", required=True, metavar="{acdc,mscmr,prostate,nnunet,folder}")
    for name in sorted(FINDERS):
        q = sub.add_parser(name, help=f"the official {name} download", formatter_class=HelpFormatter)
        q.add_argument("--input", required=True, help="the official download's folder")
        q.add_argument("--output", default=None, help="default: data/ACDC, data/MSCMR or data/Prostate")
        q.add_argument("--split_lists", default=None, help="ACDC: folder with SSL4MIS val.list, test.list and "
                       "train.list or train_slices.list")
        q.add_argument("--val_fraction", type=float, default=0.2, help="MS-CMRSEG19 / Task05: patients to val")
    for name, what in (("nnunet", "an nnU-Net raw dataset (dataset.json, imagesTr/, labelsTr/)"),
                       ("folder", "a folder of images and a folder of masks with matching names")):
        q = sub.add_parser(name, help=what, formatter_class=HelpFormatter)
        if name == "nnunet":
            q.add_argument("--input", required=True, help="the dataset folder (holds dataset.json)")
            q.add_argument("--channel", type=int, default=None, help="the input channel to use (files _000K); "
                           "needed when dataset.json lists several")
        else:
            q.add_argument("--images", required=True, help="folder of images (PNG, JPEG, TIFF; or NIfTI volumes)")
            q.add_argument("--masks", default=None, help="folder of masks named as their images (any ending); "
                           "an image without one is unlabeled")
            q.add_argument("--classes", nargs="+", default=None, metavar="NAME[=VALUE]",
                           help="class names in id order, background first; NAME=V maps the grey value V, NAME=R,G,B "
                           "a colour, to that class (default: the mask values are the ids, names BG, class1, ...)")
            q.add_argument("--channel", type=int, default=None, help="the channel of 4-D NIfTI images; of colour "
                           "pictures: 0 R, 1 G, 2 B (default: grey by luminance)")
        q.add_argument("--output", required=True, help="the prepared folder to write")
        q.add_argument("--name", default=None, help="the dataset's name in dataset.json (default: the output's)")
        q.add_argument("--normalize", choices=SCHEMES, default=None, help="intensities -> [0, 1] (default: ct for a "
                       "channel named CT, else minmax; see dataloaders/intensity.py)")
        q.add_argument("--val_fraction", type=float, default=0.2, help="labeled cases to val")
        q.add_argument("--test_fraction", type=float, default=0.0, help="labeled cases to test")
        q.add_argument("--split_lists", default=None, help="folder with val.list (and test.list, train.list) of "
                       "case names, instead of the seeded split")
    for q in sub.choices.values():
        q.add_argument("--seed", type=SEED, default=0, help="seed of the case / patient splits")
        q.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = p.parse_args(argv)
    own = args.dataset in OWN_FORMATS
    if not own:
        args.output = args.output or os.path.join(PROJECT_ROOT, "data", OUTPUT_NAMES[args.dataset])
    source = args.images if args.dataset == "folder" else args.input
    if not os.path.isdir(source):
        raise UsageError(f"--{'images' if args.dataset == 'folder' else 'input'} {source}: folder not found")
    if args.split_lists and (not os.path.isdir(args.split_lists) or args.dataset in ("mscmr", "prostate")):
        raise UsageError(f"--split_lists {args.split_lists}: must be an existing folder (not for mscmr / prostate)")
    if not 0 < args.val_fraction < 1:
        raise UsageError(f"--val_fraction {args.val_fraction} must be in (0, 1)")
    if own and not (0 <= args.test_fraction < 1 and args.val_fraction + args.test_fraction < 1):
        raise UsageError(f"--test_fraction {args.test_fraction}: must be in [0, 1) and leave cases for training "
                         f"beside --val_fraction {args.val_fraction}")
    return args


def seeded_split(patients, fractions, seed):
    """Shuffle the patients with `seed`, cut by `fractions` (dict name -> fraction; the first takes the rest)."""
    order = list(np.random.default_rng(seed).permutation(len(patients)))
    names = list(fractions)
    counts = {n: int(round(fractions[n] * len(patients))) for n in names[1:]}
    counts[names[0]] = len(patients) - sum(counts.values())
    if min(counts.values()) < 1:
        raise DataError(f"{len(patients)} patients (cases) are too few for the split {fractions}; lower "
                        f"--val_fraction / --test_fraction or add cases")
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
    if slices is not None:
        check_slice_list(os.path.join(folder, "train_slices.list"), slices, volumes, set(split["val"] + split["test"]))
    split["train"] = read_ids(os.path.join(folder, "train.list")) or \
        list(OrderedDict.fromkeys(s.rsplit("_slice_", 1)[0] for s in slices or []))
    if not split["train"]:
        raise UsageError(f"--split_lists {folder}: needs train.list or train_slices.list")
    for s, ids in split.items():
        missing = [v for v in ids if v not in volumes]
        if missing:
            raise DataError(f"{os.path.join(folder, s + '.list')}: names {missing[0]}{_more(missing)} that the "
                            f"download (--input) lacks; correct the list or complete the download")
    return split, slices


def _more(items):
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def check_slice_list(path, slices, volumes, held_out):
    """Every line of an SSL4MIS train_slices.list is <volume>_slice_<k>, k a slice of a downloaded volume that is
    not in val / test, and listed once; checked before anything is written, so a bad line is named (not a KeyError
    deep in the writing) and no slice of an evaluation volume is trained on."""
    seen = set()
    for sid in slices:
        v, sep, k = sid.rpartition("_slice_")
        if not (sep and v and k.isascii() and k.isdigit()):
            raise DataError(f"{path}: line {sid!r} is not <volume>_slice_<k> (e.g. patient001_frame01_slice_1); "
                            f"correct or remove it")
        if v not in volumes:
            raise DataError(f"{path}: line {sid!r} is a slice of {v}, which the download (--input) lacks; correct "
                            f"or remove it")
        depth = volumes[v].image.shape[0]
        if not 1 <= int(k) <= depth:
            raise DataError(f"{path}: line {sid!r} is beyond the {depth} slices of {v} (1..{depth}); correct or "
                            f"remove it")
        if v in held_out:
            raise DataError(f"{path}: line {sid!r} is a slice of {v}, which val.list / test.list hold out (a "
                            f"train/eval leak); remove it or the volume from the held-out list")
        if sid in seen:
            raise DataError(f"{path}: line {sid!r} is listed twice; keep one")
        seen.add(sid)


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


def write_dataset(out, desc, split, slice_order, volumes):
    """One SSL4MIS folder: data/<volume>.h5 for every volume, data/slices/ for the train volumes, lists, and
    dataset.json (`desc`). volumes: name -> Volume; a Volume without a label gives label-less (unlabeled) files."""
    os.makedirs(os.path.join(out, "data", "slices"))
    for s, vols in split.items():
        for v in vols:
            vol = volumes[v]
            write_h5(os.path.join(out, "data", f"{v}.h5"), vol.image, vol.label, vol.spacing, vol.attrs, "--output")
    slices = slice_order or [f"{v}_slice_{k + 1}" for v in split["train"] for k in range(volumes[v].image.shape[0])]
    for sid in slices:
        v, k = sid.rsplit("_slice_", 1)
        vol = volumes[v]
        if not 1 <= int(k) <= vol.image.shape[0]:
            raise DataError(f"train_slices.list: {sid} is beyond the {vol.image.shape[0]} slices of {v}")
        write_slice(out, sid, vol, int(k) - 1)
    write_index(out, desc, split, slices)
    return len(slices)


def write_index(out, desc, split, slices):
    """The folder's lists (<split>.list, train_slices.list) and its dataset.json."""
    for s, names in split.items():
        write_list(os.path.join(out, f"{s}.list"), names, "--output")
    write_list(os.path.join(out, "train_slices.list"), slices, "--output")
    write_text(os.path.join(out, "dataset.json"), lambda f: json.dump(desc, f, indent=2), "--output")


def write_slice(out, sid, vol, z):
    """data/slices/<sid>.h5: slice z of a Volume (no 'label' when the volume has none: an unlabeled slice)."""
    write_h5(os.path.join(out, "data", "slices", f"{sid}.h5"), vol.image[z],
             None if vol.label is None else vol.label[z], vol.spacing[1:], where="--output")


def description(name, class_names, table, normalization=None, **extra):
    desc = {"name": name, "num_classes": len(class_names), "class_names": list(class_names),
            "patients_to_slices": {str(k): v for k, v in table.items()}}
    return desc | ({"normalization": normalization} if normalization else {}) | extra


def parse_classes(items):
    """--classes BG lesion | BG=0 lesion=255 | BG=0,0,0 lesion=255,0,0 -> (names, colour table or None)."""
    names, colours = [], []
    for item in items:
        name, _, value = item.partition("=")
        names.append(name)
        if value:
            try:
                colours.append([int(v) for v in value.split(",")])
            except ValueError:
                raise UsageError(f"--classes {item}: the value must be a grey level (0-255) or R,G,B") from None
    if colours and len(colours) != len(names):
        raise UsageError("--classes: give every class a value (NAME=V) or none of them")
    if colours and (len({len(c) for c in colours}) != 1 or len(colours[0]) not in (1, 3)):
        raise UsageError("--classes: the values must all be grey levels or all R,G,B colours")
    if len(names) < 2:
        raise UsageError("--classes: name the background and at least one class")
    return names, (colours or None)


def own_split_from_lists(folder, labeled):
    """val.list (and test.list, train.list) of case names -> {split: [cases]}; train defaults to the other
    labeled cases."""
    split = {}
    for s in ("val", "test", "train"):
        ids = read_ids(os.path.join(folder, f"{s}.list"))
        if ids is not None:
            split[s] = ids
    if "val" not in split:
        raise UsageError(f"--split_lists {folder}: val.list not found")
    for s, ids in split.items():
        missing = [c for c in ids if c not in labeled]
        if missing:
            raise DataError(f"{s}.list names {missing[0]!r}{_more(missing)}, which is not a labeled case of the "
                            f"input")
    held = set(split["val"]) | set(split.get("test", []))
    both = sorted(set(split.get("train", [])) & held) + sorted(set(split["val"]) & set(split.get("test", [])))
    if both:
        raise DataError(f"--split_lists {folder}: {both[0]!r} is in two of train/val/test.list; a case belongs to one")
    split.setdefault("train", [c for c in labeled if c not in held])
    return {s: split[s] for s in ("train", "val", "test") if s in split}


def prepare_own(args):
    """nnunet / folder -> an SSL4MIS folder whose labeled train cases come first in train_slices.list."""
    try:
        check_output(args.output, args.overwrite)  # before the slow reading
    except ValueError as e:
        raise UsageError(f"--output {e}")
    if args.dataset == "nnunet":
        names, values, ending, channel, channel_name = read_nnunet_description(args.input, args.channel)
        cases, colours = find_nnunet(args.input, ending, channel), None
        source = {"format": "nnunet", "input": os.path.abspath(args.input), "channel": channel,
                  "channel_name": channel_name}
    else:
        names, colours = parse_classes(args.classes) if args.classes else (None, None)
        cases, values, channel_name = find_folder(args.images, args.masks, args.channel), None, ""
        source = {"format": "folder", "images": os.path.abspath(args.images),
                  "masks": args.masks and os.path.abspath(args.masks), "channel": args.channel}
    labeled = [c.name for c in cases if c.label_path]
    unlabeled = [c.name for c in cases if not c.label_path]
    if not labeled:
        where = f"--masks {args.masks}" if args.dataset == "folder" else os.path.join(args.input, "labelsTr")
        raise DataError(f"{where}: no case has a mask; at least the labeled cases for training and validation need "
                        f"one")
    if args.split_lists:
        split = own_split_from_lists(args.split_lists, labeled)
    else:
        fractions = {"train": 1 - args.val_fraction - args.test_fraction, "val": args.val_fraction} | \
            ({"test": args.test_fraction} if args.test_fraction > 0 else {})
        split = seeded_split(labeled, fractions, args.seed)
    train_labeled = split["train"]
    split["train"] = train_labeled + unlabeled  # labeled first: --labelnum N takes the first N of them
    if names is not None and not 2 <= len(names) <= 255:  # before the slow reading (labels are uint8 class ids)
        where = "--classes" if args.dataset == "folder" else os.path.join(args.input, "dataset.json") + " labels"
        raise UsageError(f"{where}: {len(names)} classes; a dataset has 2 to 255, background included")
    scheme = args.normalize or default_scheme(channel_name)
    # pass 1: read and check every case, keeping only its depth, top label and (ct) a sample of its foreground,
    # so that a large CT dataset never sits in memory whole
    depths, tops, samples, present = {}, {}, [], set()
    for i, c in enumerate(progress(cases, f"checking {args.dataset}")):
        raw, label, _ = load_own_case(c, values, colours)
        depths[c.name] = raw.shape[0]
        if label is not None:
            tops[c.name] = int(label.max())
            present |= set(np.unique(label).tolist())
        if scheme == "ct" and c.name in train_labeled:
            samples.append(foreground_sample(raw, label, np.random.default_rng([args.seed, i])))
    top = max(tops.values())
    if names is None and present != set(range(top + 1)):  # e.g. 0/255 masks: 256 classes would be wrong
        raise DataError(f"--masks {args.masks}: the mask values {sorted(present)[:6]} are not the class ids 0..C-1; "
                        f"name each value with --classes (e.g. BG=0 lesion={top})")
    if names is None:  # folder without --classes: the mask values are the ids
        names = ["BG"] + [f"class{k}" for k in range(1, max(top, 1) + 1)]
    if top >= len(names):
        worst = next(c for c, t in tops.items() if t == top)
        raise DataError(f"case {worst}: mask value {top} but only {len(names)} classes ({', '.join(names)}); "
                        f"name every class with --classes, or map values to classes (e.g. BG=0 lesion={top})")
    normalization = {"scheme": scheme}
    if scheme == "ct":
        try:
            normalization["window"] = ct_window(samples)
        except ValueError as e:
            raise DataError(f"--normalize ct: {e}; choose --normalize minmax or percentile") from None
    table = labeled_table(train_labeled, depths, {c: c for c in train_labeled})
    desc = description(args.name or os.path.basename(os.path.abspath(args.output)), names, table, normalization,
                       source=source, cases={"labeled_train": len(train_labeled), "unlabeled": len(unlabeled)} |
                       {s: len(v) for s, v in split.items() if s != "train"})
    train = set(split["train"])
    # pass 2: one case at a time, normalised and written (volume file, and slice files for the training cases)
    with atomic_folder(args.output, args.overwrite, "--output") as tmp:
        os.makedirs(os.path.join(tmp, "data", "slices"))
        for c in progress(cases, "writing"):
            vol = to_volume(*load_own_case(c, values, colours), normalization)
            write_h5(os.path.join(tmp, "data", f"{c.name}.h5"), vol.image, vol.label, vol.spacing, vol.attrs,
                     "--output")
            for z in range(vol.image.shape[0]) if c.name in train else ():
                write_slice(str(tmp), f"{c.name}_slice_{z + 1}", vol, z)
        slices = [f"{v}_slice_{k + 1}" for v in split["train"] for k in range(depths[v])]
        write_index(str(tmp), desc, split, slices)
    n_slices = len(slices)
    summary = {"output": os.path.abspath(args.output), "cases": len(cases), "labeled": len(labeled),
               "unlabeled": len(unlabeled), "split": {s: len(v) for s, v in split.items()}, "train_slices": n_slices,
               "labelnum_choices": sorted(table), "normalization": normalization, "class_names": names}
    print(json.dumps(summary, indent=2))
    return summary


def main(argv=None):
    args = parse_args(argv)
    if args.dataset in OWN_FORMATS:
        return prepare_own(args)
    try:
        check_output(args.output, args.overwrite)  # before the slow reading
    except ValueError as e:
        raise UsageError(f"--output {e}")
    cases = FINDERS[args.dataset](args.input)
    if not cases:
        raise DataError(f"--input {args.input}: no {args.dataset} cases found in the official folder structure "
                        f"(see the header of code/prepare_data.py)")
    arrays = {c.volume: Volume(*load_case(c, args.dataset), {})
              for c in progress(cases, f"reading {args.dataset}")}
    patient_of = {c.volume: c.patient for c in cases}
    patients = sorted(set(patient_of.values()))
    depths = {v: a.image.shape[0] for v, a in arrays.items()}

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
    with atomic_folder(args.output, args.overwrite, "--output") as tmp:
        n_slices = {rel: write_dataset(os.path.join(tmp, rel), description(name, CLASS_NAMES[args.dataset], table),
                                       split, slices, arrays)
                    for rel, (name, split, slices, table) in progress(folders.items(), "writing")}
    counts = np.zeros(len(CLASS_NAMES[args.dataset]), dtype=np.int64)
    for vol in arrays.values():
        counts += np.bincount(vol.label.ravel(), minlength=len(counts))
    summary = {"output": os.path.abspath(args.output), "cases": len(cases), "patients": len(patients),
               "folders": {rel: {s: len(v) for s, v in spec[1].items()} | {"train_slices": n_slices[rel]}
                           for rel, spec in folders.items()},
               "class_voxels": dict(zip(CLASS_NAMES[args.dataset], counts.tolist()))}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from utils.config import run_main

    run_main(main)
