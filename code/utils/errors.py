"""The errors an entry script reports as one line (run_main in utils/config.py), in one place, and one_line,
which turns any exception into the one line such a message quotes.

Each message names the file or flag at fault and what to do about it. DataError (a data file or list that
cannot be used) lives in dataloaders/dataset.py, below this layer.
"""


class UsageError(ValueError):
    """A bad flag or input; printed as one line, exit code 2."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model; exit code 2."""


class WriteError(UsageError):
    """A file that could not be written whole (full disk, read-only folder, a writer's own failure); the message
    names the file, the reason and the fix, and the previous file is intact (utils/safe_write.py). Exit code 2,
    as a UsageError: the fix is the user's."""


class NonFiniteLoss(RuntimeError):
    """Raised inside a step by TrainingRun.backward_step: the step is skipped (weights untouched)."""


class TooManyNonFinite(RuntimeError):
    """The run stopped on non-finite losses or a non-finite model state; exit code 3."""


class RunInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: the step finished and last.pth was saved; exit code 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def one_line(exc, limit=120, last=False, with_type=False):
    """An exception as one line for a message: its first (or last) non-empty line, or its type's name when it has
    none (MemoryError(), a bare EOFError): a message may be empty, so its lines are never indexed blindly."""
    lines = [l.strip() for l in str(exc).splitlines() if l.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1 if last else 0][:limit]
    return f"{type(exc).__name__}: {line}" if with_type else line
