"""Evaluate a trained segmentation checkpoint on val and/or test volumes (docs/method.md, Evaluation).

Prints a per-class + mean table (Dice, Jaccard, HD95, ASD), writes `{split}_per_case.csv` and
`{split}_summary.json` next to the checkpoint, and on request NIfTI predictions and PNG overlays.
By default it finds the checkpoint that training wrote for the same --exp / --labelnum / --model.
"""
import argparse
import csv
import glob
import json
import os

import numpy as np

from dataloaders.dataset import VolumeDataset, read_geometry
from dataloaders.image_io import geometry_from_attrs, write_like
from dataloaders.datasets import load_dataset_info
from utils.checkpoint import atomic_write_text
from utils.config import DEFAULT_DATA, PROJECT_ROOT, HelpFormatter, UsageError, add_channels_last_flag, \
    memory_format, run_main, select_device
from utils.evaluation import evaluate, load_segmenter
from utils.metrics import METRIC_KEYS, format_table
from utils.visualize import overlay_figure


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--root_path", default=DEFAULT_DATA, help="prepared dataset folder (SSL4MIS layout)")
    p.add_argument("--dataset", default=None, help="dataset table when the folder has no dataset.json")
    p.add_argument("--exp", default="ACDC/DiffRect", help="with --labelnum and --model: finds the checkpoint")
    p.add_argument("--labelnum", type=int, default=3, help="labeled patients the checkpoint was trained with")
    p.add_argument("--model", default="unet", help="network name in the checkpoint's folder")
    p.add_argument("--checkpoint", default=None, help="a *_best_model.pth or *_final_model.pth; none given: "
                   "model/{exp}_{labelnum}_labeled/{model}/{model}_best_model.pth")
    p.add_argument("--split", default="test", choices=["val", "test", "valtest"], help="the volumes to score")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index; -1 or no CUDA: CPU")
    p.add_argument("--batch_size", type=int, default=16, help="slices per forward pass")
    add_channels_last_flag(p, default=-1)
    p.add_argument("--use_spacing", action="store_true", help="HD95/ASD in mm from the h5 'spacing' attribute")
    p.add_argument("--save_nifti", action="store_true", help="write image/prediction/label .nii.gz per case, in "
                   "the source scan's geometry")
    p.add_argument("--overlays", type=int, default=0, help="write PNG overlays of this many cases")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        raise UsageError(f"--batch_size {args.batch_size} must be positive")
    if args.overlays < 0:
        raise UsageError(f"--overlays {args.overlays} must be 0 or more")
    return args


def write_overlays(out_dir, name, image, label, pred, class_names, n_slices=3):
    """One PNG per case: image | ground truth | prediction for the slices with the most labeled pixels."""
    order = np.argsort(-(label > 0).reshape(len(label), -1).sum(1))[:n_slices]
    slices = sorted(int(z) for z in order)
    overlay_figure(os.path.join(out_dir, f"{name}.png"), name, image, label, pred, class_names, slices,
                   {z: slice_dice(pred[z], label[z], len(class_names)) for z in slices})


def slice_dice(pred, label, num_classes):
    """Mean Dice (%) over the foreground classes present in the slice's prediction or ground truth."""
    scores = [200.0 * np.sum((pred == c) & (label == c)) / (np.sum(pred == c) + np.sum(label == c))
              for c in range(1, num_classes) if np.any(pred == c) or np.any(label == c)]
    return float(np.mean(scores)) if scores else 100.0


def write_nifti(out_dir, name, image, label, pred, geometry_attrs, normalization):
    """{name}_img / _pred / _gt.nii.gz placed as the source scan (spacing, origin, direction from the h5
    attributes that prepare_data.py keeps), so a viewer lays them over it; the image in the source's own
    intensities when a min-max normalisation can be undone (its intensity_range is known), else as trained on."""
    geometry = geometry_from_attrs(geometry_attrs, len(image))
    lo_hi = geometry_attrs.get("intensity_range")
    if lo_hi and normalization.get("scheme", "minmax") == "minmax":
        image = image * (lo_hi[1] - lo_hi[0]) + lo_hi[0]
    for arr, suffix in ((image.astype(np.float32), "img"), (pred.astype(np.uint8), "pred"),
                        (label.astype(np.uint8), "gt")):
        write_like(os.path.join(out_dir, f"{name}_{suffix}.nii.gz"), arr, geometry)


def main(argv=None):
    args = parse_args(argv)
    path = args.checkpoint or os.path.join(PROJECT_ROOT, "model", f"{args.exp}_{args.labelnum}_labeled", args.model,
                                           f"{args.model}_best_model.pth")
    if not os.path.isdir(args.root_path):
        raise UsageError(f"--root_path {args.root_path}: folder not found")
    info = load_dataset_info(args.root_path, args.dataset)
    device = select_device(args.gpu)
    model, ckpt = load_segmenter(path, device, memory_format(args.channels_last, device),
                                 (args.root_path, info.num_classes))
    prefix = "final_" if ckpt["kind"] == "final" else ""  # the last network's tables sit beside the best one's
    volumes = VolumeDataset(args.root_path, args.split, info.num_classes)
    if args.use_spacing:
        for i in range(len(volumes)):
            if volumes[i][3] is None:  # (a spacing that is there is 3 positive numbers: the reader checks it)
                raise UsageError(f"--use_spacing: {volumes.paths[i]} has no 'spacing' attribute, so distances would be "
                                 f"in voxels; drop --use_spacing or re-prepare the data with its spacing")
    summary, cases = evaluate(model, volumes, ckpt["patch_size"], device, info.num_classes, info.class_names,
                              args.batch_size, args.use_spacing, keep_predictions=args.save_nifti or args.overlays > 0,
                              progress_desc=f"scoring {args.split}")

    out = os.path.dirname(os.path.abspath(path))
    print(f"{args.split}: {len(cases)} cases, checkpoint {path} (iteration {ckpt['iteration']})")
    print(format_table(summary, "mm" if args.use_spacing else "voxels"))
    rows = [["case", "class", *METRIC_KEYS, "empty_case"]] + [
        [c["name"], m["class"], *(f"{m[k]:.6f}" for k in METRIC_KEYS), m["case"]] for c in cases for m in c["metrics"]]
    atomic_write_text(os.path.join(out, f"{prefix}{args.split}_per_case.csv"), lambda f: csv.writer(f).writerows(rows))
    atomic_write_text(os.path.join(out, f"{prefix}{args.split}_summary.json"), lambda f: json.dump(
        {"checkpoint": path, "split": args.split, "iteration": ckpt["iteration"],
         "root_path": os.path.abspath(args.root_path), "units": "mm" if args.use_spacing else "voxels", **summary},
        f, indent=2))
    overlay_dir = os.path.join(out, f"{prefix}overlays_{args.split}")
    if args.overlays and os.path.isdir(overlay_dir):  # this run's overlays only, not a mix with an older run's
        for f in glob.glob(os.path.join(overlay_dir, "*.png")):
            os.remove(f)
    for i, c in enumerate(cases):
        if args.save_nifti or i < args.overlays:
            _, image, label, _ = volumes[i]
            if args.save_nifti:
                write_nifti(os.path.join(out, f"{prefix}predictions_{args.split}"), c["name"], image, label,
                            c["prediction"], read_geometry(volumes.paths[i]), info.normalization)
            if i < args.overlays:  # (the writes make their folders)
                write_overlays(overlay_dir, c["name"], image, label, c["prediction"], info.class_names)
    print(f"wrote {prefix}{args.split}_per_case.csv and {prefix}{args.split}_summary.json to {out}")
    return summary


if __name__ == "__main__":
    run_main(main)
