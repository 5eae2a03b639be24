"""Segment new scans with a trained checkpoint: volumes (NIfTI, .nrrd, .mha; slice by slice) or 2-D images in,
masks out (README, Segment new scans).

    python code/predict.py --checkpoint model/ACDC/DiffRect_3_labeled/unet/unet_best_model.pth \
        --input ~/scans --output ~/masks                    # a folder, or one file
    python code/predict.py ... --tta --save_probabilities --gpu -1

The checkpoint alone says which network, patch size, classes and intensity normalisation to use, so no dataset
folder is needed. Each input gets a mask of the same name and format (a JPEG's or BMP's as PNG) holding class ids
0..C-1: a volume's with the input's spacing, origin and direction, a picture's with its size (palette PNG, the
class colours of the training figures). Every slice goes through the same path as evaluation (resize to the
patch, network, probabilities resampled back to the native size, argmax). --tta averages the probabilities of
the four flips of each slice; --save_probabilities writes <name>_probabilities.npz (float32 (C, D, H, W), the
class names). All inputs are read and checked before anything is written: a bad one stops with one line naming
it, and every file written is complete (temporary name, checked, then renamed; a failed write, e.g. onto a full
disk, is one line and leaves the previous file).
"""
import argparse
import os

import numpy as np

from dataloaders.dataset import DataError
from dataloaders.image_io import IMAGE_ENDINGS, VOLUME_ENDINGS, file_ending, output_name, read_image, strip_ending, \
    write_like
from dataloaders.intensity import normalize
from networks.semantic_coloring import palette as class_palette
from utils.config import HelpFormatter, UsageError, run_main, select_device
from utils.evaluation import load_segmenter, predict_volume
from utils.progress import progress
from utils.safe_write import write_file


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a *_best_model.pth or *_final_model.pth of training")
    p.add_argument("--input", required=True, help="an image file, or a folder of them (not searched recursively)")
    p.add_argument("--output", required=True, help="folder for the masks (created)")
    p.add_argument("--tta", action="store_true", help="average the probabilities of the 4 flips of each slice")
    p.add_argument("--save_probabilities", action="store_true", help="also write <name>_probabilities.npz")
    p.add_argument("--channel", type=int, default=None, help="the channel of 4-D / multi-channel inputs; of a "
                   "colour picture: 0 R, 1 G, 2 B (default: the checkpoint's, from prepare_data.py folder "
                   "--channel; else grey by luminance)")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index; -1 or no CUDA: CPU")
    p.add_argument("--batch_size", type=int, default=16, help="slices per forward pass")
    args = p.parse_args(argv)
    if args.batch_size <= 0:
        raise UsageError(f"--batch_size {args.batch_size} must be positive")
    return args


def list_inputs(path, with_probabilities=False):
    if os.path.isfile(path):
        if file_ending(path) is None:
            raise DataError(f"--input {path}: unknown file type; use one of "
                            f"{', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)}")
        return [path]
    if not os.path.isdir(path):
        raise UsageError(f"--input {path}: no such file or folder")
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if file_ending(n) and not n.startswith(".")]
    if not files:
        raise DataError(f"--input {path}: no image files ({', '.join(VOLUME_ENDINGS + IMAGE_ENDINGS)})")
    names = [output_name(f).lower() for f in files] + \
        [strip_ending(f).lower() + "_probabilities.npz" for f in files if with_probabilities]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash:
        raise DataError(f"--input {path}: two inputs would both write {clash}; rename one")
    return files


def write_probabilities(path, probs, class_names):
    write_file(path, lambda tmp: np.savez_compressed(tmp, probabilities=probs, class_names=np.array(class_names)),
               where="--output")


def main(argv=None):
    args = parse_args(argv)
    files = list_inputs(args.input, args.save_probabilities)
    device = select_device(args.gpu)
    model, ckpt = load_segmenter(args.checkpoint, device)
    normalization = ckpt.get("normalization", {"scheme": "minmax"})  # checkpoints before it was kept: minmax
    from_checkpoint = args.channel is None and ckpt.get("channel") is not None
    if args.channel is None:  # the channel the training images were read from (prepare_data.py folder --channel)
        args.channel = ckpt.get("channel")
    class_names = ckpt.get("class_names") or [str(c) for c in range(ckpt["arch"]["num_classes"])]
    def same(out, f):  # also where the file system ignores case (SCAN.NII.GZ -> SCAN.nii.gz)
        return os.path.abspath(out) == os.path.abspath(f) or (os.path.exists(out) and os.path.samefile(out, f))

    clash = [f for f in files if same(os.path.join(args.output, output_name(f)), f)]
    if clash:
        raise UsageError(f"--output {args.output}: the mask of {clash[0]} would overwrite it; choose another folder")
    for f in progress(files, "checking inputs", disable=len(files) < 2):
        try:
            read_image(f, args.channel)  # every input is readable and of a usable shape before anything is written
        except DataError as e:
            if not (from_checkpoint and f"--channel {args.channel} does not exist" in str(e)):
                raise
            raise DataError(f"{e}; that channel is the checkpoint's, not a flag you gave (its training data was "
                            f"prepared with --channel {args.channel}): give --channel 0 to read a grey picture "
                            f"or a one-channel volume, or --channel K to choose another") from None
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--output {args.output}: cannot be created ({e.strerror})") from None
    colours = np.round(class_palette(len(class_names)).numpy() * 255).astype(np.uint8).ravel().tolist()
    written = []
    for f in progress(files, "predicting"):
        raw, geometry = read_image(f, args.channel)  # (D, H, W)
        image = normalize(raw, normalization)
        result = predict_volume(model, image, ckpt["patch_size"], device, args.batch_size, args.tta,
                                with_probabilities=args.save_probabilities)
        pred, probs = result if args.save_probabilities else (result, None)
        out = os.path.join(args.output, output_name(f))
        write_like(out, pred, geometry, palette=None if geometry.volume_file else colours, where="--output")
        if args.save_probabilities:
            write_probabilities(os.path.join(args.output, strip_ending(f) + "_probabilities.npz"), probs, class_names)
        written.append(out)
    print(f"wrote {len(written)} masks to {os.path.abspath(args.output)} ({', '.join(class_names)}; checkpoint "
          f"{args.checkpoint}, iteration {ckpt['iteration']}{', flip TTA' if args.tta else ''})")
    return written


if __name__ == "__main__":
    run_main(main)
