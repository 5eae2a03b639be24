"""Tables, statistics and figures of a preset's runs (run_experiments.py writes them).

    python code/summarize_experiments.py model/experiments/cpu-acdc [--against diffrect]
    python code/summarize_experiments.py model/experiments/cpu-acdc --exclude diffrect_3_seed1337:1 --why "..."

Every finished attempt of every run is a sample: the attempts in the preset's `ledger.jsonl` (run_experiments.py
appends each one) and any finished run folder not yet in it. The unit of every statistic is the patient: a
run's per-case scores are averaged over each patient's frames (ACDC: ED and ES) and classes first
(utils/statistics.py). Per method: the mean and a 95 % CI from a hierarchical bootstrap (runs, then patients);
against `--against`: the mean difference with its 95 % CI, the probability of improvement, and a paired
Wilcoxon test over patients of run-averaged scores, Holm-corrected over the table's comparisons; over the
bootstrap samples, how often each method ranks 1st, 2nd, ...

`supervised-full` (every label) is the upper bound of every label budget's table; it is not ranked.

Checkpoints: on a dataset without a test split the final checkpoint is the primary table (nothing was selected
on the cases it is scored on); best-on-val follows, labelled as selected on those same cases. With a test split,
best-on-val scored on test is primary.

An attempt known only from its recorded curve (`summary_only` in the ledger), or whose per-case files are gone,
counts in its method's spread of run means with the ledger's scores and is listed under the table; without
per-case scores it cannot join the patient-level statistics.
Excluding an attempt needs `--exclude RUN:ATTEMPT --why "..."`; exclusions are printed under the table. Runs of
one method with different run-defining flags are refused; runs of one method from several code versions or
machines are marked.

Writes into the folder: `results.csv` (every method x label budget x split x checkpoint x metric x class),
`results.md`, `ranks.csv`, and `figures/` (val_dice.png, dice_bars.png, forest.png, ranks.png).
"""
import argparse
import csv
import glob
import json
import os
from collections import defaultdict

import numpy as np

from utils.checkpoint import atomic_write_text
from utils.config import SEED, UsageError, run_main
from utils.ledger import attempt_folder, read_ledger
from utils.provenance import machine_label
from utils.statistics import (hierarchical_bootstrap, holm, patient_scores, percentile_ci, probability_of_improvement,
                              rank_distribution, score_matrix, wilcoxon_patients)
from utils.summary_figures import UPPER_BOUNDS, write_figures  # UPPER_BOUNDS: in each budget's table, not ranked

METRICS = ("dice", "jaccard", "hd95", "asd")
PERCENT = ("dice", "jaccard")
LOWER_IS_BETTER = ("hd95", "asd")
CHECKPOINTS = (("best", ""), ("final", "final_"))
NOT_RUN_DEFINING = ("--seed", "--snapshot_dir", "--root_path", "--gpu", "--max_run_iterations")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="a preset's folder, e.g. model/experiments/cpu-acdc")
    p.add_argument("--against", help="the method the others are compared with (default: diffrect; while it has no "
                   "finished run, the tables have no differences)")
    p.add_argument("--exclude", action="append", default=[], metavar="RUN:ATTEMPT",
                   help="leave one attempt out, e.g. diffrect_3_seed1337:1 (repeatable; needs --why)")
    p.add_argument("--why", action="append", default=[], help="the reason for each --exclude (one for all, or one "
                   "per --exclude, in order); printed under the table")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap samples")
    p.add_argument("--bootstrap_seed", type=SEED, default=0, help="seed of the bootstrap (tables repeat exactly)")
    args = p.parse_args(argv)
    if args.exclude and len(args.why) not in (1, len(args.exclude)):
        raise UsageError(f"--exclude given {len(args.exclude)} times: give one --why for all, or one per --exclude")
    if args.why and not args.exclude:
        raise UsageError("--why without --exclude: name the attempt to leave out (--exclude RUN:ATTEMPT)")
    if args.bootstrap < 100:
        raise UsageError(f"--bootstrap {args.bootstrap}: use at least 100 samples (default 10000)")
    return args


# ---------------------------------------------------------------------------------------------------- loading
def read_per_case(path):
    """-> {case: {class: {metric: value}}} from a test_ACDC.py per-case CSV; a damaged file stops with one line."""
    out = defaultdict(dict)
    try:
        with open(path, newline="") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                out[row["case"]][row["class"]] = {m: float(row[m]) for m in METRICS}
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"{path}: damaged per-case table (line {n}: {type(e).__name__} {e}); evaluate the "
                         f"checkpoint again: python code/test_ACDC.py --checkpoint <its .pth> --root_path <data>") \
            from None
    return dict(out)


def read_curve(path):
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]
    except FileNotFoundError:
        raise UsageError(f"{path}: missing; the run's validation curve is lost: restore it from git, or rerun the "
                         f"run (run_experiments.py --rerun)") from None
    except ValueError as e:
        raise UsageError(f"{path}: damaged ({e}); restore it from git, or rerun the run (run_experiments.py "
                         f"--rerun)") from None


def _read_run_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: damaged ({getattr(e, 'msg', e)}); restore it from git (git checkout -- {path}) "
                         f"or delete the run folder to train it again") from None


def _check_voxels(path, folder, kind, split, run_json):
    """A per-case CSV counts only as the experiments runner scored it: HD95/ASD in voxels, like every other run's.
    Its `{prefix}{split}_summary.json` (test_ACDC.py writes both) says so; none there (an old copy): accepted."""
    summary_path = path.replace("_per_case.csv", "_summary.json")
    if not os.path.isfile(summary_path):
        return
    try:
        with open(summary_path) as f:
            summary = json.load(f)
        units = summary.get("units")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise UsageError(f"{summary_path}: damaged ({getattr(e, 'msg', e)}); restore it from git, or run "
                         f"run_experiments.py on this preset again to re-evaluate") from None
    if units != "voxels":
        model = run_json.get("model", "unet")
        checkpoint = summary.get("checkpoint") or os.path.join(folder, f"{model}_{kind}_model.pth")
        root = summary.get("root_path") or run_json.get("root_path") or "<the preset's data>"
        raise UsageError(f"{path}: scored in {units or 'unrecorded units'} (test_ACDC.py --use_spacing?), not in "
                         f"voxels like the sweep's other runs; score it again without --use_spacing: python "
                         f"code/test_ACDC.py --checkpoint {checkpoint} --root_path {root} --split {split}")


def _evals(folder, archived=False):
    """{(checkpoint, split): per-case scores} of the per-case CSVs in an attempt's folder: none (its files are gone),
    or every checkpoint x split its run.json's "splits" name (what run_experiments.py writes), in voxels."""
    run_json = {}
    if os.path.isfile(os.path.join(folder, "run.json")):
        run_json = _read_run_json(os.path.join(folder, "run.json"))
    splits = run_json.get("splits") or ["val"]
    paths = {(kind, split): os.path.join(folder, f"{prefix}{split}_per_case.csv")
             for kind, prefix in CHECKPOINTS for split in ("val", "test")}
    present = [k for k, p in paths.items() if os.path.isfile(p)]
    if not present:
        return {}
    splits = list(dict.fromkeys([*splits, *(split for _, split in present)]))
    for kind, prefix in CHECKPOINTS:
        for split in splits:
            if (kind, split) not in present:
                there = os.path.basename(paths[present[0]])
                fix = "restore it from git" if archived else \
                    "restore it from git, or run run_experiments.py on this preset again to re-evaluate"
                raise UsageError(f"{paths[(kind, split)]}: missing while {there} is there (a partial copy); {fix}")
    out = {}
    for key in present:
        _check_voxels(paths[key], folder, key[0], key[1], run_json)
        out[key] = read_per_case(paths[key])
    return out


def load_attempts(folder):
    """-> [attempt dict]: every ledger entry (its files from its folder), and every finished run folder the ledger
    lacks (a sweep from before the ledger, or a copied folder)."""
    entries = read_ledger(folder)
    current = {}  # run -> (its run.json, its current attempt)
    for path in sorted(glob.glob(os.path.join(folder, "*", "run.json"))):
        job = _read_run_json(path)
        if job.get("state") == "done":
            run = os.path.basename(os.path.dirname(path))
            known = [e["attempt"] for e in entries if e["run"] == run]
            current[run] = (job, job.get("attempt") or max(known, default=1))
    attempts = []
    for e in entries:
        a = {**e, "evals": {}, "in_ledger": True}
        if not e.get("summary_only"):
            run_json, now = current.get(e["run"], (None, None))
            where = attempt_folder(os.path.join(folder, e["run"]), e["attempt"], now)
            a["evals"] = _evals(where, archived=where != os.path.join(folder, e["run"])) if os.path.isdir(where) \
                else {}
            curve = os.path.join(where, "val_curve.csv")
            a["curve"] = read_curve(curve) if os.path.isfile(curve) else e.get("curve", [])
            if not a["evals"]:  # its files are gone: the ledger's own scores still count, like a summary-only one
                a.update(summary_only=True, source=f"its per-case files are missing from {where}; the ledger's "
                         f"scores count (restore the folder from git to bring them back)")
        attempts.append(a)
    in_ledger = {(e["run"], e["attempt"]) for e in entries}
    for run, (job, attempt) in current.items():
        if (run, attempt) not in in_ledger:
            where = os.path.join(folder, run)
            prov = []
            if os.path.isfile(os.path.join(where, "provenance.json")):
                with open(os.path.join(where, "provenance.json")) as f:
                    prov = json.load(f)
            attempts.append({"run": run, "attempt": attempt, "method": job["method"], "labelnum": job["labelnum"],
                             "seed": job["seed"], "split": job.get("split", ""), "train_argv": job["train_argv"],
                             "root_path": job.get("root_path"), "summary_only": False, "in_ledger": False,
                             "code_hash": prov[-1]["code_hash"] if prov else None,
                             "machine": prov[-1]["machine"] if prov else None,
                             "evals": _evals(where), "curve": read_curve(os.path.join(where, "val_curve.csv"))})
    return attempts


def apply_exclusions(attempts, exclude, why):
    """-> (kept attempts, [(run, attempt, reason)])."""
    reasons = why * len(exclude) if len(why) == 1 else why
    out, dropped = list(attempts), []
    for spec, reason in zip(exclude, reasons):
        run, _, n = spec.rpartition(":")
        if not run or not n.isdigit():
            raise UsageError(f"--exclude {spec}: write RUN:ATTEMPT, e.g. diffrect_3_seed1337:1")
        match = [a for a in out if a["run"] == run and a["attempt"] == int(n)]
        if not match:
            raise UsageError(f"--exclude {spec}: no attempt {n} of run {run} (see the ledger or results.md)")
        out = [a for a in out if a not in match]
        dropped.append((run, int(n), reason))
    return out, dropped


def check_same_flags(attempts):
    """Runs of one method must share every run-defining flag (all but seed, folder, data path, device)."""
    by_method = defaultdict(dict)
    for a in attempts:
        if a.get("train_argv"):
            flags, argv, i = [], a["train_argv"], 0
            while i < len(argv):
                j = i + 1
                while j < len(argv) and not argv[j].startswith("--"):
                    j += 1
                if argv[i] not in NOT_RUN_DEFINING:
                    flags.append(" ".join(argv[i:j]))
                i = j
            by_method[(a["method"], a["labelnum"])].setdefault(tuple(sorted(flags)), []).append(
                f"{a['run']}:{a['attempt']}")
    for (method, labelnum), variants in by_method.items():
        if len(variants) > 1:
            (f0, r0), (f1, r1) = list(variants.items())[:2]
            diff = sorted(set(f0) ^ set(f1))
            raise UsageError(f"{method} (--labelnum {labelnum}): its runs differ in run-defining flags ({'; '.join(diff)}:"
                             f" {r0[0]} vs {r1[0]}); averaging them would mix two protocols. Give one of them another "
                             f"method name, or leave the odd runs out with --exclude RUN:ATTEMPT --why \"...\"")


# ------------------------------------------------------------------------------------------------ statistics
def run_units(attempts):
    """Attempts of the dataset splits of one run (MS-CMRSEG19/Prostate: split1 + split2) joined into one unit:
    -> {(method, labelnum, seed, attempt): {"evals": {(kind, split): {case: ...}}, "attempts": [...]}}; case names
    of a split run get the split as prefix, so the two splits' patients stay apart."""
    units = {}
    for a in attempts:
        u = units.setdefault((a["method"], a["labelnum"], a["seed"], a["attempt"]), {"evals": {}, "attempts": []})
        u["attempts"].append(a)
        for key, per_case in a["evals"].items():
            prefix = f"{a['split']}/" if a.get("split") else ""
            u["evals"].setdefault(key, {}).update({prefix + c: v for c, v in per_case.items()})
    return units


def case_values(per_case, metric, cls):
    """{case: value}: the class mean (cls "mean", over the foreground classes) or one class."""
    if cls == "mean":
        return {c: float(np.mean([v[metric] for v in classes.values()])) for c, classes in per_case.items()}
    return {c: classes[cls][metric] for c, classes in per_case.items() if cls in classes}


def table_keys(units):
    """-> [(labelnum, checkpoint, split)] primary first: best-on-test where there is a test split, else final-on-val."""
    keys = {(lab, kind, split) for (m, lab, s, a), u in units.items() for kind, split in u["evals"]
            if m not in UPPER_BOUNDS}
    keys = keys or {(lab, kind, split) for (m, lab, s, a), u in units.items() for kind, split in u["evals"]}
    has_test = any(k[2] == "test" for k in keys)
    order = [("best", "test"), ("final", "test"), ("final", "val"), ("best", "val")] if has_test else \
        [("final", "val"), ("best", "val")]
    return sorted(keys, key=lambda k: (order.index(k[1:]), k[0]))


def primary(key, keys):
    return key[1:] == keys[0][1:]


def summarize(attempts, against, n_boot, seed):
    """-> (rows for results.csv, groups {key: {method: entry}}, ranks {key: {method: shares}}, boot {key: samples})."""
    units = run_units(attempts)
    keys = table_keys(units)
    methods = list(dict.fromkeys(a["method"] for a in attempts))
    rows, groups, ranks, boot = [], {}, {}, {}
    for key in keys:
        labelnum, kind, split = key
        # an upper bound (every label) joins the table of every label budget, as the reference it is
        members = {m: [(k, u) for k, u in units.items() if k[0] == m and (kind, split) in u["evals"]
                       and (k[1] == labelnum or m in UPPER_BOUNDS)] for m in methods}
        members = {m: v for m, v in members.items() if v}
        if not members:
            continue
        classes = list(next(iter(next(iter(members.values()))[0][1]["evals"][(kind, split)].values())))
        group = {}
        for metric in METRICS:
            for cls in ["mean", *classes]:
                runs = {m: [patient_scores(case_values(u["evals"][(kind, split)], metric, cls)) for _, u in v]
                        for m, v in members.items()}
                patients = sorted({p for rs in runs.values() for r in rs for p in r})
                mats = {m: score_matrix(rs, patients) for m, rs in runs.items()}
                samples = hierarchical_bootstrap(mats, n_boot, seed)  # same seed: the same resamples every metric
                better_high = metric not in LOWER_IS_BETTER
                for m, x in mats.items():
                    run_means = np.nanmean(x, axis=1)
                    e = {"mean": float(np.nanmean(x)), "ci": percentile_ci(samples[m]), "runs": len(x),
                         "run_means": run_means, "seeds": len({k[2] for k, _ in members[m]})}
                    if m != against and against in mats:
                        d = samples[m] - samples[against]
                        e.update(diff=e["mean"] - float(np.nanmean(mats[against])), diff_ci=percentile_ci(d),
                                 prob=probability_of_improvement(x, mats[against], better_high),
                                 p=wilcoxon_patients(x, mats[against]))
                    group.setdefault(m, {})[(metric, cls)] = e
                others = [m for m in mats if m != against and against in mats]
                for m, p in zip(others, holm([group[m][(metric, cls)]["p"] for m in others])):
                    group[m][(metric, cls)]["p_holm"] = float(p)
                if (metric, cls) == ("dice", "mean"):
                    ranks[key] = rank_distribution({m: v for m, v in samples.items() if m not in UPPER_BOUNDS})
                    boot[key] = samples
        for m, entry in group.items():
            entry["classes"] = classes
            entry["attempts"] = [a for _, u in members[m] for a in u["attempts"]]
            for (metric, cls), e in ((k, v) for k, v in entry.items() if isinstance(k, tuple)):
                rm = e["run_means"]
                rows.append({"method": m, "labelnum": labelnum, "split": split, "checkpoint": kind,
                             "primary": primary(key, keys), "metric": metric, "class": cls, "mean": e["mean"],
                             "std": float(np.std(rm, ddof=1)) if len(rm) > 1 else float("nan"),
                             "seeds": e["seeds"], "runs": e["runs"], "ci95_low": e["ci"][0], "ci95_high": e["ci"][1],
                             "against": against, "diff": e.get("diff", float("nan")),
                             "diff_ci95_low": e.get("diff_ci", (float("nan"),) * 2)[0],
                             "diff_ci95_high": e.get("diff_ci", (float("nan"),) * 2)[1],
                             "prob_improvement": e.get("prob", float("nan")), "p_wilcoxon": e.get("p", float("nan")),
                             "p_holm": e.get("p_holm", float("nan"))})
        groups[key] = group
    return rows, groups, ranks, boot, keys


# ------------------------------------------------------------------------------------------------- reporting
def summary_only_values(attempts, method, labelnum, kind, split):
    """Dice of the summary-only attempts of a method at this checkpoint (they are val scores)."""
    if split != "val":
        return []
    return [a[kind]["dice"] for a in attempts if a.get("summary_only") and a["method"] == method
            and a["labelnum"] == labelnum and a.get(kind) and a[kind].get("dice") is not None]


def provenance_notes(attempts):
    """-> {method: note} for methods whose attempts come from several code hashes or machines."""
    notes = {}
    for m in dict.fromkeys(a["method"] for a in attempts):
        mine = [a for a in attempts if a["method"] == m and not a.get("summary_only")]
        hashes = defaultdict(int)
        machines = defaultdict(int)
        for a in mine:
            for h in (a.get("code_hash") if isinstance(a.get("code_hash"), list) else [a.get("code_hash")]):
                hashes[h or "unknown"] += 1
            for mach in (a.get("machine") if isinstance(a.get("machine"), list) else [a.get("machine")]):
                machines[machine_label(mach)] += 1
        parts = []
        if len(hashes) > 1:
            parts.append(f"{len(hashes)} code versions (" + "; ".join(f"{h} ×{n}" for h, n in hashes.items()) + ")")
        if len(machines) > 1:
            parts.append(f"{len(machines)} machines (" + "; ".join(f"{k} ×{n}" for k, n in machines.items()) + ")")
        if parts:
            notes[m] = " and ".join(parts)
    return notes


def _pct(v, metric):
    return f"{(100.0 if metric in PERCENT else 1.0) * v:.2f}"


def _ci(e, metric):
    return f"{_pct(e['mean'], metric)} [{_pct(e['ci'][0], metric)}, {_pct(e['ci'][1], metric)}]"


def _signed(v):
    """+1.23 / -0.004: two decimals, or one significant digit where two decimals would print a nonzero bound as
    ±0.00 (whether a CI reaches zero is what the reader looks for)."""
    text = f"{v:+.2f}"
    return f"{v:+.1g}" if v != 0 and float(text) == 0 else text


def _p(p):
    return "–" if p is None or np.isnan(p) else f"{p:.3g}"


def write_markdown(path, groups, keys, attempts, against, preset, dropped, notes, n_boot):
    lines = [f"# {preset}", "",
             "Unit: the patient (a run's per-case scores averaged over each patient's frames and the classes). "
             f"Mean [95 % CI]: hierarchical bootstrap over runs, then patients ({n_boot} samples). Δ: difference to "
             f"{against} [95 % CI] on the same bootstrap samples. P(better): share of patient × run pairs in which "
             f"the method beats {against}. p: paired Wilcoxon signed-rank test over patients of run-averaged Dice, "
             "Holm-corrected over the table's comparisons. Runs: every finished attempt of every seed. Dice and "
             "Jaccard in %, HD95 and ASD as evaluated (voxels unless --use_spacing).", ""]
    if not any(against in group for group in groups.values()):
        lines += [f"No finished run of {against} yet: no differences (Δ, P(better), p) until it has one.", ""]
    for key in keys:
        if key not in groups:
            continue
        labelnum, kind, split = key
        group = groups[key]
        classes = next(iter(group.values()))["classes"]
        what = {("final", "val"): "final checkpoint (nothing selected on these cases)",
                ("best", "val"): "best-on-val checkpoint — selected on the same val cases it is scored on",
                ("best", "test"): "best-on-val checkpoint scored on test",
                ("final", "test"): "final checkpoint"}[(kind, split)]
        lines += [f"## {'Primary: ' if primary(key, keys) else ''}{split}, {what}, --labelnum {labelnum}", "",
                  f"| method | runs | Dice [95 % CI] | Δ Dice vs {against} [95 % CI] | P(better) | p (Holm) | run means: "
                  "sd (min–max) | Jaccard | HD95 | ASD | " + " | ".join(f"{c} Dice" for c in classes) + " |",
                  "|---" * (10 + len(classes)) + "|"]
        order = sorted(group, key=lambda m: -group[m][("dice", "mean")]["mean"])
        for m in order:
            e = group[m]
            d = e[("dice", "mean")]
            extra = summary_only_values(attempts, m, labelnum, kind, split)
            means = list(100 * d["run_means"]) + [100 * v for v in extra]
            spread = f"{np.std(means, ddof=1):.2f} ({min(means):.2f}–{max(means):.2f})" if len(means) > 1 else "–"
            runs = f"{d['runs']}" + (f" + {len(extra)} summary-only" if extra else "")
            delta = "–" if "diff" not in d else \
                f"{_signed(100 * d['diff'])} [{_signed(100 * d['diff_ci'][0])}, {_signed(100 * d['diff_ci'][1])}]"
            prob = "–" if "prob" not in d else f"{d['prob']:.2f}"
            cells = [f"{m}{' †' if m in notes else ''}", runs, _ci(d, "dice"), delta, prob, _p(d.get("p_holm")),
                     spread] + [_pct(e[(metric, "mean")]["mean"], metric) for metric in METRICS[1:]] + \
                [_pct(e[("dice", c)]["mean"], "dice") for c in classes]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    summary_only = [a for a in attempts if a.get("summary_only")]
    if summary_only:
        lines += ["Summary-only attempts (no per-case files: in the run-mean spread, not in the bootstrap):", ""]
        for a in summary_only:
            best = a.get("best") or {}
            final = a.get("final") or {}
            lines.append(f"- {a['run']} attempt {a['attempt']}: best-on-val Dice "
                         f"{100 * best['dice']:.2f}" + (f", final {100 * final['dice']:.2f}" if final else "")
                         + f" — {a.get('source', '')}")
        lines.append("")
    if dropped:
        lines += ["Excluded:", ""] + [f"- {run} attempt {n}: {why}" for run, n, why in dropped] + [""]
    if notes:
        lines += ["† runs from more than one code version or machine (a CPU's kernels change a trajectory):", ""]
        lines += [f"- {m}: {note}" for m, note in notes.items()] + [""]
    not_in = [a for a in attempts if not a.get("in_ledger")]
    if not_in:
        lines += [f"Not in the ledger (run run_experiments.py on this preset to add them): "
                  f"{', '.join(a['run'] for a in not_in)}", ""]
    atomic_write_text(path, lambda f: f.write("\n".join(lines)))
    return "\n".join(lines)


def write_csv_rows(path, rows):
    def write(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write_text(path, write)


def write_ranks(path, ranks):
    rows = []
    for (labelnum, kind, split), shares in ranks.items():
        for m, s in shares.items():
            rows.append({"labelnum": labelnum, "split": split, "checkpoint": kind, "method": m,
                         "mean_rank": float(np.dot(np.arange(1, len(s) + 1), s)),
                         **{f"rank_{i + 1}": float(v) for i, v in enumerate(s)}})
    write_csv_rows(path, rows)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isdir(args.folder):
        raise UsageError(f"{args.folder}: folder not found; pass a preset's folder under model/experiments")
    attempts = load_attempts(args.folder)
    attempts, dropped = apply_exclusions(attempts, args.exclude, args.why)
    scored = [a for a in attempts if a["evals"]]
    if not scored:
        raise UsageError(f"{args.folder}: no finished runs (run.json with state done); run run_experiments.py first")
    if args.against is None:  # the default reference may not have finished yet: tables without differences
        args.against = "diffrect"
    elif args.against not in {a["method"] for a in scored}:
        raise UsageError(f"--against {args.against}: no finished run of that method in {args.folder}")
    check_same_flags(attempts)
    rows, groups, ranks, boot, keys = summarize(scored, args.against, args.bootstrap, args.bootstrap_seed)
    preset = os.path.basename(os.path.normpath(args.folder))
    notes = provenance_notes(attempts)
    write_csv_rows(os.path.join(args.folder, "results.csv"), rows)
    write_ranks(os.path.join(args.folder, "ranks.csv"), ranks)
    text = write_markdown(os.path.join(args.folder, "results.md"), groups, keys, attempts, args.against, preset,
                          dropped, notes, args.bootstrap)
    write_figures(os.path.join(args.folder, "figures"), attempts, groups, ranks, keys, args.against, preset)
    print(text)
    print(f"wrote results.md, results.csv, ranks.csv and figures/ to {args.folder} ({len(scored)} runs with per-case "
          f"scores, {len(attempts) - len(scored)} summary-only)")
    return rows


if __name__ == "__main__":
    run_main(main)
