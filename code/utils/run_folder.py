"""A run's snapshot folder is its identity: one writer at a time, and a resume only of the same run.

- `RESUMABLE_FLAGS` may differ between the run saved in last.pth and the command that resumes it (how long,
  how often, where, on what device); any other flag, another training script, or other data (the config's
  `data_fingerprint`, utils/provenance.py) defines another run and the resume is refused before anything is
  written.
- `FolderLock`: an exclusive OS lock (flock) on `<folder>/.lock`, released when the process ends however it
  ends; a second process on the same folder stops with the holder's PID. Under it, the half-written files a
  killed run left (`.tmp-*`, `*.tmp`) are removed.
"""
import glob
import json
import os

from utils.errors import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: no lock (Windows users: one run per folder is then on you)
    fcntl = None

RESUMABLE_FLAGS = ("max_iterations", "max_run_iterations", "val_interval", "checkpoint_interval", "log_interval",
                   "image_interval", "save_images", "num_workers", "resume", "no_resume", "max_nonfinite", "gpu",
                   "root_path", "exp", "snapshot_dir", "deterministic", "compile")


def _plain(value):
    return json.loads(json.dumps(value))  # tuples/lists and numbers compare as the saved config.json does


def differing_flags(saved, current):
    """-> [(name, saved value, current value)] of the run-defining settings that differ. A setting the saved
    run does not record (an older version of the code) is not compared."""
    return [(k, saved[k], current.get(k)) for k in sorted(set(saved) - set(RESUMABLE_FLAGS))
            if k in current and _plain(saved[k]) != _plain(current[k])]


def check_same_run(saved, current, path):
    """Raise UsageError naming every differing flag when `current` (vars(args)) is not the run saved in `path`."""
    diff = differing_flags(saved, current)
    if not diff:
        return
    if any(k == "data_fingerprint" for k, _, _ in diff):  # the data changed under the run (or another dataset)
        raise UsageError(f"{path} was trained on other data: the dataset at --root_path {current.get('root_path')} "
                         f"is not the one the run started on (lists, file sizes or sampled contents differ); point "
                         f"--root_path at the run's data, or start a new run in another folder (--exp or "
                         f"--snapshot_dir)")
    shown = ", ".join(f"the training script {a} (now {b})" if k == "script" else f"--{k} {_show(a)} (now {_show(b)})"
                      for k, a, b in diff)
    raise UsageError(f"{path} is another run: it has {shown}. Resume it with its own flags, or start this one in "
                     f"another folder (--exp or --snapshot_dir); flags that may change on resume: "
                     f"{', '.join('--' + f for f in RESUMABLE_FLAGS)}")


def _show(v):
    return " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


class FolderLock:
    """Exclusive lock on a snapshot folder for this process; `release()` (or process exit) frees it."""

    def __init__(self, folder):
        self.path, self.fd = os.path.join(folder, ".lock"), None
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise UsageError(f"{folder}: cannot write in the snapshot folder ({e.strerror}); make it writable or "
                             f"choose another --snapshot_dir / --exp") from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            self.fd = None
            raise UsageError(f"{folder}: another training process (PID {holder}) is writing this run; wait for it, "
                             f"stop it, or use another --exp / --snapshot_dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        for stale in glob.glob(os.path.join(folder, ".tmp-*")) + glob.glob(os.path.join(folder, "*.tmp")):
            os.unlink(stale)  # left by a killed writer; nobody else writes here while we hold the lock

    def release(self):
        if self.fd is not None:
            if fcntl is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.release()
