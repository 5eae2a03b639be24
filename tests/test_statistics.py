"""The summary's statistics (utils/statistics.py) against hand computations on small fixed examples, and
summarize_experiments.py on a hand-made preset folder: patients, attempts, summary-only runs, exclusions,
mixed provenance, run-defining flags, damaged files."""
import csv
import json
import os

import numpy as np
import pytest
from scipy.stats import wilcoxon

import summarize_experiments
from utils.errors import UsageError
from utils.statistics import (bootstrap_means, hierarchical_bootstrap, holm, patient_of, patient_scores,
                              percentile_ci, probability_of_improvement, rank_distribution, score_matrix,
                              wilcoxon_patients)


def test_frames_of_one_patient_are_averaged_first():
    assert patient_of("patient028_frame01") == patient_of("patient028_frame12") == "patient028"
    assert patient_of("case_7") == "case_7"
    assert patient_scores({"patient001_frame01": 0.2, "patient001_frame12": 0.4, "case7": 0.9}) == \
        pytest.approx({"patient001": 0.3, "case7": 0.9})
    m = score_matrix([{"p1": 1.0, "p2": 2.0}, {"p2": 4.0}], ["p1", "p2"])
    assert m.shape == (2, 2) and m[0].tolist() == [1.0, 2.0] and np.isnan(m[1, 0]) and m[1, 1] == 4.0


def test_bootstrap_sample_is_the_mean_over_resampled_runs_then_patients():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    run_idx = np.array([[0, 0], [1, 0]])
    patient_idx = np.array([[2, 2, 0], [0, 1, 2]])
    # sample 0: run 0 twice, patients 3,3,1 -> (3+3+1)*2/6; sample 1: both runs, every patient -> 3.5
    assert bootstrap_means(x, run_idx, patient_idx) == pytest.approx([14 / 6, 3.5])


def test_patients_are_resampled_together_across_methods():
    """b = a + 0.1 on every patient: with the patient resample shared, every sample's difference is exactly 0.1,
    so the difference's CI is a point while each method's own CI is wide."""
    a = np.array([[0.1, 0.5, 0.9, 0.3], [0.1, 0.5, 0.9, 0.3]])
    samples = hierarchical_bootstrap({"a": a, "b": a + 0.1}, n_samples=2000, seed=1)
    assert np.allclose(samples["b"] - samples["a"], 0.1)
    low, high = percentile_ci(samples["a"])
    assert high - low > 0.2
    # the same seed gives the same samples (tables repeat exactly)
    assert np.array_equal(hierarchical_bootstrap({"a": a}, 500, seed=3)["a"],
                          hierarchical_bootstrap({"a": a}, 500, seed=3)["a"])


def test_a_methods_samples_stay_when_another_method_gains_a_run():
    """Each method's run draws have their own stream: adding a run to b, or a method c, or reordering the table
    leaves a's bootstrap samples bit for bit (its CI cannot move because another method got a run)."""
    a = np.array([[0.1, 0.5, 0.9, 0.3], [0.2, 0.4, 0.8, 0.6]])
    b = np.array([[0.3, 0.3, 0.7, 0.5]])
    before = hierarchical_bootstrap({"a": a, "b": b}, 500, seed=3)
    after = hierarchical_bootstrap({"c": a * 0.5, "b": np.vstack([b, b + 0.2]), "a": a}, 500, seed=3)
    assert np.array_equal(before["a"], after["a"])
    assert not np.array_equal(before["b"], after["b"])  # b's own samples do change with its new run


def test_percentile_ci():
    assert percentile_ci(np.arange(101.0)) == pytest.approx((2.5, 97.5))


def test_probability_of_improvement_counts_patient_run_pairs():
    a = np.array([[1.0, 2.0]])                    # 1 run, 2 patients
    b = np.array([[0.0, 2.0], [0.0, 1.0]])        # 2 runs
    # patient 1: 1>0, 1>0 (2 wins); patient 2: 2=2 (tie), 2>1 (win) -> (3 + 0.5) / 4
    assert probability_of_improvement(a, b) == pytest.approx(0.875)
    # lower is better (HD95): the wins become losses, the tie stays half
    assert probability_of_improvement(a, b, higher_is_better=False) == pytest.approx(0.125)


def test_wilcoxon_over_patients_of_run_averaged_scores():
    a = np.array([[0.6, 0.7, 0.8, 0.9, 1.0, 1.1], [0.6, 0.7, 0.8, 0.9, 1.0, 1.1]])
    b = np.array([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5], [0.59, 0.49, 0.39, 0.29, 0.19, 0.09]])
    # run-averaged differences are all positive and distinct: the exact two-sided p for n = 6 is 2 / 2^6
    assert wilcoxon_patients(a, b) == pytest.approx(2 / 64)
    x, y = a.mean(0), b.mean(0)
    assert wilcoxon_patients(a, b) == pytest.approx(wilcoxon(x, y).pvalue)
    assert np.isnan(wilcoxon_patients(a, a))


def test_holm_by_hand():
    # m = 3: 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 = 0.04 -> raised to 0.06 (monotone); NaN stays out
    assert np.allclose(holm([0.01, 0.04, 0.03, np.nan])[:3], [0.03, 0.06, 0.06])
    assert np.isnan(holm([0.01, np.nan])[1]) and holm([0.01, np.nan])[0] == pytest.approx(0.01)
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]


def test_rank_distribution_by_hand():
    shares = rank_distribution({"a": np.array([3.0, 1.0]), "b": np.array([2.0, 2.0]), "c": np.array([1.0, 3.0])})
    assert shares["a"].tolist() == [0.5, 0.0, 0.5] and shares["b"].tolist() == [0.0, 1.0, 0.0]
    assert shares["c"].tolist() == [0.5, 0.0, 0.5]
    low = rank_distribution({"a": np.array([3.0]), "b": np.array([1.0])}, higher_is_better=False)
    assert low["b"].tolist() == [1.0, 0.0]


# ------------------------------------------------------------------------------- a hand-made preset folder
PATIENTS = ["patient001", "patient002", "patient003", "patient004", "patient005"]
ARGV = ["--patch_size", "32", "32", "--max_iterations", "6"]


def _write_run(folder, run, scores, attempt=1, method=None, seed=1, argv=ARGV):
    """A finished run whose per-case Dice is scores[patient] for frame01 and scores[patient] + 0.1 for frame12 (every
    class equal); the other metrics 1 - Dice."""
    os.makedirs(folder, exist_ok=True)
    for prefix in ("", "final_"):
        with open(os.path.join(folder, f"{prefix}val_per_case.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "class", "dice", "jaccard", "hd95", "asd", "empty_case"])
            for p, v in zip(PATIENTS, scores):
                for frame, dv in (("frame01", 0.0), ("frame12", 0.1)):
                    for cls in ("RV", "Myo", "LV"):
                        d = v + dv + (0.05 if prefix == "final_" else 0.0)
                        w.writerow([f"{p}_{frame}", cls, d, d, 1 - d, 1 - d, "ok"])
    with open(os.path.join(folder, "val_curve.csv"), "w") as f:
        f.write(f"iteration,dice,jaccard,hd95,asd\n3,{np.mean(scores) / 2},0,0,0\n6,{np.mean(scores)},0,0,0\n")
    job = {"preset": "hand", "method": method, "labelnum": 3, "seed": seed, "split": "", "state": "done",
           "attempt": attempt, "train_argv": [*argv, "--root_path", "/data/ACDC", "--seed", str(seed)],
           "splits": ["val"]}
    with open(os.path.join(folder, "run.json"), "w") as f:
        json.dump(job, f)
    return job


def _entry(job, run, machine="AVX2", code="aaaa", **extra):
    return {"run": run, "attempt": job["attempt"], "method": job["method"], "labelnum": 3, "seed": job["seed"],
            "split": "", "train_argv": job["train_argv"], "code_hash": code,
            "machine": {"cpu": "CPU", "isa": [machine], "threads": 2}, "summary_only": False, **extra}


@pytest.fixture
def hand_preset(tmp_path):
    root = tmp_path / "hand"
    entries = []
    # method A: seed 1 (two attempts: the first moved to attempts/1), seed 2; method B: seed 1
    a1_old = _write_run(str(root / "a_3_seed1" / "attempts" / "1"), "a_3_seed1", [0.5, 0.6, 0.7, 0.2, 0.3],
                        attempt=1, method="a", seed=1)
    a1 = _write_run(str(root / "a_3_seed1"), "a_3_seed1", [0.6, 0.6, 0.8, 0.4, 0.3], attempt=2, method="a", seed=1)
    a2 = _write_run(str(root / "a_3_seed2"), "a_3_seed2", [0.7, 0.5, 0.6, 0.3, 0.5], method="a", seed=2)
    b1 = _write_run(str(root / "b_3_seed1"), "b_3_seed1", [0.4, 0.3, 0.5, 0.1, 0.2], method="b", seed=1)
    entries += [_entry(a1_old, "a_3_seed1"), _entry(a1, "a_3_seed1", machine="AVX-512", code="bbbb"),
                _entry(a2, "a_3_seed2"), _entry(b1, "b_3_seed1"),
                {"run": "b_3_seed2", "attempt": 1, "method": "b", "labelnum": 3, "seed": 2, "split": "",
                 "summary_only": True, "best": {"dice": 0.123}, "final": {"dice": 0.1}, "curve": [],
                 "source": "a recorded curve"}]
    with open(root / "ledger.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in entries)
    return root


def test_summary_counts_every_attempt_at_patient_level(hand_preset):
    rows = summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "2000"])
    table = {(r["method"], r["checkpoint"], r["metric"], r["class"]): r for r in rows}
    # patient level: frame01 = v, frame12 = v + 0.1 -> patient = v + 0.05 (+ 0.05 for the final checkpoint)
    runs_a = np.array([[0.5, 0.6, 0.7, 0.2, 0.3], [0.6, 0.6, 0.8, 0.4, 0.3], [0.7, 0.5, 0.6, 0.3, 0.5]]) + 0.1
    runs_b = np.array([[0.4, 0.3, 0.5, 0.1, 0.2]]) + 0.1
    a, b = table[("a", "final", "dice", "mean")], table[("b", "final", "dice", "mean")]
    assert a["runs"] == 3 and a["seeds"] == 2 and b["runs"] == 1  # both attempts of seed 1 count
    assert a["mean"] == pytest.approx(runs_a.mean()) and b["mean"] == pytest.approx(runs_b.mean())
    assert a["std"] == pytest.approx(np.std(runs_a.mean(1), ddof=1))
    assert b["diff"] == pytest.approx(runs_b.mean() - runs_a.mean())
    assert b["prob_improvement"] == pytest.approx(probability_of_improvement(runs_b, runs_a))
    assert b["p_wilcoxon"] == pytest.approx(wilcoxon(runs_b.mean(0), runs_a.mean(0)).pvalue)
    assert b["p_holm"] == pytest.approx(b["p_wilcoxon"])
    assert b["diff_ci95_low"] < b["diff"] < b["diff_ci95_high"] < 0 and a["ci95_low"] < a["mean"] < a["ci95_high"]
    assert table[("b", "final", "hd95", "mean")]["prob_improvement"] == pytest.approx(
        probability_of_improvement(1 - runs_b, 1 - runs_a, higher_is_better=False))
    assert a["primary"] and not table[("a", "best", "dice", "mean")]["primary"]  # no test split: final is primary
    md = (hand_preset / "results.md").read_text()
    assert "## Primary: val, final checkpoint" in md and "selected on the same val cases" in md
    assert "| b | 1 + 1 summary-only |" in md and "b_3_seed2 attempt 1: best-on-val Dice 12.30, final 10.00" in md
    assert "- a: 2 code versions (aaaa ×2; bbbb ×1) and 2 machines" in md and "| a † |" in md
    with open(hand_preset / "ranks.csv", newline="") as f:
        ranks = {r["method"]: r for r in csv.DictReader(f) if r["checkpoint"] == "final"}
    assert float(ranks["a"]["rank_1"]) > 0.9 and float(ranks["a"]["rank_1"]) + float(ranks["b"]["rank_1"]) == 1


def test_exclusion_needs_a_reason_and_is_printed(hand_preset):
    with pytest.raises(UsageError, match="--why"):
        summarize_experiments.main([str(hand_preset), "--against", "a", "--why", "x"])
    with pytest.raises(UsageError, match="no attempt 7 of run a_3_seed1"):
        summarize_experiments.main([str(hand_preset), "--against", "a", "--exclude", "a_3_seed1:7", "--why", "x"])
    rows = summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200",
                                       "--exclude", "a_3_seed1:1", "--why", "trained on a broken copy"])
    assert next(r for r in rows if r["method"] == "a" and r["metric"] == "dice" and r["class"] == "mean")["runs"] == 2
    assert "- a_3_seed1 attempt 1: trained on a broken copy" in (hand_preset / "results.md").read_text()


def test_runs_with_other_run_defining_flags_are_not_averaged(hand_preset):
    _write_run(str(hand_preset / "a_3_seed3"), "a_3_seed3", [0.5] * 5, method="a", seed=3,
               argv=["--patch_size", "64", "64", "--max_iterations", "6"])
    with pytest.raises(UsageError, match=r"a \(--labelnum 3\): its runs differ in run-defining flags "
                                         r"\(--patch_size 32 32; --patch_size 64 64"):
        summarize_experiments.main([str(hand_preset), "--against", "a"])


@pytest.mark.parametrize("damage, named", [
    (lambda r: (r / "a_3_seed2" / "run.json").write_text('{"state": "do'), "a_3_seed2/run.json: damaged"),
    (lambda r: (os.remove(r / "a_3_seed2" / "val_curve.csv"), os.remove(r / "ledger.jsonl")),
     "a_3_seed2/val_curve.csv: missing"),
    (lambda r: (r / "a_3_seed2" / "final_val_per_case.csv").write_text("case,class,dice,jaccard,hd95,asd\nx,RV,n/a,"),
     "final_val_per_case.csv: damaged per-case table"),
    (lambda r: (r / "ledger.jsonl").write_text((r / "ledger.jsonl").read_text()[:-30]),
     "ledger.jsonl: line 5 is not a JSON object"),
])
def test_damaged_records_are_named_in_one_line(hand_preset, damage, named):
    damage(hand_preset)
    with pytest.raises(UsageError, match=named):
        summarize_experiments.main([str(hand_preset), "--against", "a"])


def test_an_attempt_whose_files_are_gone_keeps_its_ledger_scores(hand_preset):
    entries = [json.loads(line) for line in (hand_preset / "ledger.jsonl").read_text().splitlines()]
    entries[2].update(best={"dice": 0.55}, final={"dice": 0.6}, curve=[{"iteration": 6, "dice": 0.6}])
    (hand_preset / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    for name in os.listdir(hand_preset / "a_3_seed2"):
        if name != "run.json":
            os.remove(hand_preset / "a_3_seed2" / name)
    rows = summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200"])
    assert next(r for r in rows if (r["method"], r["checkpoint"], r["metric"], r["class"]) ==
                ("a", "final", "dice", "mean"))["runs"] == 2
    md = (hand_preset / "results.md").read_text()
    assert "| a † | 2 + 1 summary-only |" in md
    assert "a_3_seed2 attempt 1: best-on-val Dice 55.00, final 60.00 — its per-case files are missing" in md


def _write_summary(folder, prefix, units, **extra):
    with open(os.path.join(folder, f"{prefix}val_summary.json"), "w") as f:
        json.dump({"checkpoint": os.path.join(folder, f"unet_{'final' if prefix else 'best'}_model.pth"),
                   "split": "val", "iteration": 6, "units": units, "mean": {}, **extra}, f)


def test_a_per_case_table_scored_in_mm_is_refused_with_the_command_that_scores_it_in_voxels(hand_preset):
    for run in ("a_3_seed1", "a_3_seed2", "b_3_seed1"):  # as the runner writes them: in voxels, accepted
        for prefix in ("", "final_"):
            _write_summary(str(hand_preset / run), prefix, "voxels")
    summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200"])
    # re-scored with test_ACDC.py --use_spacing: the per-case CSV now holds HD95/ASD in mm
    folder = str(hand_preset / "a_3_seed2")
    _write_summary(folder, "final_", "mm", root_path="/data/ACDC")
    with pytest.raises(UsageError) as e:
        summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200"])
    message = str(e.value)
    assert "\n" not in message and message.startswith(os.path.join(folder, "final_val_per_case.csv") + ": scored in mm")
    assert message.endswith(f"score it again without --use_spacing: python code/test_ACDC.py --checkpoint "
                            f"{os.path.join(folder, 'unet_final_model.pth')} --root_path /data/ACDC --split val")


@pytest.mark.parametrize("where, remove, named, fix", [
    ("a_3_seed2", "final_val_per_case.csv", "a_3_seed2/final_val_per_case.csv: missing while val_per_case.csv is there",
     "restore it from git, or run run_experiments.py on this preset again to re-evaluate"),
    ("a_3_seed2", "val_per_case.csv", "a_3_seed2/val_per_case.csv: missing while final_val_per_case.csv is there",
     "restore it from git, or run run_experiments.py on this preset again to re-evaluate"),
    ("a_3_seed1/attempts/1", "final_val_per_case.csv", "attempts/1/final_val_per_case.csv: missing",
     "restore it from git"),
    ("b_3_seed1", None, "b_3_seed1/test_per_case.csv: missing while val_per_case.csv is there",
     "restore it from git, or run run_experiments.py on this preset again to re-evaluate"),
])
def test_a_partial_copy_of_a_runs_per_case_files_is_named_not_dropped(hand_preset, where, remove, named, fix):
    folder = hand_preset / where
    if remove:
        os.remove(folder / remove)
    else:  # its run.json says it was scored on val and test, but only val's files are there
        job = json.loads((folder / "run.json").read_text())
        (folder / "run.json").write_text(json.dumps({**job, "splits": ["val", "test"]}))
    with pytest.raises(UsageError, match=named) as e:
        summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200"])
    assert str(e.value).endswith(f"(a partial copy); {fix}")


def test_the_all_labels_upper_bound_joins_each_budgets_table_unranked(hand_preset):
    job = _write_run(str(hand_preset / "supervised-full_140_seed1"), "supervised-full_140_seed1", [0.9] * 5,
                     method="supervised-full", seed=1)
    job["labelnum"] = 140
    with open(hand_preset / "supervised-full_140_seed1" / "run.json", "w") as f:
        json.dump(job, f)
    rows = summarize_experiments.main([str(hand_preset), "--against", "a", "--bootstrap", "200"])
    full = [r for r in rows if r["method"] == "supervised-full" and r["metric"] == "dice" and r["class"] == "mean"]
    assert {(r["labelnum"], r["checkpoint"]) for r in full} == {(3, "final"), (3, "best")}
    assert full[0]["diff"] > 0 and "--labelnum 140" not in (hand_preset / "results.md").read_text()
    with open(hand_preset / "ranks.csv", newline="") as f:
        assert "supervised-full" not in {r["method"] for r in csv.DictReader(f)}
