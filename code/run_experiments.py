"""Run an experiment preset: methods x label budgets x seeds, each a resumable run, then evaluate each one.

    python code/run_experiments.py --list
    python code/run_experiments.py --preset cpu-acdc --root_path data/ACDC --seeds 1337 2 3
    python code/run_experiments.py --preset paper-acdc --gpus 0 1 2 3      # one run per GPU at a time
    python code/summarize_experiments.py model/experiments/cpu-acdc       # tables, tests, figures

Each run trains in `<out>/<preset>/<method>_<labelnum>_seed<seed>/` (its snapshot folder). A finished run is
skipped, an interrupted one resumes from its last.pth, so the same command can be repeated until everything
is done (also across machines and days). After training, the best and the final checkpoints are evaluated
on val and, where the dataset has a test.list, on test (per-case CSVs beside the checkpoints). Each run is
one worker process; its console output goes to `worker.log` in its folder and its state to `run.json`.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from utils.checkpoint import atomic_write_text
from utils.config import PROJECT_ROOT, UsageError, run_main
from utils.experiment_presets import PRESETS

CODE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="a preset name (see --list)")
    p.add_argument("--root_path", default=None, help="dataset folder (default: the preset's, under the project)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's (1337 2 3)")
    p.add_argument("--gpus", type=int, nargs="+", default=None,
                   help="CUDA devices, one run on each at a time (default: one run after another, on --gpu 0 "
                   "or the CPU as the preset says)")
    p.add_argument("--out", default=os.path.join(PROJECT_ROOT, "model", "experiments"),
                   help="runs go to OUT/PRESET/<method>_<labelnum>_seed<seed>/ (default: model/experiments)")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods of the preset")
    p.add_argument("--max_run_iterations", type=int, default=None,
                   help="train each run at most N more iterations in this invocation (a job time limit); "
                   "interrupted runs resume on the next invocation")
    p.add_argument("--dry_run", action="store_true", help="print the runs and their commands, run nothing")
    p.add_argument("--list", action="store_true", help="list the presets and their runs")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the one run described in this run.json
    args = p.parse_args(argv)
    if not args.worker and not args.list and not args.preset:
        raise UsageError("--preset is required (or --list); e.g. --preset smoke")
    if args.preset and args.preset not in PRESETS:
        raise UsageError(f"--preset {args.preset!r} is unknown; choose one of {', '.join(PRESETS)} (--list)")
    if args.max_run_iterations is not None and args.max_run_iterations <= 0:
        raise UsageError(f"--max_run_iterations {args.max_run_iterations} must be positive")
    return args


def plan(preset, root, seeds, out, methods=None):
    """-> [job dict] in run order (seed-major, so a partial sweep already has every method at the first seed)."""
    jobs = []
    known = {r.method for r in preset.runs}
    for m in methods or []:
        if m not in known:
            raise UsageError(f"--methods {m}: not in preset {preset.name} ({', '.join(sorted(known))})")
    for seed in seeds:
        for r in preset.runs:
            if methods and r.method not in methods:
                continue
            folder = os.path.join(out, preset.name, f"{r.name}_seed{seed}")
            data = os.path.join(root, r.split) if r.split else root
            train = [*r.flags, "--root_path", data, "--labelnum", str(r.labelnum), "--seed", str(seed),
                     "--snapshot_dir", folder]
            jobs.append({"preset": preset.name, "method": r.method, "split": r.split, "labelnum": r.labelnum,
                         "seed": seed, "script": r.script, "model": r.model, "root_path": data,
                         "folder": folder, "train_argv": train})
    return jobs


def state_of(job):
    path = os.path.join(job["folder"], "run.json")
    if not os.path.isfile(path):
        return "new", None
    with open(path) as f:
        saved = json.load(f)
    return saved.get("state", "new"), saved


def write_state(job, state, **extra):
    os.makedirs(job["folder"], exist_ok=True)
    atomic_write_text(os.path.join(job["folder"], "run.json"), lambda f: json.dump(
        {**job, "state": state, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}, f, indent=2))


def worker(path, max_run_iterations=None):
    """One run, in this process: train (resuming), then evaluate the best and final checkpoints."""
    import importlib

    import test_ACDC

    with open(path) as f:
        job = json.load(f)
    train_argv = list(job["train_argv"]) + ([] if max_run_iterations is None else
                                             ["--max_run_iterations", str(max_run_iterations)])
    write_state(job, "training")
    importlib.import_module(job["script"]).main(train_argv)
    final = os.path.join(job["folder"], f"{job['model']}_final_model.pth")
    if not os.path.isfile(final):  # stopped by --max_run_iterations
        write_state(job, "interrupted")
        return "interrupted"
    write_state(job, "evaluating")
    gpus = [train_argv[i + 1] for i, a in enumerate(train_argv[:-1]) if a == "--gpu"]
    gpu = gpus[-1] if gpus else "0"  # the flag the training run used (the last one given)
    splits = ["val"] + (["test"] if os.path.isfile(os.path.join(job["root_path"], "test.list")) else [])
    for kind in ("best", "final"):
        for split in splits:
            test_ACDC.main(["--checkpoint", os.path.join(job["folder"], f"{job['model']}_{kind}_model.pth"),
                            "--root_path", job["root_path"], "--split", split, "--gpu", gpu])
    write_state(job, "done", splits=splits)
    return "done"


def _start(job, gpu, max_run_iterations):
    if gpu is not None:
        job = {**job, "train_argv": job["train_argv"] + ["--gpu", "0"]}
    state = state_of(job)[0]
    write_state(job, "queued" if state == "new" else state)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", os.path.join(job["folder"], "run.json")]
    if max_run_iterations is not None:
        cmd += ["--max_run_iterations", str(max_run_iterations)]
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {}))
    log = open(os.path.join(job["folder"], "worker.log"), "a")
    return subprocess.Popen(cmd, cwd=CODE, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _iteration(job):
    """The saved iteration of an unfinished run, from its train_terms/val curve (cheap; no torch load)."""
    curve = os.path.join(job["folder"], "val_curve.csv")
    if not os.path.isfile(curve):
        return 0
    with open(curve) as f:
        rows = f.read().split()
    return int(rows[-1].split(",")[0]) if len(rows) > 1 else 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.max_run_iterations)
    if args.list:
        for p in PRESETS.values():
            if args.preset and p.name != args.preset:
                continue
            print(f"{p.name}: {p.description}\n  data {p.root}, seeds {' '.join(map(str, p.seeds))}, "
                  f"{len(p.runs)} runs per seed")
            for r in p.runs:
                print(f"    {r.name:28s} {r.script}.py {' '.join(r.flags)}")
        return None
    preset = PRESETS[args.preset]
    root = os.path.abspath(args.root_path or os.path.join(PROJECT_ROOT, preset.root))
    seeds = args.seeds or list(preset.seeds)
    jobs = plan(preset, root, seeds, os.path.abspath(args.out), args.methods)
    if args.dry_run:
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {os.path.basename(job['folder'])} ({state_of(job)[0]}): python code/"
                  f"{job['script']}.py {' '.join(job['train_argv'])}")
        return jobs
    if not os.path.isfile(os.path.join(root, "train_slices.list")):
        if not preset.synthetic:
            raise UsageError(f"--root_path {root}: no prepared dataset there (train_slices.list); prepare one "
                             f"with code/prepare_data.py or pass --root_path")
        from dataloaders.synthetic import generate_dataset

        print(f"generating the synthetic dataset of preset {preset.name} in {root}")
        generate_dataset(root, seed=0, n_train=6, n_val=2, n_test=2, size=(48, 48), depth_range=(3, 4))
    todo = [j for j in jobs if state_of(j)[0] != "done"]
    print(f"preset {preset.name}: {len(jobs)} runs, {len(jobs) - len(todo)} already done, {len(todo)} to run "
          f"({'GPUs ' + ' '.join(map(str, args.gpus)) if args.gpus else 'one at a time'}); folders under "
          f"{os.path.join(os.path.abspath(args.out), preset.name)}")
    slots = list(args.gpus) if args.gpus else [None]
    running, results, n = {}, {}, len(todo)
    queue = list(enumerate(todo, 1))
    while queue or running:
        while queue and slots:
            i, job = queue.pop(0)
            gpu = slots.pop(0)
            state, _ = state_of(job)
            note = f"resuming from iteration {_iteration(job)}" if state in ("interrupted", "training", "failed") \
                else "starting"
            print(f"[{i}/{n}] {os.path.basename(job['folder'])}: {note}{'' if gpu is None else f' on GPU {gpu}'}; "
                  f"{len(queue)} queued after it", flush=True)
            running[i] = (job, gpu, *_start(job, gpu, args.max_run_iterations), time.time())
        time.sleep(0.2)
        for i in list(running):
            job, gpu, proc, log, t0 = running[i]
            if proc.poll() is None:
                continue
            log.close()
            slots.append(gpu)
            del running[i]
            state = state_of(job)[0] if proc.returncode == 0 else "failed"
            if proc.returncode:
                write_state(job, "failed", returncode=proc.returncode)
            results[job["folder"]] = state
            print(f"[{i}/{n}] {os.path.basename(job['folder'])}: {state} after {time.time() - t0:.0f} s"
                  + (f" (see {os.path.join(job['folder'], 'worker.log')})" if state == "failed" else "")
                  + f"; {len(queue) + len(running)} left", flush=True)
    failed = [f for f, s in results.items() if s == "failed"]
    unfinished = [f for f, s in results.items() if s == "interrupted"]
    if unfinished:
        print(f"{len(unfinished)} run(s) stopped by --max_run_iterations; run the same command again to continue")
    if failed:
        raise UsageError(f"{len(failed)} run(s) failed: {', '.join(os.path.basename(f) for f in failed)}; see "
                         f"their worker.log, fix, and run the same command again")
    if not unfinished:
        print(f"all {len(jobs)} runs done; tables: python code/summarize_experiments.py "
              f"{os.path.join(os.path.abspath(args.out), preset.name)}")
    return results


if __name__ == "__main__":
    run_main(main)
