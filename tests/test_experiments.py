"""run_experiments.py / summarize_experiments.py on the `smoke` preset (tiny synthetic data, CPU)."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

import run_experiments
import summarize_experiments
from utils.config import run_main

CODE = os.path.join(os.path.dirname(__file__), "..", "code")
SMOKE = ["--preset", "smoke", "--methods", "supervised", "fixmatch"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The smoke preset's supervised and FixMatch runs at seeds 1337 and 2, run once for this module."""
    base = tmp_path_factory.mktemp("experiments")
    argv = SMOKE + ["--root_path", str(base / "data"), "--out", str(base / "out"), "--seeds", "1337", "2"]
    results = run_experiments.main(argv)
    return base, argv, results


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_every_run_trains_and_is_evaluated(sweep):
    base, _, results = sweep
    assert sorted(os.path.basename(f) for f in results) == [
        "fixmatch_3_seed1337", "fixmatch_3_seed2", "supervised_3_seed1337", "supervised_3_seed2"]
    assert set(results.values()) == {"done"}
    for folder in results:
        for f in ("unet_best_model.pth", "unet_final_model.pth", "val_per_case.csv", "test_per_case.csv",
                  "final_val_per_case.csv", "final_test_per_case.csv", "progress.png", "train_terms.csv"):
            assert os.path.isfile(os.path.join(folder, f)), f


def test_a_second_invocation_does_no_work(sweep, capsys):
    base, argv, results = sweep
    stamps = {f: os.path.getmtime(os.path.join(f, "unet_final_model.pth")) for f in results}
    again = run_experiments.main(argv)
    assert again == {} and "4 already done, 0 to run" in capsys.readouterr().out
    assert stamps == {f: os.path.getmtime(os.path.join(f, "unet_final_model.pth")) for f in results}


def test_killed_run_resumes_to_the_uninterrupted_result(sweep, tmp_path):
    base, _, results = sweep
    straight = os.path.join(str(base / "out"), "smoke", "supervised_3_seed1337")
    argv = [sys.executable, os.path.join(CODE, "run_experiments.py"), "--preset", "smoke", "--methods", "supervised",
            "--seeds", "1337", "--root_path", str(base / "data"), "--out", str(tmp_path)]
    folder = tmp_path / "smoke" / "supervised_3_seed1337"
    proc = subprocess.Popen(argv, cwd=CODE, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (folder / "last.pth").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, mid-run
    proc.wait()
    assert (folder / "last.pth").exists() and not (folder / "unet_final_model.pth").exists()
    out = subprocess.run(argv, cwd=CODE, capture_output=True, text=True, check=True).stdout
    assert "resuming from last.pth (logged to iteration" in out and "done" in out
    for name in ("unet_final_model.pth", "unet_best_model.pth"):
        a, b = _weights(os.path.join(straight, name)), _weights(str(folder / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_resume_note_names_the_last_logged_iteration(tmp_path):
    # a run stopped between validations: its train terms reach further than its val curve
    (tmp_path / "train_terms.csv").write_text("iteration,seg/sup\n20.0,0.5\n40.0,0.4\n")
    (tmp_path / "val_curve.csv").write_text("iteration,dice\n")
    assert run_experiments._logged_iteration({"folder": str(tmp_path)}) == 40
    assert run_experiments._logged_iteration({"folder": str(tmp_path / "absent")}) == 0


def test_max_run_iterations_interrupts_and_the_next_call_finishes(sweep, tmp_path, capsys):
    base, _, _ = sweep
    argv = ["--preset", "smoke", "--methods", "fixmatch", "--seeds", "2", "--root_path", str(base / "data"),
            "--out", str(tmp_path)]
    assert set(run_experiments.main(argv + ["--max_run_iterations", "4"]).values()) == {"interrupted"}
    assert "run the same command again" in capsys.readouterr().out
    assert set(run_experiments.main(argv).values()) == {"done"}
    straight = os.path.join(str(base / "out"), "smoke", "fixmatch_3_seed2", "unet_final_model.pth")
    a, b = _weights(straight), _weights(str(tmp_path / "smoke" / "fixmatch_3_seed2" / "unet_final_model.pth"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def _case_dice(path):
    per_case = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            per_case.setdefault(row["case"], []).append(float(row["dice"]))
    return {c: float(np.mean(v)) for c, v in per_case.items()}


def test_summary_tables_match_the_per_case_csvs(sweep):
    base, _, _ = sweep
    folder = str(base / "out" / "smoke")
    rows = summarize_experiments.main([folder, "--against", "fixmatch"])
    table = {(r["method"], r["split"], r["checkpoint"], r["metric"], r["class"]): r for r in rows}
    for method in ("supervised", "fixmatch"):
        for split, prefix, kind in (("val", "", "best"), ("test", "final_", "final")):
            per_seed = [np.mean(list(_case_dice(os.path.join(folder, f"{method}_3_seed{s}",
                                                             f"{prefix}{split}_per_case.csv")).values()))
                        for s in (1337, 2)]
            r = table[(method, split, kind, "dice", "mean")]
            assert r["seeds"] == 2
            assert r["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
            assert r["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12)
    # the paired test over patients of run-averaged scores (synthetic cases are one patient each), final on val
    a = [_case_dice(os.path.join(folder, f"supervised_3_seed{s}", "final_val_per_case.csv")) for s in (1337, 2)]
    b = [_case_dice(os.path.join(folder, f"fixmatch_3_seed{s}", "final_val_per_case.csv")) for s in (1337, 2)]
    x = [np.mean([r[c] for r in a]) for c in sorted(a[0])]
    y = [np.mean([r[c] for r in b]) for c in sorted(a[0])]
    r = table[("supervised", "val", "final", "dice", "mean")]
    # the smoke data has a test split: best-on-val scored on test is primary
    assert table[("supervised", "test", "best", "dice", "mean")]["primary"] and not r["primary"]
    if np.all(np.array(x) == np.array(y)):
        assert np.isnan(r["p_wilcoxon"])
    else:
        assert r["p_wilcoxon"] == pytest.approx(wilcoxon(x, y).pvalue, rel=1e-12)
        assert r["p_holm"] == pytest.approx(r["p_wilcoxon"], rel=1e-12)  # one comparison: Holm changes nothing
    assert r["diff"] == pytest.approx(np.mean(x) - np.mean(y), abs=1e-12)
    assert r["ci95_low"] <= r["mean"] <= r["ci95_high"] and r["diff_ci95_low"] <= r["diff"] <= r["diff_ci95_high"]
    assert 0 <= r["prob_improvement"] <= 1
    with open(os.path.join(folder, "ranks.csv"), newline="") as f:
        ranks = list(csv.DictReader(f))
    assert {row["method"] for row in ranks} == {"supervised", "fixmatch"}
    for row in ranks:
        assert float(row["rank_1"]) + float(row["rank_2"]) == pytest.approx(1.0)
    with open(os.path.join(folder, "results.md")) as f:
        md = f.read()
    assert "| supervised" in md and "| fixmatch" in md and "Δ Dice vs fixmatch" in md  # († if code changed)
    assert md.index("## Primary: test, best-on-val checkpoint scored on test") < md.index("## test, final") \
        < md.index("## val, final checkpoint") < md.index("## val, best-on-val checkpoint — selected on")
    for png in ("figures/val_dice.png", "figures/dice_bars.png", "figures/forest.png", "figures/ranks.png",
                "supervised_3_seed2/progress.png"):
        path = os.path.join(folder, png)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        import cv2

        img = cv2.imread(path)
        assert img is not None and img.shape[0] > 200 and img.shape[1] > 300


def test_presets_and_flags(capsys, tmp_path):
    run_experiments.main(["--list"])
    out = capsys.readouterr().out
    for name in ("paper-acdc", "paper-mscmr", "paper-prostate", "paper-ablation", "cpu-acdc", "smoke"):
        assert name + ":" in out
    jobs = run_experiments.main(["--preset", "paper-acdc", "--dry_run", "--out", str(tmp_path)])
    # 8 methods, BCP, ABD, UniMatch and supervised-lambda0 at 1 / 3 / 7 labeled patients, supervised-full once
    # (all 140), 3 seeds
    assert len(jobs) == (12 * 3 + 1) * 3 and {j["labelnum"] for j in jobs} == {1, 3, 7, 140}
    argv = {j["method"]: " ".join(j["train_argv"]) for j in jobs if j["labelnum"] == 3 and j["seed"] == 1337}
    # BCP and ABD: their papers' 10 000 pre-training (a quarter, the scripts' default) + 30 000 self-training
    assert "--max_iterations 40000" in argv["bcp"] and "--max_iterations 40000" in argv["abd"]
    assert "--max_iterations 30000" in argv["unimatch"] and "--consistency" not in argv["unimatch"]
    diffrect = next(j for j in jobs if j["method"] == "diffrect")
    assert "--batch_size 6 --labeled_bs 3" in " ".join(diffrect["train_argv"])
    assert diffrect["folder"].endswith(os.path.join("paper-acdc", "diffrect_1_seed1337"))
    mscmr = run_experiments.main(["--preset", "paper-mscmr", "--dry_run", "--root_path", "/d", "--seeds", "1"])
    assert {j["root_path"] for j in mscmr} == {"/d/split1", "/d/split2"}
    cpu = run_experiments.main(["--preset", "cpu-acdc", "--dry_run", "--root_path", "/d", "--seeds", "1"])
    ramps = {j["method"]: j["train_argv"][j["train_argv"].index("--consistency_rampup") + 1]
             for j in cpu if "--consistency_rampup" in j["train_argv"]}
    assert ramps["diffrect"] == ramps["fixmatch"] == "8" and ramps["diffrect-ramp200"] == "200"
    assert all(j["train_argv"].count("--consistency_rampup") <= 1 for j in cpu)
    # BCP, ABD, UniMatch: the same 1200 iterations (BCP / ABD pre-training included), no ramp flag (they have none)
    for m in ("bcp", "abd", "unimatch"):
        a = next(j["train_argv"] for j in cpu if j["method"] == m)
        assert a[a.index("--max_iterations") + 1] == "1200" and "--consistency_rampup" not in a
    # the controls: supervised-lambda0 = FixMatch's run (same script, batches, flags) with --consistency 0 only;
    # supervised-full = the supervised run at every label
    by = {j["method"]: j for j in cpu}
    lam0, fix = by["supervised-lambda0"], by["fixmatch"]
    assert lam0["script"] == fix["script"] == "train_fixmatch_ACDC"
    assert lam0["train_argv"] == ["--consistency", "0"] + [a.replace("/fixmatch_3_", "/supervised-lambda0_3_")
                                                           for a in fix["train_argv"]]
    full, sup = by["supervised-full"], by["supervised"]
    assert full["script"] == sup["script"] == "train_fully_supervised_ACDC" and full["labelnum"] == 140
    assert full["train_argv"][full["train_argv"].index("--labelnum") + 1] == "140"
    long = run_experiments.main(["--preset", "cpu-acdc-long", "--dry_run", "--root_path", "/d"])
    argv = {j["method"]: " ".join(j["train_argv"]) for j in long}
    assert set(argv) == {"fixmatch", "diffrect"} and {j["seed"] for j in long} == {1337}
    assert all("--max_iterations 3600" in a and "--consistency_rampup 24" in a for a in argv.values())
    assert "--refine_start 1200" in argv["diffrect"]
    with pytest.raises(run_experiments.UsageError, match="--preset 'nope' is unknown"):
        run_experiments.main(["--preset", "nope"])
    with pytest.raises(run_experiments.UsageError, match="no prepared dataset"):
        run_experiments.main(["--preset", "cpu-acdc", "--root_path", str(tmp_path / "none")])


def test_a_preset_summarizes_before_its_reference_method_has_finished(sweep, tmp_path):
    """The default reference (diffrect) has no run yet: tables without differences, said so, and no forest plot
    (a stale one goes); a reference named with --against must exist."""
    import shutil

    from utils.config import UsageError

    base, _, _ = sweep
    folder = tmp_path / "smoke"
    shutil.copytree(base / "out" / "smoke", folder, ignore=shutil.ignore_patterns("*.pth"))
    (folder / "figures").mkdir(exist_ok=True)
    (folder / "figures" / "forest.png").write_bytes(b"stale")
    rows = summarize_experiments.main([str(folder)])
    assert {r["method"] for r in rows} == {"supervised", "fixmatch"} and all(np.isnan(r["diff"]) for r in rows)
    md = (folder / "results.md").read_text()
    assert "No finished run of diffrect yet: no differences" in md and "| fixmatch | 2 |" in md
    assert sorted(os.listdir(folder / "figures")) == ["dice_bars.png", "ranks.png", "val_dice.png"]
    with pytest.raises(UsageError, match="--against uamt: no finished run of that method"):
        summarize_experiments.main([str(folder), "--against", "uamt"])


def test_ledger_keeps_every_attempt_with_its_provenance(sweep, tmp_path, capsys):
    """Each finished run is one ledger line with its provenance; a run is trained again only with --rerun, which
    moves the old attempt to <run>/attempts/1/ and appends attempt 2: both stay."""
    import json

    from utils.ledger import read_ledger

    base, _, _ = sweep
    argv = ["--preset", "smoke", "--methods", "supervised", "--seeds", "1337", "--root_path", str(base / "data"),
            "--out", str(tmp_path)]
    run_experiments.main(argv)
    preset, folder = tmp_path / "smoke", tmp_path / "smoke" / "supervised_3_seed1337"
    [first] = read_ledger(str(preset))
    assert (first["run"], first["attempt"], first["summary_only"]) == ("supervised_3_seed1337", 1, False)
    assert len(first["code_hash"]) == 16 and first["machine"]["threads"] == torch.get_num_threads()
    assert len(first["data_fingerprint"]) == 16 and first["wall_seconds"] > 0
    assert [r["iteration"] for r in first["curve"]] == [3, 6] and first["final"]["iteration"] == 6
    with open(folder / "val_summary.json") as f:
        scored = json.load(f)
    assert first["best"]["dice"] == scored["mean"]["dice"]["mean"]
    assert scored["units"] == "voxels" and scored["root_path"] == os.path.abspath(base / "data")
    ckpt = torch.load(folder / "unet_final_model.pth", map_location="cpu", weights_only=False)
    assert ckpt["provenance"][0]["code_hash"] == first["code_hash"] and ckpt["provenance"][0]["end_iteration"] == 6
    with open(folder / "run.json") as f:
        saved = json.load(f)
    assert saved["attempt"] == 1 and saved["provenance"] == first["provenance"] and saved["wall_seconds"] > 0
    assert first["provenance"][0]["code_hash"] == first["code_hash"] and first["code_commit"] is not None
    run_experiments.main(argv)  # finished: nothing trains, nothing is appended
    assert len(read_ledger(str(preset))) == 1
    old_scores = (folder / "val_per_case.csv").read_text()
    run_experiments.main(argv + ["--rerun"])
    entries = read_ledger(str(preset))
    assert [(e["run"], e["attempt"]) for e in entries] == [("supervised_3_seed1337", 1), ("supervised_3_seed1337", 2)]
    assert entries[0] == first  # never rewritten
    assert (folder / "attempts" / "1" / "val_per_case.csv").read_text() == old_scores
    assert (folder / "val_per_case.csv").is_file() and "--rerun" in capsys.readouterr().out
    with open(folder / "run.json") as f:
        assert json.load(f)["attempt"] == 2
    with open(folder / "attempts" / "1" / "run.json") as f:
        assert json.load(f)["attempt"] == 1


def test_a_ledger_append_cut_short_by_a_full_disk_leaves_no_partial_line(tmp_path, monkeypatch):
    """A short write (full disk) is cut off again, so that after freeing space the same command reads the ledger
    and appends the entry whole."""
    import errno

    from utils import ledger
    from utils.errors import UsageError

    entry = {"run": "a_3_seed1", "attempt": 1, "scores": list(range(50))}
    ledger.append_entry(str(tmp_path), entry)
    before = (tmp_path / "ledger.jsonl").read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ledger.os, "write", half_then_full)
    second = {**entry, "run": "a_3_seed2"}
    with pytest.raises(UsageError, match=r"ledger.jsonl: the entry of a_3_seed2 attempt 1 could not be appended "
                                         r"\(No space left on device\); free disk space and run the same "
                                         r"command again"):
        ledger.append_entry(str(tmp_path), second)
    assert (tmp_path / "ledger.jsonl").read_bytes() == before
    monkeypatch.setattr(ledger.os, "write", real_write)
    ledger.append_entry(str(tmp_path), second)  # the same command again
    assert [e["run"] for e in ledger.read_ledger(str(tmp_path))] == ["a_3_seed1", "a_3_seed2"]


def test_repeated_seeds_and_methods_plan_each_run_once(capsys):
    jobs = run_experiments.main(["--preset", "smoke", "--dry_run", "--root_path", "/d", "--seeds", "1337", "1337",
                                 "--methods", "fixmatch", "fixmatch"])
    assert [os.path.basename(j["folder"]) for j in jobs] == ["fixmatch_3_seed1337"]
    out = capsys.readouterr().out
    assert "--seeds: 1337 1337 repeats values; running 1337" in out and "--methods: fixmatch fixmatch" in out


def _one_error_line(capsys, main, argv):
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def _argparse_error(capsys, main, argv):
    """argparse's refusal of a flag's value: its usage, then one error line; exit code 2, no traceback."""
    with pytest.raises(SystemExit) as e:
        run_main(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def test_gpus_and_negative_seeds_are_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    argv = ["--preset", "smoke", "--root_path", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine (was: every run on the CPU)
    assert _one_error_line(capsys, run_experiments.main, argv + ["--gpus", "0"]) == (
        "error: --gpus 0: no CUDA device is visible here (its runs would train on the CPU); leave --gpus out, or run "
        "on a machine with GPUs")
    assert _one_error_line(capsys, run_experiments.main, argv + ["--gpus", "0", "-1"]) == (
        "error: --gpus -1: device numbers are 0 or more (0, 1, ... as torch counts them)")
    assert _argparse_error(capsys, run_experiments.main, argv + ["--seeds", "1337", "-2"]).endswith(
        "error: argument --seeds: -2 must be in [0, inf)")
    assert len(run_experiments.main(argv + ["--gpus", "0", "--dry_run"])) > 0  # a plan, perhaps for another machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a 2-GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _one_error_line(capsys, run_experiments.main, argv + ["--gpus", "1", "4"]) == (
        "error: --gpus 4: this machine has 2 GPUs, numbered 0-1 as torch counts them; choose among them")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. a cluster's allocation: physical 2 and 3 are 0 and 1
    assert _one_error_line(capsys, run_experiments.main, argv + ["--gpus", "2", "3"]) == (
        "error: --gpus 2: CUDA_VISIBLE_DEVICES=2,3 leaves 2 GPUs, numbered 0-1 as torch counts them; choose among "
        "them")
    assert os.listdir(tmp_path) == []  # no dataset generated, no run folder
    assert _argparse_error(capsys, summarize_experiments.main, [str(tmp_path), "--bootstrap_seed", "-1"]).endswith(
        "error: argument --bootstrap_seed: -1 must be in [0, inf)")


def test_gpus_count_within_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")  # torch sees 2 devices, 0 and 1: physical 2 and 3
    assert [run_experiments.device_env(g) for g in (0, 1)] == ["2", "3"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert run_experiments.device_env(1) == "1"


def test_two_invocations_share_the_work(sweep, tmp_path):
    """The same command started twice: the second skips the run the first is training ("busy") instead of
    marking it failed; the first finishes it."""
    base, _, _ = sweep
    argv = ["--preset", "smoke", "--methods", "supervised", "--seeds", "1337", "--root_path", str(base / "data"),
            "--out", str(tmp_path)]
    folder = tmp_path / "smoke" / "supervised_3_seed1337"
    first = subprocess.Popen([sys.executable, os.path.join(CODE, "run_experiments.py"), *argv], cwd=CODE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while run_experiments.worker_holding(str(folder)) is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    assert run_experiments.worker_holding(str(folder)) is not None
    second = subprocess.run([sys.executable, os.path.join(CODE, "run_experiments.py"), *argv], cwd=CODE,
                            capture_output=True, text=True)
    out_first = first.communicate(timeout=300)[0]
    assert second.returncode == 0 and "busy: PID" in second.stdout and "failed" not in second.stdout
    assert first.returncode == 0 and "done after" in out_first
    import json

    with open(folder / "run.json") as f:
        assert json.load(f)["state"] == "done"


def test_a_finished_run_that_lost_files_is_evaluated_again(sweep, tmp_path, capsys):
    base, _, _ = sweep
    argv = ["--preset", "smoke", "--methods", "supervised", "--seeds", "2", "--root_path", str(base / "data"),
            "--out", str(tmp_path)]
    run_experiments.main(argv)
    folder = tmp_path / "smoke" / "supervised_3_seed2"
    scores = (folder / "final_val_per_case.csv").read_text()
    os.remove(folder / "final_val_per_case.csv")
    assert run_experiments.main(argv) == {str(folder): "done"}
    assert "marked done but final_val_per_case.csv are gone; evaluating it again" in capsys.readouterr().out
    assert (folder / "final_val_per_case.csv").read_text() == scores
    from utils.ledger import read_ledger

    assert len(read_ledger(str(tmp_path / "smoke"))) == 1  # the same attempt, not a new one


def test_a_damaged_run_json_is_named(sweep, tmp_path):
    base, _, _ = sweep
    folder = tmp_path / "smoke" / "supervised_3_seed1337"
    os.makedirs(folder)
    (folder / "run.json").write_text('{"state": "tra')
    with pytest.raises(run_experiments.UsageError, match=r"supervised_3_seed1337/run.json: damaged .*git checkout"):
        run_experiments.main(["--preset", "smoke", "--methods", "supervised", "--seeds", "1337", "--root_path",
                              str(base / "data"), "--out", str(tmp_path)])


def test_a_difference_bound_that_rounds_to_zero_keeps_its_sign_and_a_digit():
    assert [summarize_experiments._signed(v) for v in (-22.371, 7.6849, -0.0042, 0.0)] == \
        ["-22.37", "+7.68", "-0.004", "+0.00"]
