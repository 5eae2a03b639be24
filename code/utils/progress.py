"""A run's progress record: its logged loss terms (`train_terms.csv`) and `progress.png`, the loss terms and
val Dice against iteration (after nnU-Net's progress plot), redrawn at every validation; and the progress display
of the scripts that loop over many items (`progress`: a bar on a terminal, plain lines in a file)."""
import csv
import math
import os
import sys

from tqdm import tqdm

from utils.safe_write import write_file, write_text


def on_terminal(stream):
    """Whether `stream` is an interactive terminal. A tqdm bar redraws itself with carriage returns; in a file or
    a pipe (`> run.log`, run_experiments.py's worker.log) its frames pile up into one line thousands of characters
    long, so the bar is shown on a terminal only."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(items, desc, stream=None, lines=10, disable=False):
    """Iterate over `items` (a sized collection) showing how far the loop is on `stream` (default: sys.stderr):
    a tqdm bar on a terminal; elsewhere a plain line "desc: i/n" after about every n/lines items and after the
    last, so a log file gets a few readable lines. disable: show nothing."""
    stream = sys.stderr if stream is None else stream
    if disable:
        yield from items
        return
    if on_terminal(stream):
        yield from tqdm(items, desc=desc, ncols=80, file=stream)
        return
    n = len(items)
    every = max(1, math.ceil(n / lines))
    for i, item in enumerate(items, 1):
        yield item
        if i % every == 0 or i == n:
            print(f"{desc}: {i}/{n}", file=stream, flush=True)


class TermsLog:
    """train_terms.csv: one row per log line (iteration + every logged term). Resuming at iteration `start`
    keeps the rows up to it and drops those logged after the checkpoint, so the file matches the weights."""

    def __init__(self, path, start):
        self.path, self.rows = path, []
        if start and os.path.isfile(path):
            with open(path, newline="") as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            self.rows = [r for r in self.rows if r["iteration"] <= start]
        self._write()

    def append(self, iteration, values):
        self.rows.append({"iteration": iteration, **values})
        self._write()

    def _write(self):
        write_csv(self.path, self.rows)


def write_csv(path, rows):
    """rows (dicts; the columns are every key in order of appearance) -> path, atomically."""
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["iteration"]

    def write(f):
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)

    write_text(path, write)


def plot_progress(path, terms, curve):
    """terms: TermsLog rows; curve: val rows (iteration, dice, ...) -> a two-panel PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [k for k in dict.fromkeys(k for r in terms for k in r) if k != "iteration"
             and not k.startswith(("info/", "tau/", "diag/"))]
    for k in names:
        pts = [(r["iteration"], r[k]) for r in terms if k in r]
        ax_loss.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=1)
    ax_loss.set(xlabel="iteration", ylabel="loss term", title="training loss terms")
    if names:
        ax_loss.legend(fontsize=7, ncol=2)
    ax_val.plot([r["iteration"] for r in curve], [100 * r["dice"] for r in curve], "o-", color="tab:red")
    ax_val.set(xlabel="iteration", ylabel="mean Dice (%)", title="validation: mean foreground Dice")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_file(path, lambda tmp: fig.savefig(tmp, dpi=80))
    finally:
        plt.close(fig)
