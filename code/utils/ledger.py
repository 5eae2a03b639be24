"""A preset's ledger: every finished attempt of every run, appended, never rewritten.

`<preset folder>/ledger.jsonl` holds one JSON object per finished attempt: the run (`<method>_<labelnum>_seed<seed>`),
its attempt number, provenance (code commit and hash, machine, data fingerprint, seconds; utils/provenance.py), the
val curve and the best and final checkpoints' scores. A rerun of a finished run (run_experiments.py --rerun)
moves the old attempt's files to `<run>/attempts/<n>/` and appends the new attempt: both stay results.
An attempt known only from its recorded scores (a curve, or only best and final; its folder is gone) is
`"summary_only": true`; it counts in a method's spread of run means but cannot join the patient-level statistics.
"""
import csv
import json
import os
import time

from utils.errors import UsageError

try:
    import fcntl
except ImportError:
    fcntl = None

LEDGER = "ledger.jsonl"
METRICS = ("dice", "jaccard", "hd95", "asd")


def ledger_path(preset_folder):
    return os.path.join(preset_folder, LEDGER)


def read_ledger(preset_folder):
    """-> [entry] in the order they were appended; a damaged line stops with one line naming it."""
    path = ledger_path(preset_folder)
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}: line {n} is not a JSON object ({e.msg}); restore the file from git "
                                 f"(git checkout -- {path}) or remove that line by hand") from None
            if not isinstance(entry, dict) or "run" not in entry or "attempt" not in entry:
                raise UsageError(f"{path}: line {n} is not a ledger entry (needs 'run' and 'attempt'); restore the "
                                 f"file from git or remove that line by hand")
            entries.append(entry)
    return entries


def append_entry(preset_folder, entry):
    """Append one entry as one line (one write under an exclusive lock, then fsync)."""
    path = ledger_path(preset_folder)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"{path}: cannot be written ({e.strerror}); free disk space or make the folder writable") \
            from None
    start = None
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        start = os.lseek(fd, 0, os.SEEK_END)  # under the lock: where this entry begins
        if os.write(fd, line) != len(line):
            raise OSError(28, "short write")
        os.fsync(fd)
    except BaseException as e:  # a part-written line would stop every later read_ledger: cut it off again
        fix = "free disk space and run the same command again"
        if start is not None:
            try:
                os.ftruncate(fd, start)
            except OSError:
                fix = (f"remove its last, incomplete line by hand (it starts at byte {start}), free disk space and "
                       f"run the same command again")
        if not isinstance(e, OSError):
            raise
        raise UsageError(f"{path}: the entry of {entry['run']} attempt {entry['attempt']} could not be appended "
                         f"({e.strerror}); {fix}") from None
    finally:
        os.close(fd)


def attempts_of(entries, run):
    return sorted(e["attempt"] for e in entries if e["run"] == run)


def next_attempt(entries, run):
    return max(attempts_of(entries, run), default=0) + 1


def attempt_folder(run_folder, attempt, current_attempt):
    """Where an attempt's files are: the run folder for its current attempt, else <run>/attempts/<n>/."""
    return run_folder if attempt == current_attempt else os.path.join(run_folder, "attempts", str(attempt))


def _read_curve(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _checkpoint_scores(folder, prefix):
    """{iteration, dice, jaccard, hd95, asd} of `<prefix>val_summary.json` (test_ACDC.py), or None."""
    path = os.path.join(folder, f"{prefix}val_summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        s = json.load(f)
    return {"iteration": s.get("iteration"), **{k: s["mean"][k]["mean"] for k in METRICS}}


def _merged(segments, key):
    """The value of `key` over provenance segments: one value, or the list of distinct values when they differ."""
    values = []
    for s in segments:
        v = s.get(key)
        if v not in values:
            values.append(v)
    return values[0] if len(values) == 1 else values


def entry_for(job, attempt, wall_seconds):
    """The ledger entry of a finished run: job["provenance"] (the segments of its provenance.json), its folder's
    val_curve.csv and the best/final checkpoints' val summaries."""
    folder = job["folder"]
    segments = job.get("provenance") or []
    return {"run": os.path.basename(folder), "attempt": attempt, "preset": job["preset"], "method": job["method"],
            "labelnum": job["labelnum"], "seed": job["seed"], "split": job["split"],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "train_argv": job["train_argv"],
            "code_commit": _merged(segments, "code_commit"), "code_dirty": _merged(segments, "code_dirty"),
            "code_hash": _merged(segments, "code_hash"), "machine": _merged(segments, "machine"),
            "data_fingerprint": _merged(segments, "data_fingerprint"),
            "train_seconds": round(sum(s.get("seconds", 0.0) for s in segments), 1),
            "wall_seconds": round(wall_seconds, 1), "provenance": segments,
            "curve": _read_curve(os.path.join(folder, "val_curve.csv")),
            "best": _checkpoint_scores(folder, ""), "final": _checkpoint_scores(folder, "final_"),
            "summary_only": False}
