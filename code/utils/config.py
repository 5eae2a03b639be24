"""Command-line flags common to every training script, their checks, and device selection.

Every check runs before any training starts and fails with one line naming the flag and the fix.
"""
import argparse
import math
import os
import sys

import torch

from utils.errors import CheckpointError, RunInterrupted, TooManyNonFinite, UsageError  # noqa: F401 (re-exported)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_DATA = os.path.join(PROJECT_ROOT, "data", "ACDC")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default, except where there is none to show (None, or a switch's False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def number_in(low=None, high=None, *, low_open=False, high_open=False, kind=float):
    """An argparse type for a number in [low, high] (None: unbounded; an open end excludes its bound). A value
    outside is argparse's usage error naming the flag, before anything is read or written."""
    interval = f"{'(' if low_open or low is None else '['}{'-inf' if low is None else low}, " \
               f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} must be in {interval}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


SEED = number_in(0, kind=int)  # numpy's SeedSequence, which every random stream derives from, takes no negatives
FRACTION = number_in(0, 1)


def training_parser(description, models=None, **defaults):
    """The flags every training script shares; scripts add their own group and may change defaults.
    `models`: the --model choices a script accepts (default: any registered network)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--root_path", default=DEFAULT_DATA, help="prepared dataset folder (SSL4MIS layout)")
    g.add_argument("--dataset", default=None, help="dataset table to use when the folder has no dataset.json "
                   "(ACDC, MSCMR_split1/2, Prostate_split1/2); none given: ACDC")
    g.add_argument("--labelnum", type=int, default=3, help="labeled patients; the first N slices of the table")
    g.add_argument("--num_classes", type=int, default=None, help="classes with background; none given: read from "
                   "the dataset description (a different number is refused)")
    g.add_argument("--patch_size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="network input size; every slice is resampled to it (multiples of 16)")
    g.add_argument("--num_workers", type=int, default=-1,
                   help="data loader processes; 0: in the main process; -1: 0 on a CPU (the loader is <1%% of a step "
                   "there and workers would take cores from it), on CUDA up to 4 per process, one core left free")
    g.add_argument("--skip_bad_samples", action="store_true", help="drop unreadable slices instead of stopping")
    g = p.add_argument_group("optimisation")
    g.add_argument("--exp", default="ACDC/Experiment", help="experiment name: model/{exp}_{labelnum}_labeled/")
    g.add_argument("--model", default="unet", choices=models, help="segmentation network")
    g.add_argument("--max_iterations", type=int, default=30000, help="training iterations in all")
    g.add_argument("--batch_size", type=int, default=24, help="slices per step (per process under torchrun)")
    g.add_argument("--labeled_bs", type=int, default=12, help="labeled slices per step")
    g.add_argument("--base_lr", type=number_in(0), default=0.01,
                   help="SGD learning rate (poly-decayed where the script says so; 0 keeps the weights)")
    g.add_argument("--seed", type=SEED, default=1337, help="every random stream of the run derives from it")
    g.add_argument("--deterministic", type=int, default=1, choices=[0, 1], help="1: deterministic cuDNN kernels")
    g.add_argument("--gpu", type=int, default=0, help="CUDA device index; -1 or no CUDA: CPU")
    g.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision of the training "
                   "step (autocast; fp16 adds a gradient scaler and needs CUDA); weights and validation stay fp32")
    g.add_argument("--compile", type=int, default=0, choices=[0, 1],
                   help="1: torch.compile the training forward passes (inductor: fused kernels); the first steps "
                   "compile (≈12 s each on an H100), validation stays eager; slower on CPU, GPU speed-up unmeasured")
    g = p.add_argument_group("run control")
    g.add_argument("--val_interval", type=int, default=200, help="validate on val every N iterations")
    g.add_argument("--checkpoint_interval", type=int, default=None, help="save last.pth every N; none "
                   "given: every --val_interval")
    g.add_argument("--log_interval", type=int, default=20, help="log scalars every N iterations")
    g.add_argument("--image_interval", type=int, default=200, help="tensorboard image grid every N iterations")
    g.add_argument("--save_images", action="store_true", help="also write each image grid as a PNG in images/")
    g.add_argument("--resume", default="auto", help="'auto' resumes from the snapshot's last.pth when present; "
                   "or a path to a last.pth")
    g.add_argument("--no_resume", action="store_true", help="refuse to start when the snapshot already has a "
                   "last.pth (instead of resuming it)")
    g.add_argument("--max_run_iterations", type=int, default=None, help="stop this invocation after N iterations "
                   "(saving last.pth), e.g. to fit a job time limit; running again resumes")
    g.add_argument("--max_nonfinite", type=int, default=5,
                   help="stop after more than this many non-finite losses in a row")
    g.add_argument("--snapshot_dir", default=None, help="the run's folder; none given: "
                   "model/{exp}_{labelnum}_labeled/{model}")
    p.set_defaults(**defaults)
    return p


def consistency_flags(parser, title):
    """The unlabeled-loss weight w(t) = consistency * sigmoid_rampup(iter // 150, consistency_rampup) of every
    semi-supervised script (SSL4MIS defaults). Returns the group so a script can add its own flags to it."""
    g = parser.add_argument_group(title)
    g.add_argument("--consistency", type=number_in(0), default=0.1,
                   help="weight of the unlabeled terms after ramp-up")
    g.add_argument("--consistency_rampup", type=number_in(0), default=200.0,
                   help="ramp length in units of 150 iterations")
    return g


def semi_supervised_flags(parser):
    """The flags of the FixMatch-style segmentation step, shared by FixMatch and DiffRect (docs/method.md, Training iteration)."""
    g = consistency_flags(parser, "semi-supervised segmentation step")
    g.add_argument("--conf_thresh", type=number_in(0, 1, high_open=True), default=0.8,
                   help="confidence mask threshold of pseudo labels: (p_c - min p) / max p must exceed it (< 1)")
    return parser


def check_args(args):
    """Flag checks that need no data; raises UsageError."""
    h, w = args.patch_size
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise UsageError(f"--patch_size {h} {w}: both sides must be positive multiples of 16 (the U-Net pools 4x)")
    if args.batch_size <= 0:
        raise UsageError(f"--batch_size {args.batch_size} must be positive")
    if getattr(args, "semi_supervised", True) and not 0 < args.labeled_bs < args.batch_size:
        raise UsageError(f"--labeled_bs {args.labeled_bs} must be in [1, --batch_size {args.batch_size}) so the "
                         f"batch has labeled and unlabeled slices")
    from networks.unet import NETWORKS

    if args.model not in NETWORKS:
        raise UsageError(f"--model {args.model!r} is unknown; choose one of {sorted(NETWORKS)}")
    if args.max_iterations <= 0:
        raise UsageError("--max_iterations must be positive")
    if args.num_workers < -1:
        raise UsageError(f"--num_workers {args.num_workers}: use 0 or more, or -1 for automatic")
    if args.compile and not hasattr(torch.compiler, "set_stance"):
        raise UsageError(f"--compile 1 needs torch >= 2.6 (this is {torch.__version__}); upgrade torch or drop it")
    for flag in ("val_interval", "log_interval", "image_interval", "checkpoint_interval", "max_run_iterations"):
        value = getattr(args, flag, None)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag} {value} must be positive")
    if args.max_nonfinite < 0:
        raise UsageError(f"--max_nonfinite {args.max_nonfinite} must be 0 or more")
    if not os.path.isdir(args.root_path):
        raise UsageError(f"--root_path {args.root_path}: folder not found; prepare a dataset there or run "
                         f"code/make_synthetic_data.py for a synthetic one")
    if args.checkpoint_interval is None:
        args.checkpoint_interval = args.val_interval
    return args


def loader_workers(requested, device, local_world_size=1):
    """--num_workers -> processes: as given when >= 0; automatic (-1): none on a CPU, whose cores the step uses,
    and on CUDA min(4, cores per process - 1), which takes augmentation off the main thread that feeds the GPU.
    The batches are the same either way (each item carries its own augmentation seed)."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores // max(1, local_world_size) - 1))


def select_device(gpu, log=print):
    if gpu >= 0 and torch.cuda.is_available():
        if gpu >= torch.cuda.device_count():
            raise UsageError(f"--gpu {gpu}: only {torch.cuda.device_count()} CUDA device(s) here")
        return torch.device("cuda", gpu)
    if gpu >= 0:
        log("notice: CUDA is not available; running on the CPU")
    return torch.device("cpu")


def add_channels_last_flag(parser, default):
    parser.add_argument("--channels_last", type=int, default=default, choices=[-1, 0, 1],
                        help="evaluation network layout: 1 channels_last (NHWC); 0 NCHW; -1 NHWC on a CPU only "
                        "(1.2-1.8x faster there, the same scores; docs/speed.md)")


def memory_format(channels_last, device):
    """--channels_last -> the evaluation network's memory format: 1 NHWC, 0 NCHW, -1 NHWC on a CPU only, where
    oneDNN's NHWC forward kernels are faster (docs/speed.md; unmeasured on GPUs, so NCHW there). Training stays
    NCHW: NHWC weight gradients on a CPU strayed from fp64 by up to 40 % in a U-Net test where NCHW's kept 1e-5."""
    on = device.type == "cpu" if channels_last < 0 else bool(channels_last)
    return torch.channels_last if on else torch.contiguous_format


def run_main(main_fn, argv=None):
    """Entry-script wrapper: a bad flag, file or checkpoint ends with one line on stderr and exit code 2."""
    from dataloaders.dataset import DataError

    try:
        return main_fn(argv)
    except (UsageError, DataError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except TooManyNonFinite as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except RunInterrupted as e:
        _ignore_further_signals()  # a second Ctrl-C during the exit would end in a traceback from atexit handlers
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _ignore_further_signals()
        print("interrupted: stopped at once (second Ctrl-C); last.pth holds the last checkpoint", file=sys.stderr)
        sys.exit(130)


def _ignore_further_signals():
    import signal

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
