"""The errors an entry script reports as one line (run_main in utils/config.py), in one place.

Each message names the file or flag at fault and what to do about it. DataError (a data file or list that
cannot be used) lives in dataloaders/dataset.py, below this layer.
"""


class UsageError(ValueError):
    """A bad flag or input; printed as one line, exit code 2."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, cannot be written, or does not fit the model; exit code 2."""


class NonFiniteLoss(RuntimeError):
    """Raised inside a step by TrainingRun.backward_step: the step is skipped (weights untouched)."""


class TooManyNonFinite(RuntimeError):
    """The run stopped on non-finite losses or a non-finite model state; exit code 3."""


class RunInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: the step finished and last.pth was saved; exit code 128 + the signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
