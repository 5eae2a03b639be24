"""The figures of an experiment summary (summarize_experiments.py): learning curves, Dice with CIs, the forest plot
of differences to the reference method, and rank stability.

Every title names the dataset, split, protocol (the preset), checkpoint and number of runs; legends sit outside
the axes; methods are coloured by family (DiffRect reds, semi-supervised baselines, controls greys); a method
with one run is drawn dashed and labelled "1 run", with no band.
"""
import os

import numpy as np

CONTROLS = ("supervised", "supervised-lambda0", "supervised-full")
UPPER_BOUNDS = ("supervised-full",)  # every label: drawn beside every label budget
_BASELINE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:cyan", "tab:olive", "tab:brown", "tab:pink",
                     "navy", "teal", "darkgoldenrod", "slateblue", "seagreen")
_CHECKPOINT = {"final": "final checkpoint", "best": "best-on-val checkpoint"}


def colours(methods):
    """{method: colour}: DiffRect and its variants in reds, the controls in greys, the other methods distinct."""
    import matplotlib

    reds = [m for m in methods if m.startswith("diffrect")]
    greys = [m for m in methods if m in CONTROLS]
    rest = [m for m in methods if m not in reds and m not in greys]
    out = {m: matplotlib.colormaps["Reds"](0.9 - 0.45 * i / max(1, len(reds) - 1)) for i, m in enumerate(reds)}
    out.update({m: matplotlib.colormaps["Greys"](0.85 - 0.4 * i / max(1, len(greys) - 1)) for i, m in enumerate(greys)})
    out.update({m: _BASELINE_COLOURS[i % len(_BASELINE_COLOURS)] for i, m in enumerate(rest)})
    return out


def dataset_name(attempts):
    """The dataset folder's name from the runs' --root_path (a split folder names its parent)."""
    for a in attempts:
        argv = a.get("train_argv") or []
        if "--root_path" in argv:
            path = os.path.normpath(argv[argv.index("--root_path") + 1])
            base = os.path.basename(path)
            return os.path.basename(os.path.dirname(path)) if base.startswith("split") else base
    return "dataset"


def _runs(n):
    return f"{n} run" + ("" if n == 1 else "s")


def _save(fig, path):
    from utils.safe_write import write_file

    write_file(path, lambda tmp: fig.savefig(tmp, dpi=90, bbox_inches="tight"))


def curves_figure(ax, attempts, labelnum, palette):
    """Val mean Dice against iteration, one line per method: mean over runs with a min–max band (≥ 2 runs), dashed
    without band for one run. -> runs drawn."""
    total = 0
    for m, colour in palette.items():
        curves = [a["curve"] for a in attempts if a["method"] == m and a.get("curve")
                  and (a["labelnum"] == labelnum or m in UPPER_BOUNDS)]
        curves = [{int(r["iteration"]): 100 * r["dice"] for r in c} for c in curves]
        if not curves:
            continue
        its = sorted(set.intersection(*(set(c) for c in curves)))
        vals = np.array([[c[i] for i in its] for c in curves])  # (runs, iterations)
        total += len(curves)
        if len(curves) == 1:
            ax.plot(its, vals[0], "o--", ms=3, color=colour, label=f"{m} (1 run)")
        else:
            ax.plot(its, vals.mean(0), "o-", ms=3, color=colour, label=f"{m} ({_runs(len(curves))})")
            ax.fill_between(its, vals.min(0), vals.max(0), color=colour, alpha=0.15)
    return total


def write_figures(folder, attempts, groups, ranks, keys, against, preset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    data = dataset_name(attempts)
    palette = colours(list(dict.fromkeys(a["method"] for a in attempts)))
    labelnums = sorted({a["labelnum"] for a in attempts if a["method"] not in UPPER_BOUNDS}) or \
        sorted({a["labelnum"] for a in attempts})

    # learning curves (every attempt with a recorded curve; no checkpoint is selected here)
    fig, axes = plt.subplots(1, len(labelnums), figsize=(7 * len(labelnums), 4.5), squeeze=False)
    for ax, labelnum in zip(axes[0], labelnums):
        n = curves_figure(ax, attempts, labelnum, palette)
        ax.set(xlabel="iteration", ylabel="val mean Dice (%)",
               title=f"{data} val, {preset}, --labelnum {labelnum}: Dice at each validation\n"
                     f"{_runs(n)}; line: mean over runs, band: min–max")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, os.path.join(folder, "val_dice.png"))
    plt.close(fig)

    main_keys = [k for k in keys if k[1:] == keys[0][1:] and k in groups]
    # Dice with its 95 % CI, primary checkpoint
    fig, axes = plt.subplots(1, len(main_keys), figsize=(7 * len(main_keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], main_keys):
        labelnum, kind, split = key
        group = groups[key]
        order = sorted(group, key=lambda m: -group[m][("dice", "mean")]["mean"])
        es = [group[m][("dice", "mean")] for m in order]
        means = np.array([100 * e["mean"] for e in es])
        err = np.array([[100 * (e["mean"] - e["ci"][0]), 100 * (e["ci"][1] - e["mean"])] for e in es]).T
        ax.bar(range(len(order)), means, yerr=err, capsize=4, color=[palette[m] for m in order], alpha=0.85)
        ax.set_xticks(range(len(order)), [f"{m}\n({_runs(e['runs'])})" for m, e in zip(order, es)], rotation=35,
                      ha="right", fontsize=8)
        ax.set(ylabel=f"{split} mean Dice (%)", title=f"{data} {split}, {preset}, --labelnum {labelnum}, "
               f"{_CHECKPOINT[kind]}\nmean and 95 % CI (bootstrap over runs and patients), "
               f"{_runs(sum(e['runs'] for e in es))}")
        ax.grid(alpha=0.3, axis="y")
    _save(fig, os.path.join(folder, "dice_bars.png"))
    plt.close(fig)

    # forest plot: each method's difference to `against`; none while `against` has no finished run
    if not any("diff" in e[("dice", "mean")] for k in main_keys for e in groups[k].values()):
        _remove(os.path.join(folder, "forest.png"))
    else:
        forest_figure(plt, folder, groups, main_keys, palette, against, data, preset)

    # rank stability over the bootstrap samples; none with fewer than two ranked methods
    if max(len(ranks[k]) for k in main_keys) < 2:
        _remove(os.path.join(folder, "ranks.png"))
    else:
        ranks_figure(plt, folder, groups, ranks, main_keys, palette, data, preset)


def _remove(path):
    """A figure that no longer applies goes, so that a folder never shows one from an earlier summary."""
    if os.path.exists(path):
        os.remove(path)


def forest_figure(plt, folder, groups, main_keys, palette, against, data, preset):
    fig, axes = plt.subplots(1, len(main_keys), figsize=(7 * len(main_keys), 0.45 * len(palette) + 1.8),
                             squeeze=False)
    for ax, key in zip(axes[0], main_keys):
        labelnum, kind, split = key
        group = groups[key]
        order = sorted((m for m in group if "diff" in group[m][("dice", "mean")]),
                       key=lambda m: group[m][("dice", "mean")]["diff"])
        for y, m in enumerate(order):
            e = group[m][("dice", "mean")]
            lo, hi = 100 * e["diff_ci"][0], 100 * e["diff_ci"][1]
            bar = ax.errorbar(100 * e["diff"], y, xerr=[[100 * e["diff"] - lo], [hi - 100 * e["diff"]]], fmt="o",
                              color=palette[m], capsize=3)
            if e["runs"] == 1:  # one run: its interval holds the patients' spread only
                bar[2][0].set_linestyle("--")
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(range(len(order)), [f"{m} ({_runs(group[m][('dice', 'mean')]['runs'])})" for m in order],
                      fontsize=8)
        n = sum(group[m][("dice", "mean")]["runs"] for m in group)
        ax.set(xlabel=f"Δ {split} mean Dice vs {against} (points; 95 % CI)",
               title=f"{data} {split}, {preset}, --labelnum {labelnum}, {_CHECKPOINT[kind]}, {_runs(n)}")
        ax.grid(alpha=0.3, axis="x")
    _save(fig, os.path.join(folder, "forest.png"))
    plt.close(fig)


def ranks_figure(plt, folder, groups, ranks, main_keys, palette, data, preset):
    fig, axes = plt.subplots(1, len(main_keys), figsize=(0.6 * len(palette) + 4 * len(main_keys),
                                                        0.45 * len(palette) + 1.8), squeeze=False)
    for ax, key in zip(axes[0], main_keys):
        labelnum, kind, split = key
        shares = ranks[key]
        order = sorted(shares, key=lambda m: float(np.dot(np.arange(1, len(shares[m]) + 1), shares[m])))
        grid = np.array([shares[m] for m in order])  # (methods, ranks)
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                if grid[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] > 0.6 else "black")
        ax.set_xticks(range(grid.shape[1]), [str(r + 1) for r in range(grid.shape[1])])
        runs = {m: groups[key][m][("dice", "mean")]["runs"] for m in order}  # the ranked methods only
        ax.set_yticks(range(len(order)), [f"{m} ({_runs(runs[m])})" for m in order], fontsize=8)
        n = sum(runs.values())
        ax.set(xlabel="rank by mean Dice (1 = best)", title=f"{data} {split}, {preset}, --labelnum {labelnum}, "
               f"{_CHECKPOINT[kind]}, {_runs(n)}\n% of bootstrap samples (runs, then patients) at each rank")
    _save(fig, os.path.join(folder, "ranks.png"))
    plt.close(fig)
