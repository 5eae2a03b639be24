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

Every finished attempt is appended to `<out>/<preset>/ledger.jsonl` with its provenance (utils/ledger.py). A
finished run is trained again only with `--rerun`: its files move to `<run>/attempts/<n>/` and the new attempt
is another sample; both stay in the ledger and in the summary.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

try:
    import fcntl
except ImportError:  # not POSIX: no cross-invocation lock
    fcntl = None

from utils.checkpoint import atomic_write_text
from utils.config import PROJECT_ROOT, SEED, UsageError, run_main
from utils.experiment_presets import PRESETS
from utils.ledger import append_entry, attempts_of, entry_for, next_attempt, read_ledger

CODE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help="a preset name (see --list)")
    p.add_argument("--root_path", default=None, help="dataset folder (default: the preset's, under the project)")
    p.add_argument("--seeds", type=SEED, nargs="+", default=None, help="default: the preset's (--list)")
    p.add_argument("--gpus", type=int, nargs="+", default=None,
                   help="CUDA devices by number as torch counts them (0, 1, ...; within CUDA_VISIBLE_DEVICES when "
                   "set), one run on each at a time (default: one run after another, on --gpu 0 or the CPU as the "
                   "preset says)")
    p.add_argument("--out", default=os.path.join(PROJECT_ROOT, "model", "experiments"),
                   help="runs go to OUT/PRESET/<method>_<labelnum>_seed<seed>/ (default: model/experiments)")
    p.add_argument("--methods", nargs="+", default=None, help="only these methods of the preset")
    p.add_argument("--max_run_iterations", type=int, default=None,
                   help="train each run at most N more iterations in this invocation (a job time limit); "
                   "interrupted runs resume on the next invocation")
    p.add_argument("--rerun", action="store_true",
                   help="train finished runs again as a new attempt (the old attempt's files move to "
                   "<run>/attempts/<n>/; both stay in the ledger and the summary)")
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
    if args.gpus:
        check_gpus(args.gpus, devices=not (args.dry_run or args.list))
    return args


def check_gpus(gpus, devices=True):
    """--gpus names devices this machine has: a number that names none would hide every GPU from its run
    (CUDA_VISIBLE_DEVICES), which would then train on the CPU without a word. devices: False for a dry run,
    which prints the plan for another machine perhaps and starts nothing."""
    negative = [g for g in gpus if g < 0]
    if negative:
        raise UsageError(f"--gpus {negative[0]}: device numbers are 0 or more (0, 1, ... as torch counts them)")
    if not devices:
        return
    import torch  # (loaded already, by utils.config); only here is CUDA queried, never for --list or a dry run

    if not torch.cuda.is_available():
        raise UsageError(f"--gpus {' '.join(map(str, gpus))}: no CUDA device is visible here (its runs would train "
                         f"on the CPU); leave --gpus out, or run on a machine with GPUs")
    n = torch.cuda.device_count()
    missing = [g for g in gpus if g >= n]
    if missing:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA_VISIBLE_DEVICES={visible} leaves" if visible is not None else "this machine has"
        raise UsageError(f"--gpus {missing[0]}: {where} {n} GPU{'s' if n > 1 else ''}, numbered "
                         f"0{f'-{n - 1}' if n > 1 else ''} as torch counts them; choose among them")


def device_env(gpu):
    """CUDA_VISIBLE_DEVICES for a run on --gpus number `gpu`: its entry in this process's own list when one is
    set (the numbers were checked against the devices torch sees, which are those), else the number itself."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[gpu] if gpu < len(visible) else str(gpu)


def _unique(values, flag):
    """values without repeats (a repeated seed or method would plan one folder twice), saying what was dropped."""
    kept = list(dict.fromkeys(values))
    if len(kept) < len(values):
        print(f"{flag}: {' '.join(map(str, values))} repeats values; running {' '.join(map(str, kept))}")
    return kept


def plan(preset, root, seeds, out, methods=None):
    """-> [job dict] in run order (seed-major, so a partial sweep already has every method at the first seed)."""
    jobs = []
    seeds, methods = _unique(seeds, "--seeds"), methods and _unique(methods, "--methods")
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
    try:
        with open(path) as f:
            saved = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: damaged ({getattr(e, 'msg', e)}); restore it from git (git checkout -- {path}) "
                         f"or delete it to train the run again") from None
    return saved.get("state", "new"), saved


def write_state(job, state, **extra):
    os.makedirs(job["folder"], exist_ok=True)
    saved = state_of(job)[1] or {}
    kept = {k: saved[k] for k in ("attempt", "wall_seconds", "provenance") if k in saved}  # carried across states
    atomic_write_text(os.path.join(job["folder"], "run.json"), lambda f: json.dump(
        {**job, **kept, "state": state, "updated": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}, f, indent=2))


def final_model(job):
    return os.path.join(job["folder"], f"{job['model']}_final_model.pth")


def missing_files(job):
    """The files a finished run's summary and ledger need that its folder no longer has ([] when complete or not
    finished). The checkpoints are not among them: a sweep's committed copy keeps only the small files."""
    state, saved = state_of(job)
    if state != "done":
        return []
    need = ["val_curve.csv"] + [f"{prefix}{split}_per_case.csv" for prefix in ("", "final_")
                                               for split in saved.get("splits", ["val"])]
    return [f for f in need if not os.path.isfile(os.path.join(job["folder"], f))]


def run_provenance(job):
    """The training's provenance segments (code, machine, data, seconds per invocation; utils/provenance.py)."""
    path = os.path.join(job["folder"], "provenance.json")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return json.load(f)


def preset_folder(job):
    return os.path.dirname(job["folder"])


def record_attempt(job, wall_seconds):
    """Append the finished run's attempt to the ledger (once: an attempt already there is not added again)."""
    run, saved = os.path.basename(job["folder"]), state_of(job)[1] or {}
    entries = read_ledger(preset_folder(job))
    attempt = saved.get("attempt") or next_attempt(entries, run)
    if attempt not in attempts_of(entries, run):
        append_entry(preset_folder(job), entry_for({**job, "provenance": run_provenance(job)}, attempt, wall_seconds))
    return attempt


def archive_attempt(job):
    """--rerun of a finished run: move its files to <run>/attempts/<n>/ (n: its attempt), leaving the folder empty
    for the next attempt. The attempt is in the ledger first (a run finished before the ledger existed is added)."""
    attempt = record_attempt(job, (state_of(job)[1] or {}).get("wall_seconds", 0.0))
    set_aside(job, attempt)
    return attempt


def set_aside(job, attempt):
    """Move a run folder's files (all but attempts/) to <run>/attempts/<attempt>/."""
    folder = job["folder"]
    target = os.path.join(folder, "attempts", str(attempt))
    if os.path.exists(target):
        raise UsageError(f"{target} exists already; move it away before rerunning {os.path.basename(folder)}")
    os.makedirs(target)
    for name in os.listdir(folder):
        if name not in ("attempts", ".lock", WORKER_LOCK):
            shutil.move(os.path.join(folder, name), os.path.join(target, name))


WORKER_LOCK = ".worker.lock"


def worker_holding(folder):
    """The PID of a live worker of this run folder (any invocation), or None."""
    path = os.path.join(folder, WORKER_LOCK)
    if fcntl is None or not os.path.isfile(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)


def _hold_worker_lock(folder):
    """Hold <run>/.worker.lock for this worker's life (training and evaluation), or stop if another worker has it."""
    if fcntl is None:
        return None
    fd = os.open(os.path.join(folder, WORKER_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(f"{folder}: another worker trains this run; nothing to do here") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def worker(path, max_run_iterations=None):
    """One run, in this process: train (resuming), then evaluate the best and final checkpoints."""
    import importlib

    import test_ACDC

    lock = _hold_worker_lock(os.path.dirname(os.path.abspath(path)))  # noqa: F841 (held until the process ends)
    t0 = time.time()
    with open(path) as f:
        job = json.load(f)
    wall = job.pop("wall_seconds", 0.0)  # this run's worker time so far (training and evaluation, all invocations)
    train_argv = list(job["train_argv"]) + ([] if max_run_iterations is None else
                                             ["--max_run_iterations", str(max_run_iterations)])
    if "attempt" not in job:  # a new attempt's number is fixed when it starts
        job["attempt"] = next_attempt(read_ledger(preset_folder(job)), os.path.basename(job["folder"]))
    write_state(job, "training", wall_seconds=wall)
    importlib.import_module(job["script"]).main(train_argv)
    if not os.path.isfile(final_model(job)):  # stopped by --max_run_iterations
        write_state(job, "interrupted", wall_seconds=round(wall + time.time() - t0, 1), provenance=run_provenance(job))
        return "interrupted"
    write_state(job, "evaluating", wall_seconds=wall)
    gpus = [train_argv[i + 1] for i, a in enumerate(train_argv[:-1]) if a == "--gpu"]
    gpu = gpus[-1] if gpus else "0"  # the flag the training run used (the last one given)
    splits = ["val"] + (["test"] if os.path.isfile(os.path.join(job["root_path"], "test.list")) else [])
    for kind in ("best", "final"):
        for split in splits:
            test_ACDC.main(["--checkpoint", os.path.join(job["folder"], f"{job['model']}_{kind}_model.pth"),
                            "--root_path", job["root_path"], "--split", split, "--gpu", gpu])
    wall += time.time() - t0
    write_state(job, "done", splits=splits, wall_seconds=round(wall, 1), provenance=run_provenance(job))
    record_attempt(job, wall)
    return "done"


def _start(job, gpu, max_run_iterations):
    if gpu is not None:
        job = {**job, "train_argv": job["train_argv"] + ["--gpu", "0"]}
    state = state_of(job)[0]
    write_state(job, "queued" if state == "new" else state)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", os.path.join(job["folder"], "run.json")]
    if max_run_iterations is not None:
        cmd += ["--max_run_iterations", str(max_run_iterations)]
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": device_env(gpu)} if gpu is not None else {}))
    log = open(os.path.join(job["folder"], "worker.log"), "a")
    return subprocess.Popen(cmd, cwd=CODE, env=env, stdout=log, stderr=subprocess.STDOUT), log


def _logged_iteration(job):
    """The last iteration an unfinished run logged (train_terms.csv, every --log_interval; cheap, no torch load).
    Its last.pth may be a few iterations later (saved on SIGTERM); the trainer's log names the exact one."""
    logged = 0
    for name in ("train_terms.csv", "val_curve.csv"):
        path = os.path.join(job["folder"], name)
        if os.path.isfile(path):
            with open(path) as f:
                rows = f.read().split()
            if len(rows) > 1:
                logged = max(logged, int(float(rows[-1].split(",")[0])))
    return logged


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
    for job in jobs:
        lost = missing_files(job)
        if lost:  # a finished run whose folder lost files: evaluate it again, or train it as a new attempt
            again = os.path.isfile(final_model(job))
            print(f"{os.path.basename(job['folder'])}: marked done but {', '.join(lost)} are gone; "
                  f"{'evaluating it again' if again else 'training it again (a new attempt)'}")
            recorded = (state_of(job)[1].get("attempt") in
                        attempts_of(read_ledger(preset_folder(job)), os.path.basename(job["folder"])))
            if again or not recorded:
                write_state(job, "interrupted")
            else:  # the ledger keeps its scores; what is left of its files goes beside them
                set_aside(job, state_of(job)[1]["attempt"])
        if state_of(job)[0] == "done":
            if args.rerun:
                print(f"{os.path.basename(job['folder'])}: attempt {archive_attempt(job)} moved to attempts/; "
                      f"training it again (--rerun)")
            else:
                record_attempt(job, state_of(job)[1].get("wall_seconds", 0.0))  # (finished before the ledger)
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
            holder = worker_holding(job["folder"])
            if holder:  # another invocation of this sweep trains it: leave it to that one
                print(f"[{i}/{n}] {os.path.basename(job['folder'])}: busy: PID {holder} (another invocation) "
                      f"trains it; skipped", flush=True)
                results[job["folder"]] = "busy"
                continue
            gpu = slots.pop(0)
            state, _ = state_of(job)
            unfinished = state in ("interrupted", "training", "failed")
            note = (f"resuming from last.pth (logged to iteration {_logged_iteration(job)})" if unfinished
                    else "starting")
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
            if proc.returncode and worker_holding(job["folder"]):
                state = "busy"  # another invocation's worker took it first: its state is that worker's to write
            elif proc.returncode:
                write_state(job, "failed", returncode=proc.returncode)
            results[job["folder"]] = state
            print(f"[{i}/{n}] {os.path.basename(job['folder'])}: {state} after {time.time() - t0:.0f} s"
                  + (f" (see {os.path.join(job['folder'], 'worker.log')})" if state == "failed" else "")
                  + f"; {len(queue) + len(running)} left", flush=True)
    failed = [f for f, s in results.items() if s == "failed"]
    unfinished = [f for f, s in results.items() if s in ("interrupted", "busy")]
    if unfinished:
        print(f"{len(unfinished)} run(s) stopped by --max_run_iterations or trained by another invocation; run the "
              f"same command again to continue")
    if failed:
        raise UsageError(f"{len(failed)} run(s) failed: {', '.join(os.path.basename(f) for f in failed)}; see "
                         f"their worker.log, fix, and run the same command again")
    if not unfinished:
        print(f"all {len(jobs)} runs done; tables: python code/summarize_experiments.py "
              f"{os.path.join(os.path.abspath(args.out), preset.name)}")
    return results


if __name__ == "__main__":
    run_main(main)
