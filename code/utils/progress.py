"""A run's progress record: its logged loss terms (`train_terms.csv`) and `progress.png`, the loss terms and
val Dice against iteration (after nnU-Net's progress plot), redrawn at every validation."""
import csv
import os

from utils.checkpoint import atomic_write_text


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

    atomic_write_text(path, write)


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
    fig.savefig(path + ".tmp.png", dpi=80)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
