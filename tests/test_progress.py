"""Progress display: a bar on a terminal only. Redirected to a file, training prints its position in the log line
every --log_interval, test_ACDC.py and predict.py print plain "name: i/n" lines, and nothing writes the
carriage-return frames that would pile up into one huge line."""
import contextlib
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

import predict
import test_ACDC
import train_fully_supervised_ACDC
from conftest import TEST_GPU
from utils.progress import on_terminal, progress

RUN = ["--patch_size", "32", "32", "--batch_size", "4", "--labelnum", "3", "--gpu", TEST_GPU,
       "--max_iterations", "4", "--log_interval", "2", "--val_interval", "4"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_off_a_terminal_and_a_bar_on_one():
    assert not on_terminal(io.StringIO()) and on_terminal(Terminal())
    log = io.StringIO()
    assert list(progress(range(25), "scoring", stream=log)) == list(range(25))
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines == [f"scoring: {i}/25" for i in (3, 6, 9, 12, 15, 18, 21, 24, 25)]  # every ceil(25/10), and the last
    tty = Terminal()
    assert list(progress(range(25), "scoring", stream=tty)) == list(range(25))
    assert "\r" in tty.getvalue() and "25/25" in tty.getvalue()
    quiet = io.StringIO()
    assert list(progress(range(3), "x", stream=quiet, disable=True)) == [0, 1, 2] and quiet.getvalue() == ""


@pytest.fixture(scope="module")
def redirected_run(tiny_root, tmp_path_factory):
    """A short training run with stdout and stderr going to files (not terminals): its snapshot and output."""
    snap = str(tmp_path_factory.mktemp("progress") / "run")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        train_fully_supervised_ACDC.main(["--root_path", tiny_root, "--snapshot_dir", snap, *RUN])
    return snap, out.getvalue(), err.getvalue()


def test_training_redirected_has_no_bar_and_logs_its_position(redirected_run):
    snap, out, err = redirected_run
    assert "\r" not in out + err
    log = open(os.path.join(snap, "log.txt")).read()
    for text in (out, log):
        positions = re.findall(r"iteration (\d+): .*, [\d.]+ s/it, (\d+)/(\d+), \d+:\d\d:\d\d of steps left", text)
        assert positions == [("2", "2", "4"), ("4", "4", "4")], text


def test_training_on_a_terminal_draws_the_bar(tiny_root, tmp_path):
    tty = Terminal()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(tty):
        train_fully_supervised_ACDC.main(["--root_path", tiny_root, "--snapshot_dir", str(tmp_path / "run"), *RUN])
    assert "\r" in tty.getvalue() and "4/4" in tty.getvalue()


def test_test_acdc_and_predict_print_plain_lines_off_a_terminal(redirected_run, tiny_root, tmp_path):
    snap = redirected_run[0]
    ckpt = os.path.join(snap, "unet_best_model.pth")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        summary = test_ACDC.main(["--root_path", tiny_root, "--checkpoint", ckpt, "--split", "val", "--gpu", TEST_GPU])
    assert summary["num_cases"] == 4 and "\r" not in err.getvalue()
    assert [ln for ln in err.getvalue().splitlines() if ln.startswith("scoring")] == \
        [f"scoring val: {i}/4" for i in range(1, 5)]

    scans = tmp_path / "scans"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)).save(scans / name)
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        written = predict.main(["--checkpoint", ckpt, "--input", str(scans), "--output", str(tmp_path / "masks"),
                                "--gpu", TEST_GPU])
    assert len(written) == 2 and "\r" not in err.getvalue()
    assert [ln for ln in err.getvalue().splitlines() if ln.startswith(("checking", "predicting"))] == \
        ["checking inputs: 1/2", "checking inputs: 2/2", "predicting: 1/2", "predicting: 2/2"]
