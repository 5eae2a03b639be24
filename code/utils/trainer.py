"""The training loop every script shares: snapshot folder, logging, data, validation, checkpoints, resume.

A training script declares what its batches hold (`Batches`), builds its models and optimizers, writes one
`train_step(batch, iteration)` that returns its named loss terms, and returns them as a `Method`, which
`TrainingRun.fit` trains. Everything else lives here, once:

- snapshot `model/{exp}_{labelnum}_labeled/{model}/`: config.json, log.txt, tensorboard events,
  `{model}_best_model.pth` (best val mean Dice), `{model}_final_model.pth` (the last network), `last.pth`
  (full state), `val_curve.csv`, `train_terms.csv`, `progress.png`;
- the folder is the run's identity (utils/run_folder.py): one process writes it at a time, and a resume with
  other run-defining flags or another script is refused before anything is written;
- resume: `--resume auto` continues from last.pth (models, optimizers, iteration, best metric, python/numpy/
  torch/CUDA RNGs, named generators); the sampler is a pure function of the iteration, so the same trajectory
  continues bit-for-bit on the CPU (at the same thread count);
- non-finite losses skip their step (counted; more than `--max_nonfinite` in a row stops the run, saving the
  state, which is still the last good one); every parameter and buffer is checked finite before each
  validation and checkpoint (and after a skipped step): a non-finite model state stops the run and keeps the
  last.pth on disk, the last good state;
- SIGTERM / Ctrl-C: the current step finishes, last.pth is saved, the run exits (128 + signal number); a
  second Ctrl-C stops at once.

The contract of a `Method` is checked before the first step (`check_method`): every module the step uses (any
network passed to `run.wrap`, any teacher it closes over) is in `models`, so it is saved and resumed; every
optimizer has a named LR schedule and optimizes only parameters of `models`; `eval_model` is one of `models`.
"""
import contextlib
import functools
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataloaders.dataset import DataError, SliceDataset, VolumeDataset
from dataloaders.datasets import labeled_slice_count, load_dataset_info
from dataloaders.random_streams import stream_seed
from dataloaders.sampler import TwoStreamBatchSampler
from utils.checkpoint import FORMAT, atomic_save, atomic_write_text, load_checkpoint, load_state, rng_state, set_rng_state
from utils.config import PROJECT_ROOT, check_args, loader_workers, select_device
from utils.distributed import DistributedNet, all_ranks_true, distributed_env, init_process_group, local_world_size, \
    replicas_differ
from utils.errors import CheckpointError, NonFiniteLoss, RunInterrupted, TooManyNonFinite, UsageError
from utils.evaluation import evaluate
from utils.progress import TermsLog, on_terminal, plot_progress, write_csv
from utils.provenance import code_provenance, data_fingerprint, machine_info
from utils.ramps import poly_lr
from utils.run_folder import FolderLock, check_same_run
from utils.safe_write import write_bytes, write_error


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stdout)


def seed_everything(seed, deterministic):
    """The global generators (θ's initialisation, dropout, anything a library draws), each on its own stream."""
    random.seed(stream_seed(seed, "python"))
    np.random.seed(stream_seed(seed, "numpy") % 2 ** 32)
    torch.manual_seed(stream_seed(seed, "torch"))
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


def compile_in_place(net):
    """torch.compile `net`'s forward in place (nn.Module.compile); a network without its own forward (called only
    through methods) gets each child's forward compiled instead. -> the compiled modules."""
    defines_forward = lambda m: type(m).forward is not nn.Module.forward
    parts = [net] if defines_forward(net) else [m for m in net.children() if defines_forward(m)]
    for m in parts:
        m.compile()
    return parts


@dataclass(frozen=True)
class Batches:
    """What a script's batches hold, declared once per script as BATCHES (its main and benchmark.py read it)."""
    semi_supervised: bool = True   # labeled_bs labeled + the rest unlabeled slices; False: batch_size labeled
    strong_views: int = 0          # 1: each slice also as the strong view `image_strong` (FixMatch, DiffRect);
                                   # 2: and as a second, independent one, `image_strong2` (UniMatch)


LR_SCHEDULES = ("poly", "constant")  # poly: base_lr (1 - iter/max)^0.9, after every step; constant: base_lr


@dataclass
class Method:
    """What a script's build() returns: everything fit needs to train one method."""
    train_step: callable    # (batch, iteration) -> {term name: value}; batch: image (B,1,H,W), label (B,H,W), ...
    models: dict            # name -> nn.Module: every module with weights or buffers the step uses
    optimizers: dict        # name -> torch.optim.Optimizer
    lr_schedules: dict      # optimizer name -> one of LR_SCHEDULES, for every optimizer
    eval_model: nn.Module   # the network validated and saved as the best/final model; one of models
    generators: dict = field(default_factory=dict)  # name -> torch.Generator, restored on resume


class TrainingRun:
    def __init__(self, args, batches, script=None):
        """batches: the script's Batches. script: the training script's name (part of the run's identity;
        default: the caller's file). Use as a context manager (`with TrainingRun(...) as run:`), which
        releases the snapshot folder however the block ends."""
        semi_supervised, strong = batches.semi_supervised, batches.strong_views
        args.semi_supervised = semi_supervised
        args.script = script or os.path.splitext(os.path.basename(sys._getframe(1).f_code.co_filename))[0]
        self.args = check_args(args)
        self.info = load_dataset_info(args.root_path, args.dataset)
        if args.num_classes is None:
            args.num_classes = self.info.num_classes
        elif args.num_classes != self.info.num_classes:
            raise UsageError(f"--num_classes {args.num_classes}: the dataset at {args.root_path} has "
                             f"{self.info.num_classes} classes ({', '.join(self.info.class_names)});"
                             f" drop --num_classes (it is read from the dataset description)")
        self.num_classes = args.num_classes
        self.rank, self.world_size, self.local_rank = distributed_env()
        self.distributed, self.is_main = self.world_size > 1, self.rank == 0
        self.snapshot = args.snapshot_dir or os.path.join(
            PROJECT_ROOT, "model", f"{args.exp}_{args.labelnum}_labeled", args.model)
        self.last_path = os.path.join(self.snapshot, "last.pth")
        self.best_path = os.path.join(self.snapshot, f"{args.model}_best_model.pth")
        self.final_path = os.path.join(self.snapshot, f"{args.model}_final_model.pth")
        # the data is part of the run's identity (not its path: a moved copy resumes, edited data does not)
        args.data_fingerprint = data_fingerprint(args.root_path)
        self.resume_from = self._resume_source()
        self._resume_ckpt = None
        if self.resume_from:  # the same run, or nothing is touched
            self._resume_ckpt = load_checkpoint(self.resume_from)
            if self._resume_ckpt.get("kind") != "last":
                raise CheckpointError(f"{self.resume_from}: a best-model file cannot be resumed; pass a last.pth")
            check_same_run(self._resume_ckpt.get("config", {}), vars(args), self.resume_from)
        # the data is read and checked before anything is written, so bad input leaves no trace
        notes = []
        self.train_set = SliceDataset(args.root_path, self.num_classes, args.patch_size, strong_views=strong,
                                      skip_bad=args.skip_bad_samples, log=notes.append)
        n_lab = labeled_slice_count(self.info, args.labelnum, len(self.train_set))
        self.labeled_idx = self.train_set.valid_indices(range(n_lab))
        no_label = [i for i in self.labeled_idx if not self.train_set.has_label[i]]
        if no_label:  # a slice without a mask can only be unlabeled data
            raise DataError(f"{self.train_set.paths[no_label[0]]}: has no label but is among the first {n_lab} "
                            f"slices of train_slices.list, the labeled set of --labelnum {args.labelnum} "
                            f"({len(no_label)} such slices); list the labeled cases first (prepare_data.py does) "
                            f"or lower --labelnum")
        self.unlabeled_idx = self.train_set.valid_indices(range(n_lab, len(self.train_set)))
        self.semi_supervised = semi_supervised
        self._sampler(0)  # checks that the labeled/unlabeled sets can fill a batch
        self.val_set = VolumeDataset(args.root_path, "val", self.num_classes)
        for i in range(len(self.val_set)):
            self.val_set[i]  # reads and checks every val volume now, not at the first validation
        if self.distributed:  # one GPU per process (LOCAL_RANK) when CUDA is asked for and present
            self.device = torch.device("cuda", self.local_rank) if args.gpu >= 0 and torch.cuda.is_available() \
                else torch.device("cpu")
            init_process_group(self.device)
        else:
            self.device = select_device(args.gpu, notes.append)
        if args.amp == "fp16" and self.device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA GPU; on a CPU use --amp bf16 (fast only with AVX512-BF16/AMX)")
        self.workers = loader_workers(args.num_workers, self.device, local_world_size())
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
        self.scaler = torch.amp.GradScaler("cuda") if args.amp == "fp16" else None
        self.lock = None
        if self.is_main:  # the only writer of the folder (other ranks write nothing)
            try:
                os.makedirs(self.snapshot, exist_ok=True)
            except OSError as e:
                raise UsageError(f"snapshot folder {self.snapshot}: cannot be created ({e.strerror}); choose "
                                 f"another --snapshot_dir / --exp") from None
            self.lock = FolderLock(self.snapshot)
        self.logger = self._make_logger()
        for note in notes:
            self.logger.warning(note)
        if self.train_set.skipped:
            self.logger.warning(f"{len(self.train_set.skipped)} bad slices skipped (--skip_bad_samples)")
        seed_everything(args.seed, args.deterministic)
        self.writer = None
        self.wrapped = []  # every network passed to wrap (check_method: each must be in the Method's models)
        if self.is_main:
            self.logger.info(f"{len(self.labeled_idx)} labeled / {len(self.unlabeled_idx)} unlabeled slices, "
                             f"{len(self.val_set)} val volumes, device {self.device}, {torch.get_num_threads()} CPU "
                             f"threads (a CPU run repeats bit for bit only at the same count), {self.workers} loader "
                             f"workers, snapshot {self.snapshot}")

    def close(self):
        """Release the snapshot folder (fit does this when it ends, however it ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ----------------------------------------------------------------------------------------------- set-up
    def _resume_source(self):
        a = self.args
        if a.resume not in ("auto", "", None):
            if not os.path.isfile(a.resume):
                raise UsageError(f"--resume {a.resume}: file not found")
            return a.resume
        if os.path.isfile(self.last_path):
            if a.no_resume:
                raise UsageError(f"{self.last_path} exists and --no_resume was given; remove the snapshot folder or "
                                 f"choose another --exp")
            return self.last_path
        return None

    def _make_logger(self):
        logger = logging.getLogger(f"run:{self.snapshot}")
        for h in list(logger.handlers):  # a second run in the same process (tests, notebooks)
            h.close()
            logger.removeHandler(h)
        logger.propagate = False
        logger.setLevel(logging.INFO if self.is_main else logging.WARNING)
        fmt = logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S")
        handlers = [_TqdmHandler()] + ([logging.FileHandler(os.path.join(self.snapshot, "log.txt"))] if self.is_main
                                       else [])
        for h in handlers:
            h.setFormatter(fmt)
            logger.addHandler(h)
        return logger

    def _sampler(self, start):
        """Semi-supervised: labeled_bs labeled + the rest unlabeled; supervised: batch_size labeled slices."""
        a, semi = self.args, self.semi_supervised
        return TwoStreamBatchSampler(self.labeled_idx, self.unlabeled_idx if semi else [], a.batch_size,
                                     a.labeled_bs if semi else a.batch_size, a.seed, start, a.max_iterations,
                                     self.rank, self.world_size)

    def loader(self, start):
        a = self.args
        # own generator: creating the loader must not draw from the global RNG (resume would shift dropout)
        return DataLoader(self.train_set, batch_sampler=self._sampler(start), num_workers=self.workers,
                          generator=torch.Generator().manual_seed(stream_seed(a.seed, "loader", start)),
                          pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0)

    # ------------------------------------------------------------------------------------------ step helpers
    def generator(self, stream):
        """A torch.Generator on the run's device for one named stream of random_streams (e.g. "diffusion");
        pass it to fit's `generators` so resume restores it."""
        return torch.Generator(self.device).manual_seed(stream_seed(self.args.seed, stream))

    def wrap(self, net, find_unused=False):
        """The network as the train step should call it: itself in a plain run, in DistributedDataParallel under
        torchrun (SyncBatchNorm on CUDA). Build optimizers, state and evaluation on `net` itself. find_unused:
        some parameters may get no gradient in a step (DDP must then look for them). With --compile the
        network's forward (or, for one called only through its methods such as the rectifier, each child's
        forward) is compiled in place: parameters and state dicts stay those of `net`."""
        self.wrapped.append(net)
        if self.args.compile:
            compile_in_place(net)
        return DistributedNet(net, self.device, find_unused) if self.distributed else net

    def step(self, train_step, batch, iteration):
        """One training step, under autocast when --amp is on (fit and benchmark.py both step through here)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            return train_step(batch, iteration)

    def backward_step(self, optimizer, loss, what):
        """zero_grad / backward / step of one optimizer or a tuple of them (one loss over several networks),
        refusing a non-finite loss (the step is skipped, weights untouched). With --amp fp16 the loss is scaled."""
        optimizers = optimizer if isinstance(optimizer, (tuple, list)) else (optimizer,)
        for o in optimizers:
            o.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.distributed:  # every rank skips together, or the next collective would hang
            finite = all_ranks_true(finite, self.device)
        if not finite:
            raise NonFiniteLoss(f"{what} is {loss.item()}")
        with torch.autocast(self.device.type, enabled=False):  # backward outside autocast, as torch advises
            (self.scaler.scale(loss) if self.scaler else loss).backward()
        for o in optimizers:
            self.scaler.step(o) if self.scaler else o.step()
        if self.scaler:
            self.scaler.update()

    def should_log_images(self, iteration):
        return self.is_main and (iteration + 1) % self.args.image_interval == 0

    def log_images(self, tag, panels, iteration):
        """panels: list of (3, H, W) float tensors in [0, 1] (one sample), shown side by side, titled by the
        parts of the tag's last name ("train/image_gt_pred": image, gt, pred), with the class legend."""
        from utils.visualize import panel_grid

        titles = tag.rsplit("/", 1)[-1].split("_")
        grid = panel_grid([p.detach().float().cpu().expand(3, -1, -1).clamp(0, 1).numpy() for p in panels],
                          titles[:len(panels)] if len(titles) >= len(panels) else [""] * len(panels),
                          self.info.class_names)  # (DiffRect's grid has its rectified panel only after refine_start)
        self.writer.add_image(tag, grid, iteration + 1)
        if self.args.save_images:
            write_image_grid(os.path.join(self.snapshot, "images", f"{tag.replace('/', '_')}_{iteration + 1}.png"),
                             grid)
        return grid

    # ------------------------------------------------------------------------------------------- the loop
    def fit(self, method):
        """Train `method` (a Method) over iterations [start, max_iterations) -> the best validation."""
        try:
            check_method(method, self.wrapped)
            with _StopOnSignal() as stop:
                return self._loop(method, stop)
        finally:
            self.close()

    def _loop(self, method, stop):
        from tensorboardX import SummaryWriter

        a, log = self.args, self.logger
        train_step, models, optimizers, eval_model, generators = (method.train_step, method.models, method.optimizers,
                                                                  method.eval_model, method.generators)
        poly = [n for n, schedule in method.lr_schedules.items() if schedule == "poly"]
        st = self._restore(models, optimizers, generators)
        if st["iteration"] >= a.max_iterations:  # (config.json stays that of the run that trained)
            log.info(f"nothing to do: already at iteration {st['iteration']} of {a.max_iterations}")
            return st["best"]
        start = st["iteration"]
        if self.is_main:
            atomic_write_text(os.path.join(self.snapshot, "config.json"),
                              lambda f: json.dump(vars(a), f, indent=2, sort_keys=True))
            log.info("config: " + json.dumps(vars(a), sort_keys=True))
            self._folder_id = os.stat(self.snapshot).st_ino  # (a save checks the folder is still this one)
        # this invocation's provenance: one segment per invocation, so a run resumed elsewhere shows both
        segment = {**code_provenance(a.script), "machine": machine_info(), "data_fingerprint": a.data_fingerprint,
                   "start_iteration": start, "end_iteration": start, "seconds": 0.0,
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        st["provenance"].append(segment)
        self._provenance, self._segment, self._t_start = st["provenance"], segment, time.time()
        if self.distributed:  # own dropout/noise draws per rank (models start equal: they were built before this)
            torch.manual_seed(stream_seed(a.seed, "torch_rank", self.rank, start))
            log.info(f"distributed: {self.world_size} processes, rank {self.rank}, device {self.device}; global batch "
                     f"{self.world_size * a.batch_size} ({self.world_size * a.labeled_bs} labeled)")
        self.writer = SummaryWriter(os.path.join(self.snapshot, "log"), purge_step=start + 1) if self.is_main else None
        self.terms_log = TermsLog(os.path.join(self.snapshot, "train_terms.csv"), start) if self.is_main else None

        def save_last(iteration):
            self._check_finite_state(models, iteration, st["iteration"])  # nothing poisoned reaches the disk
            st["iteration"] = iteration
            self._provenance_at(iteration)
            if self.is_main:
                self._check_folder()
                atomic_write_text(os.path.join(self.snapshot, "provenance.json"),
                                  lambda f: json.dump(st["provenance"], f, indent=2))
                atomic_save({"format": FORMAT, "kind": "last", "iteration": iteration, "best": st["best"],
                             "curve": st["curve"], "models": {n: m.state_dict() for n, m in models.items()},
                             "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                             "generators": {n: g.get_state() for n, g in generators.items()},
                             "rng": rng_state(), "nonfinite_total": st["nonfinite_total"], "config": vars(a),
                             "provenance": st["provenance"],
                             "scaler": self.scaler.state_dict() if self.scaler else None}, self.last_path)

        for m in models.values():
            m.train()
        in_a_row, timer = 0, [0.0, 0]
        stop_at = a.max_iterations if a.max_run_iterations is None else min(a.max_iterations,
                                                                              start + a.max_run_iterations)
        # the bar on a terminal only: in a file its carriage-return frames pile up into one huge line; there
        # the log line every --log_interval (which carries the position and time left) is the progress
        bar = tqdm(range(start, stop_at), initial=start, total=a.max_iterations, ncols=90, mininterval=2.0,
                   disable=not (self.is_main and on_terminal(sys.stderr)), file=sys.stderr)
        batches = iter(self.loader(start))
        for it in bar:
            t0 = time.perf_counter()
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items()}
            try:
                terms, in_a_row = self.step(train_step, batch, it), 0
            except NonFiniteLoss as e:
                terms, in_a_row = {}, in_a_row + 1
                st["nonfinite_total"] += 1
                log.warning(f"iteration {it}: non-finite loss ({e}); step skipped ({in_a_row} in a row)")
            if not terms:  # a skipped step may still have poisoned BatchNorm statistics in its forward
                self._check_finite_state(models, it, st["iteration"])
            if in_a_row > a.max_nonfinite:
                save_last(it)  # the weights are those of the last good step (the skipped ones changed nothing)
                raise TooManyNonFinite(f"{in_a_row} non-finite losses in a row at iteration {it}; the last good "
                                       f"state is in {self.last_path}. Start a new run (another --exp) with a "
                                       f"lower --base_lr, or check the data (code/check_data.py).")
            for name in poly:
                for g in optimizers[name].param_groups:
                    g["lr"] = poly_lr(a.base_lr, it, a.max_iterations)
            timer[0] += time.perf_counter() - t0
            timer[1] += 1
            if self.is_main and (it + 1) % a.log_interval == 0 and terms:
                self._log_terms(it + 1, terms, optimizers[(poly or list(optimizers))[0]].param_groups[0]["lr"], timer,
                                a.max_iterations)
            self._validate_and_save(it + 1, stop_at, eval_model, models, st, save_last)
            if self._any_rank(stop.signal is not None):  # every rank stops after the same step
                save_last(it + 1)
                signum = stop.signal or signal.SIGTERM
                name = signal.Signals(signum).name
                log.info(f"stopped by {name} at iteration {it + 1}; last.pth saved, run the same command to resume")
                raise RunInterrupted(f"stopped by {name} at iteration {it + 1}: {self.last_path} saved; run the same "
                                     f"command again to resume", signum)
        if self.writer:
            self.writer.close()
        if self.distributed:
            differ = replicas_differ(models, self.device)
            log.warning(f"weights of {differ} differ between ranks at iteration {stop_at}") if differ else \
                log.info(f"weights identical on all {self.world_size} ranks at iteration {stop_at}")
        if stop_at < a.max_iterations:
            log.info(f"stopped at iteration {stop_at} (--max_run_iterations); run again to resume from "
                     f"{self.last_path}")
            return st["best"]
        log.info(f"done: best val mean Dice {100 * st['best']['dice']:.2f} % at iteration {st['best']['iteration']}; "
                 f"{st['nonfinite_total']} non-finite steps skipped; checkpoint {self.best_path}")
        return st["best"]

    def _restore(self, models, optimizers, generators):
        """-> the loop state {iteration, best, curve, nonfinite_total}: fresh, or from the resumed last.pth."""
        st = {"iteration": 0, "best": {"dice": -1.0, "iteration": 0}, "curve": [], "nonfinite_total": 0,
              "provenance": []}
        ckpt = self._resume_ckpt
        if ckpt is None:
            return st
        path = self.resume_from
        for name, m in models.items():
            if name not in ckpt["models"]:
                raise CheckpointError(f"{path}: has no model {name!r}; it was written by another script")
            load_state(m, ckpt["models"][name], f"model {name!r}", path)
        for name, o in optimizers.items():
            o.load_state_dict(ckpt["optimizers"][name])
        for name, g in generators.items():
            g.set_state(ckpt["generators"][name])
        set_rng_state(ckpt["rng"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        st.update(iteration=ckpt["iteration"], best=ckpt["best"], curve=ckpt["curve"],
                  nonfinite_total=ckpt.get("nonfinite_total", 0), provenance=list(ckpt.get("provenance", [])))
        self._resume_ckpt = None  # free the memory
        self.logger.info(f"resumed from {path} at iteration {st['iteration']} (best val Dice "
                         f"{100 * st['best']['dice']:.2f} %)")
        return st

    def _check_finite_state(self, models, it, saved):
        """Every parameter and floating buffer finite, or stop: the state is poisoned (e.g. BN running statistics
        from an overflowing forward) and must not reach a checkpoint. Checked before every validation and
        checkpoint and after a skipped step, not every step: one pass over all weights costs ~60 ms for
        DiffRect on a 2-core CPU (2-6 % of a step). saved: the iteration of the last.pth on disk."""
        largest = {n: _largest_magnitude(m) for n, m in models.items()}
        if bool(torch.isfinite(torch.stack(list(largest.values()))).all()):
            return
        bad = [n for n, v in largest.items() if not torch.isfinite(v)]
        kept = f"{self.last_path} (iteration {saved}) is the last good state and was kept" \
            if os.path.isfile(self.last_path) else "no good state was saved yet"
        raise TooManyNonFinite(f"iteration {it}: the weights or buffers of {', '.join(bad)} are no longer finite; "
                               f"{kept}. Start a new run (another --exp) with a lower "
                               f"--base_lr, or check the data (code/check_data.py).")

    def _any_rank(self, flag):
        return not all_ranks_true(not flag, self.device) if self.distributed else flag

    def _log_terms(self, iteration, terms, lr, timer, total):
        values = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in terms.items()}
        for k, v in values.items():
            self.writer.add_scalar(k, v, iteration)
        if lr is not None:
            self.writer.add_scalar("info/lr", lr, iteration)
        self.writer.add_scalar("info/sec_per_iter", timer[0] / timer[1], iteration)
        left = int(round((total - iteration) * timer[0] / timer[1]))  # steps only: validation time comes on top
        self.logger.info(f"iteration {iteration}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items())
                         + f", {timer[0] / timer[1]:.3f} s/it, {iteration}/{total}, "
                           f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} of steps left")
        self.terms_log.append(iteration, values)
        timer[:] = [0.0, 0]

    def _validate_and_save(self, iteration, stop_at, eval_model, models, st, save_last):
        """Validation every --val_interval (best/final checkpoints), last.pth every --checkpoint_interval and at
        the end of this invocation; the other ranks wait for rank 0."""
        a = self.args
        validate = iteration % a.val_interval == 0 or iteration == a.max_iterations
        if validate:  # (every rank: the check is collective-free and cheap next to a validation)
            self._check_finite_state(models, iteration, st["iteration"])
        if validate and self.is_main:
            st["best"], summary = self._validate(iteration, eval_model, models, st["curve"], st["best"])
            if iteration == a.max_iterations:  # the last network too, in the best file's format (test_ACDC.py)
                atomic_save(self._best_state(eval_model, models, iteration, summary, kind="final"), self.final_path)
        if iteration % a.checkpoint_interval == 0 or iteration in (a.max_iterations, stop_at):
            save_last(iteration)
        if self.distributed and (iteration % a.val_interval == 0 or iteration == stop_at):
            dist.barrier()

    def _validate(self, iteration, eval_model, models, curve, best):
        """Score val, log it, extend the curve; save the best checkpoint on a new best mean Dice.
        -> (best, this validation's summary)."""
        a = self.args
        self._check_folder()
        # --compile: validation runs eager (no recompiling for eval mode and every volume's slice count)
        with torch.compiler.set_stance("force_eager") if a.compile else contextlib.nullcontext():
            summary, _ = evaluate(eval_model, self.val_set, a.patch_size, self.device, self.num_classes,
                                  self.info.class_names)
        row = {"iteration": iteration, **{k: summary["mean"][k]["mean"] for k in ("dice", "jaccard", "hd95", "asd")}}
        curve.append(row)
        for k in ("dice", "jaccard", "hd95", "asd"):
            self.writer.add_scalar(f"val/mean_{k}", row[k], iteration)
        for c in summary["classes"]:
            self.writer.add_scalar(f"val/{c}_dice", summary["per_class"][c]["dice"]["mean"], iteration)
        if row["dice"] > best["dice"]:
            best = {"dice": row["dice"], "iteration": iteration, "summary": summary}
            atomic_save(self._best_state(eval_model, models, iteration, summary), self.best_path)
        self.logger.info(f"validation at {iteration}: mean Dice {100 * row['dice']:.2f} %, Jaccard "
                         f"{100 * row['jaccard']:.2f} %, HD95 {row['hd95']:.2f} voxels, ASD {row['asd']:.2f} voxels "
                         f"(best {100 * best['dice']:.2f} % at {best['iteration']})")
        self._write_curve(curve)
        return best, summary

    def _check_folder(self):
        """Stop when the snapshot folder was removed (or replaced) while the run trained: a save would recreate it
        without its config, log and curve, and the run would look finished there."""
        try:
            same = os.stat(self.snapshot).st_ino == self._folder_id
        except FileNotFoundError:
            same = False
        if not same:
            raise UsageError(f"{self.snapshot}: the snapshot folder was removed or replaced while this run trained; "
                             f"stopped without saving. Run the same command again to start the run anew")

    def _provenance_at(self, iteration):
        """-> the run's provenance segments, this invocation's brought up to `iteration` (utils/provenance.py)."""
        self._segment.update(end_iteration=iteration, seconds=round(time.time() - self._t_start, 1))
        return self._provenance

    def _best_state(self, eval_model, models, iteration, summary, kind="best"):
        a = self.args
        return {"format": FORMAT, "kind": kind, "iteration": iteration, "metrics": summary,
                "provenance": self._provenance_at(iteration),
                "arch": {"net": a.model, "in_chns": 1, "num_classes": self.num_classes},
                "patch_size": list(a.patch_size), "class_names": self.info.class_names,
                "normalization": self.info.normalization,  # what predict.py applies to a new scan
                "channel": self.info.channel,  # and the channel it reads of one
                "model": eval_model.state_dict(),
                "extra_models": {n: m.state_dict() for n, m in models.items() if m is not eval_model},
                "config": vars(a)}

    def _write_curve(self, curve):
        write_csv(os.path.join(self.snapshot, "val_curve.csv"), curve)
        plot_progress(os.path.join(self.snapshot, "progress.png"), self.terms_log.rows, curve)


def write_image_grid(path, grid):
    """A (3, H, W) float grid in [0, 1] (panel_grid's) -> a PNG at `path`, whole or not at all (write_file).
    Encoded in memory and written by Python, not by cv2.imwrite: on a full disk or a read-only folder that only
    returns False, saying neither why nor whether it left a cut file."""
    import cv2

    png = (grid.transpose(1, 2, 0)[..., ::-1] * 255).round().astype(np.uint8)  # RGB -> cv2's BGR
    ok, encoded = cv2.imencode(".png", png)
    if not ok:  # (cv2 says no more than False)
        raise write_error(path, RuntimeError(f"cv2 could not encode a {png.shape[1]}x{png.shape[0]} image as PNG"))
    write_bytes(path, encoded.reshape(-1))


class _StopOnSignal:
    """SIGTERM / SIGINT set `signal` (the loop saves and exits after the current step); a second SIGINT raises
    KeyboardInterrupt at once. Handlers only in the main thread (elsewhere Python cannot install them)."""

    def __init__(self):
        self.signal, self.forced, self._old = None, False, {}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signal is not None:
            self.forced = True
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving last.pth (Ctrl-C again: stop at "
              f"once)", file=sys.stderr, flush=True)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, exc_type, exc, tb):
        for s, h in self._old.items():
            signal.signal(s, h)
        if self.forced and isinstance(exc, Exception):  # the second Ctrl-C landed in C code (torch's zip
            raise KeyboardInterrupt from None           # writer), which raised an error of its own instead


def _largest_magnitude(module):
    """max |x| over every floating parameter and buffer, as a 0-d float32 tensor on their device (inf or nan
    when any is; the inf-norm cannot overflow); fused over tensors (foreach) where torch has it."""
    tensors = [t.detach() for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
    if not tensors:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        total = torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"), foreach=True)
    else:
        total = torch.stack([t.abs().max() for t in tensors]).max()
    return total.float()


def check_method(method, wrapped=()):
    """The Method contract, checked before the first step; a breach raises TypeError naming what to change.
    wrapped: the networks passed to run.wrap."""
    if not isinstance(method, Method):
        raise TypeError(f"build() must return utils.trainer.Method(train_step=..., models=..., optimizers=..., "
                        f"lr_schedules=..., eval_model=...), not {type(method).__name__}")
    if set(method.lr_schedules) != set(method.optimizers):
        raise TypeError(f"Method.lr_schedules must name every optimizer and nothing else: optimizers "
                        f"{sorted(method.optimizers)}, lr_schedules {sorted(method.lr_schedules)}")
    for name, schedule in method.lr_schedules.items():
        if schedule not in LR_SCHEDULES:
            raise TypeError(f"Method.lr_schedules[{name!r}] = {schedule!r}: choose one of {LR_SCHEDULES}")
    owned = {id(m) for net in method.models.values() for m in net.modules()}
    if id(method.eval_model) not in {id(m) for m in method.models.values()}:
        raise TypeError("Method.eval_model must be one of Method.models (it is validated and saved from there)")
    params = {id(p) for net in method.models.values() for p in net.parameters()}
    for name, opt in method.optimizers.items():
        if any(id(p) not in params for g in opt.param_groups for p in g["params"]):
            raise TypeError(f"optimizer {name!r} updates parameters of a module that is not in Method.models: add "
                            f"that module to models, or resume would restore its optimizer but not its weights")
    for what, net in [*_modules_used(method.train_step), *(("run.wrap", n) for n in wrapped)]:
        if _has_state(net) and id(net) not in owned:
            raise TypeError(f"{what}: a {type(net).__name__} with weights or buffers that is not in Method.models; "
                            f"add it (e.g. models={{..., 'teacher': teacher}}), or checkpoints would not save it and "
                            f"resume would restart it from scratch")


def _has_state(module):
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _modules_used(fn, seen=None):
    """[(where, nn.Module)] that `fn` reaches through its closure: modules, DDP wrappers (DistributedNet), and
    modules inside the functions, partials, lists, tuples and dicts it closes over (recursively)."""
    seen = set() if seen is None else seen
    if id(fn) in seen:
        return []
    seen.add(id(fn))
    found = []

    def visit(name, value):
        if isinstance(value, DistributedNet):
            value = value.net
        if isinstance(value, nn.Module):
            found.append((f"train_step uses {name!r}", value))
        elif isinstance(value, (types.FunctionType, functools.partial)):
            found.extend(_modules_used(value, seen))
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(name, v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(name, v)

    if isinstance(fn, functools.partial):
        for v in (fn.func, *fn.args, *fn.keywords.values()):
            visit(getattr(fn.func, "__name__", "partial"), v)
        return found
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            visit(name, cell.cell_contents)
        except ValueError:  # a cell not yet filled
            pass
    return found
