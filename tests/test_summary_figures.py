"""The summary's figures say what they show: titles name dataset, split, preset, checkpoint and run count; one-run
methods are dashed and labelled "1 run"; legends sit outside the axes; the rank figure counts the ranked runs."""
import os

import numpy as np

import utils.summary_figures as summary_figures


def _attempt(method, seed, labelnum=3):
    curve = [{"iteration": it, "dice": 0.1 * seed + it / 4000} for it in (200, 400, 600)]
    return {"method": method, "labelnum": labelnum, "curve": curve,
            "train_argv": ["--root_path", "/data/ACDC", "--labelnum", str(labelnum)]}


def _entry(mean, runs, diff=None):
    e = {"mean": mean, "ci": (mean - 0.05, mean + 0.05), "runs": runs}
    if diff is not None:
        e.update(diff=diff, diff_ci=(diff - 0.03, diff + 0.03))
    return {("dice", "mean"): e}


def test_titles_labels_and_run_counts(tmp_path, monkeypatch):
    attempts = [_attempt("diffrect", s) for s in (1, 2)] + [_attempt("fixmatch", s) for s in (1, 2, 3)] \
        + [_attempt("uamt", 1), _attempt("supervised-full", 1, labelnum=140), _attempt("supervised-full", 2, 140)]
    key = (3, "final", "val")
    groups = {key: {"diffrect": _entry(0.66, 2), "fixmatch": _entry(0.48, 3, -0.18), "uamt": _entry(0.31, 1, -0.35),
                    "supervised-full": _entry(0.83, 2, 0.17)}}
    ranks = {key: {"diffrect": np.array([0.9, 0.1, 0.0]), "fixmatch": np.array([0.1, 0.8, 0.1]),
                   "uamt": np.array([0.0, 0.1, 0.9])}}  # the upper bound is not ranked
    figures = {}

    def keep(fig, path):
        figures[os.path.basename(path)] = fig
        fig.savefig(path, dpi=30)

    monkeypatch.setattr(summary_figures, "_save", keep)
    summary_figures.write_figures(str(tmp_path), attempts, groups, ranks, [key], "diffrect", "cpu-acdc")
    assert sorted(os.listdir(tmp_path)) == ["dice_bars.png", "forest.png", "ranks.png", "val_dice.png"]

    curves = figures["val_dice.png"].axes[0]
    assert curves.get_title().startswith("ACDC val, cpu-acdc, --labelnum 3")
    assert "8 runs" in curves.get_title()  # 2 + 3 + 1 + the 2 upper-bound runs drawn beside the budget
    lines = {line.get_label(): line for line in curves.get_lines()}
    assert lines["uamt (1 run)"].get_linestyle() == "--" and lines["fixmatch (3 runs)"].get_linestyle() == "-"
    assert len(curves.collections) == 3  # bands for diffrect, fixmatch, supervised-full; none for one run
    anchor = curves.get_legend().get_bbox_to_anchor().transformed(curves.transAxes.inverted())
    assert anchor.x0 > 1.0  # the legend sits right of the axes

    forest = figures["forest.png"].axes[0]
    assert forest.get_title() == "ACDC val, cpu-acdc, --labelnum 3, final checkpoint, 8 runs"
    assert [t.get_text() for t in forest.get_yticklabels()] == \
        ["uamt (1 run)", "fixmatch (3 runs)", "supervised-full (2 runs)"]

    rank = figures["ranks.png"].axes[0]
    assert rank.get_title().startswith("ACDC val, cpu-acdc, --labelnum 3, final checkpoint, 6 runs\n")
    assert [t.get_text() for t in rank.get_yticklabels()] == ["diffrect (2 runs)", "fixmatch (3 runs)", "uamt (1 run)"]

    bars = figures["dice_bars.png"].axes[0]
    assert "final checkpoint" in bars.get_title() and "8 runs" in bars.get_title()


def test_no_forest_without_a_reference_and_no_ranks_for_one_method(tmp_path):
    key = (3, "final", "val")
    (tmp_path / "forest.png").write_bytes(b"stale")
    (tmp_path / "ranks.png").write_bytes(b"stale")
    summary_figures.write_figures(str(tmp_path), [_attempt("fixmatch", 1)], {key: {"fixmatch": _entry(0.48, 1)}},
                                  {key: {"fixmatch": np.array([1.0])}}, [key], "diffrect", "cpu-acdc-long")
    assert sorted(os.listdir(tmp_path)) == ["dice_bars.png", "val_dice.png"]
