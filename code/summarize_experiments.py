"""Tables, significance tests and figures of a preset's runs (run_experiments.py writes them).

    python code/summarize_experiments.py model/experiments/cpu-acdc [--against diffrect]

Writes into that folder:
- `results.csv`: one row per method x label budget x evaluated split x checkpoint (best on val, final) x
  metric x class ("mean" = over the foreground classes): mean and std over seeds, the number of seeds;
- `results.md`: the same as tables (Dice and Jaccard in %, HD95 and ASD in voxels or mm as evaluated), with the
  p-value of a paired Wilcoxon signed-rank test of each method against `--against` on the per-case mean Dice
  of matching seeds and cases (scipy.stats.wilcoxon, two-sided);
- `figures/val_dice.png` (val mean Dice against iteration: mean over seeds, band from min to max) and
  `figures/dice_bars.png` (best-checkpoint Dice per method, error bars one std over seeds).

A seed's value is the mean over cases of the per-case mean over classes; for datasets with two splits
(MS-CMRSEG19, Prostate) each seed's value is first averaged over the splits, as the paper does. The std is
the sample std over seeds (ddof=1); with one seed it is left empty.
"""
import argparse
import csv
import glob
import json
import os
from collections import defaultdict

import numpy as np

from utils.config import UsageError, run_main

METRICS = ("dice", "jaccard", "hd95", "asd")
PERCENT = ("dice", "jaccard")
CHECKPOINTS = (("best", ""), ("final", "final_"))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a preset's folder, e.g. model/experiments/cpu-acdc")
    p.add_argument("--against", default=None, help="the method the others are tested against (default: the "
                   "preset's, diffrect)")
    return p.parse_args(argv)


def read_per_case(path):
    """-> {case: {class: {metric: value}}} from a test_ACDC.py per-case CSV."""
    out = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out[row["case"]][row["class"]] = {m: float(row[m]) for m in METRICS}
    return dict(out)


def case_means(per_case, metric):
    """-> {case: mean over classes of metric}."""
    return {c: float(np.mean([v[metric] for v in classes.values()])) for c, classes in per_case.items()}


def load_runs(folder):
    runs = []
    for path in sorted(glob.glob(os.path.join(folder, "*", "run.json"))):
        with open(path) as f:
            job = json.load(f)
        if job.get("state") != "done":
            continue
        job["folder"] = os.path.dirname(os.path.abspath(path))  # where it is now (run.json names where it ran)
        job["evals"] = {}
        for kind, prefix in CHECKPOINTS:
            for split in job.get("splits", ["val"]):
                csv_path = os.path.join(job["folder"], f"{prefix}{split}_per_case.csv")
                if os.path.isfile(csv_path):
                    job["evals"][(kind, split)] = read_per_case(csv_path)
        curve = os.path.join(job["folder"], "val_curve.csv")
        with open(curve, newline="") as f:
            job["curve"] = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
        runs.append(job)
    return runs


def seed_values(runs, method, labelnum, kind, split, metric, cls="mean"):
    """-> {seed: value}: each seed's mean over cases (of the class mean, or of one class), averaged over the
    dataset splits it was run on."""
    by_seed = defaultdict(list)
    for r in runs:
        if r["method"] != method or r["labelnum"] != labelnum or (kind, split) not in r["evals"]:
            continue
        per_case = r["evals"][(kind, split)]
        vals = case_means(per_case, metric).values() if cls == "mean" else \
            [classes[cls][metric] for classes in per_case.values() if cls in classes]
        by_seed[r["seed"]].append(float(np.mean(list(vals))))
    return {s: float(np.mean(v)) for s, v in sorted(by_seed.items())}


def mean_std(values):
    v = np.array(list(values), dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else float("nan")), len(v)


def paired_cases(runs, method, against, labelnum, kind, split):
    """-> (x, y): per-case mean Dice of `method` and `against` on the same (seed, dataset split, case)."""
    table = defaultdict(dict)
    for r in runs:
        if r["labelnum"] == labelnum and r["method"] in (method, against) and (kind, split) in r["evals"]:
            for case, v in case_means(r["evals"][(kind, split)], "dice").items():
                table[(r["seed"], r["split"], case)][r["method"]] = v
    keys = sorted(k for k, v in table.items() if method in v and against in v)
    return np.array([table[k][method] for k in keys]), np.array([table[k][against] for k in keys])


def wilcoxon_p(x, y):
    """Two-sided paired Wilcoxon signed-rank p-value; nan when it is undefined (no pairs, or all equal)."""
    from scipy.stats import wilcoxon

    if len(x) == 0 or np.all(x == y):
        return float("nan")
    return float(wilcoxon(x, y).pvalue)


def summarize(runs, against):
    """-> (rows for results.csv, groups) with groups[(labelnum, kind, split)] = [(method, row dict)]."""
    rows, groups = [], defaultdict(list)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    keys = sorted({(r["labelnum"], kind, split) for r in runs for kind, split in r["evals"]},
                  key=lambda k: (k[2] != "val", k[1] != "best", k[0]))
    for labelnum, kind, split in keys:
        for method in methods:
            classes = next((list(next(iter(r["evals"][(kind, split)].values()))) for r in runs
                            if r["method"] == method and r["labelnum"] == labelnum and (kind, split) in r["evals"]),
                           None)
            if classes is None:
                continue
            entry = {}
            for metric in METRICS:
                for cls in ["mean", *classes]:
                    m, s, n = mean_std(seed_values(runs, method, labelnum, kind, split, metric, cls).values())
                    entry[(metric, cls)] = (m, s, n)
                    rows.append({"method": method, "labelnum": labelnum, "split": split, "checkpoint": kind,
                                 "metric": metric, "class": cls, "mean": m, "std": s, "seeds": n})
            p = wilcoxon_p(*paired_cases(runs, method, against, labelnum, kind, split)) if method != against \
                else float("nan")
            entry["p"] = p
            entry["classes"] = classes
            for r in rows[-len(METRICS) * (len(classes) + 1):]:
                r[f"p_wilcoxon_vs_{against}"] = p
            groups[(labelnum, kind, split)].append((method, entry))
    return rows, groups


def _fmt(m, s, metric):
    scale = 100.0 if metric in PERCENT else 1.0
    return f"{scale * m:.2f}" + ("" if np.isnan(s) else f" ± {scale * s:.2f}")


def write_markdown(path, groups, against, preset):
    lines = [f"# {preset}: mean ± std over seeds", "",
             "Dice and Jaccard in %, HD95 and ASD as evaluated (voxels unless --use_spacing); p: paired Wilcoxon "
             f"signed-rank test against {against} on per-case mean Dice of matching seeds.", ""]
    for (labelnum, kind, split), entries in groups.items():
        classes = entries[0][1]["classes"]
        lines += [f"## {split}, {'best-on-val' if kind == 'best' else 'final'} checkpoint, --labelnum {labelnum}", "",
                  "| method | Dice | Jaccard | HD95 | ASD | " + " | ".join(f"{c} Dice" for c in classes)
                  + f" | seeds | p vs {against} |",
                  "|---" * (7 + len(classes)) + "|"]
        for method, e in entries:
            cells = [_fmt(*e[(m, "mean")][:2], m) for m in METRICS]
            cells += [_fmt(*e[("dice", c)][:2], "dice") for c in classes]
            p = "–" if np.isnan(e["p"]) else f"{e['p']:.3g}"
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {e[('dice', 'mean')][2]} | {p} |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_figures(folder, runs, groups):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in runs))
    labelnums = sorted({r["labelnum"] for r in runs})
    fig, axes = plt.subplots(1, len(labelnums), figsize=(6 * len(labelnums), 4.5), squeeze=False)
    for ax, labelnum in zip(axes[0], labelnums):
        for method in methods:
            curves = defaultdict(lambda: defaultdict(list))  # seed -> iteration -> [dice per dataset split]
            for r in runs:
                if r["method"] == method and r["labelnum"] == labelnum:
                    for row in r["curve"]:
                        curves[r["seed"]][int(row["iteration"])].append(100 * row["dice"])
            if not curves:
                continue
            its = sorted(set.intersection(*(set(c) for c in curves.values())))
            vals = np.array([[np.mean(c[i]) for i in its] for c in curves.values()])  # (seeds, iterations)
            seeds = f"{len(vals)} seed" + ("s" if len(vals) != 1 else "")
            line, = ax.plot(its, vals.mean(0), "o-", ms=3, label=f"{method} ({seeds})")
            ax.fill_between(its, vals.min(0), vals.max(0), color=line.get_color(), alpha=0.2)
        ax.set(xlabel="iteration", ylabel="val mean Dice (%)", title=f"--labelnum {labelnum}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "val_dice.png"), dpi=90)
    plt.close(fig)

    bars = [(k, e) for k, e in groups.items() if k[1] == "best" and k[2] == "val"]
    fig, axes = plt.subplots(1, max(1, len(bars)), figsize=(6 * max(1, len(bars)), 4.5), squeeze=False)
    for ax, ((labelnum, _, _), entries) in zip(axes[0], bars):
        names = [m for m, _ in entries]
        means = [100 * e[("dice", "mean")][0] for _, e in entries]
        stds = [0.0 if np.isnan(e[("dice", "mean")][1]) else 100 * e[("dice", "mean")][1] for _, e in entries]
        ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set(ylabel="val mean Dice (%), best checkpoint", title=f"--labelnum {labelnum}: mean ± std over seeds")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "dice_bars.png"), dpi=90)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.folder):
        raise UsageError(f"{args.folder}: folder not found; pass a preset's folder under model/experiments")
    runs = load_runs(args.folder)
    if not runs:
        raise UsageError(f"{args.folder}: no finished runs (run.json with state done); run run_experiments.py first")
    against = args.against or "diffrect"
    if against not in {r["method"] for r in runs}:
        raise UsageError(f"--against {against}: no finished run of that method in {args.folder}")
    rows, groups = summarize(runs, against)
    with open(os.path.join(args.folder, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    preset = os.path.basename(os.path.normpath(args.folder))
    write_markdown(os.path.join(args.folder, "results.md"), groups, against, preset)
    write_figures(os.path.join(args.folder, "figures"), runs, groups)
    with open(os.path.join(args.folder, "results.md")) as f:
        print(f.read())
    print(f"wrote results.md, results.csv and figures/ to {args.folder} ({len(runs)} finished runs)")
    return rows


if __name__ == "__main__":
    run_main(main)
