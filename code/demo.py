"""The quick-start demo: synthetic cardiac phantoms -> DiffRect training -> test table and overlays, on a CPU.

Generates the synthetic dataset if it is missing (data/synthetic_ACDC), trains DiffRect with 3 labeled
patients at a small patch size, evaluates the best checkpoint on the synthetic test volumes, prints the table
and writes PNG overlays next to the checkpoint. About 6 minutes on 2 CPU cores.
"""
import argparse
import os

import test_ACDC
import train_diffrect_ACDC
from dataloaders.synthetic import generate_dataset
from utils.config import PROJECT_ROOT, UsageError, run_main


def needs_dataset(root):
    """True when the synthetic dataset is to be generated at --root_path (a new or empty folder), False when it
    holds a prepared dataset; anything else is refused here, before a generator's advice names a flag the demo
    does not have (--overwrite)."""
    if os.path.isfile(os.path.join(root, "train_slices.list")):
        return False
    if not os.path.exists(root) or os.path.isdir(root) and not os.listdir(root):
        return True
    what = "a file" if not os.path.isdir(root) else "a folder with files but no train_slices.list"
    raise UsageError(f"--root_path {root}: {what}; pass a prepared dataset folder, or a new or empty folder for "
                     f"the synthetic dataset")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root_path", default=os.path.join(PROJECT_ROOT, "data", "synthetic_ACDC"))
    p.add_argument("--max_iterations", type=int, default=240)
    p.add_argument("--exp", default="demo/DiffRect")
    p.add_argument("--gpu", default="0")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision of training")
    args = p.parse_args(argv)
    if needs_dataset(args.root_path):
        print(f"generating the synthetic dataset in {args.root_path}")
        generate_dataset(args.root_path, where="--root_path")
    n = args.max_iterations
    train_diffrect_ACDC.main(["--root_path", args.root_path, "--exp", args.exp, "--labelnum", "3", "--gpu", args.gpu,
                              "--patch_size", "64", "64", "--batch_size", "8", "--labeled_bs", "4",
                              "--max_iterations", str(n), "--refine_start", str(n // 2), "--consistency_rampup",
                              str(max(1, n // 200)), "--val_interval", str(max(1, n // 4)), "--log_interval", "50",
                              "--image_interval", str(max(1, n // 4)), "--save_images", "--amp", args.amp])
    return test_ACDC.main(["--root_path", args.root_path, "--exp", args.exp, "--labelnum", "3", "--split", "test",
                           "--gpu", args.gpu, "--overlays", "4"])


if __name__ == "__main__":
    run_main(main)
