"""The contract a training script's Method meets, checked before the first step: a module the step uses but
checkpoints would not save, an optimizer without a named LR schedule, an eval model outside the models, or a
bare dict each stop the run with one message that says what to change, and nothing is trained or saved."""
import dataclasses
import glob
import importlib
import inspect
import os

import pytest
import torch

import train_mean_teacher_ACDC
from test_training import SMALL
from utils.trainer import LR_SCHEDULES, Method, TrainingRun, check_method

CODE = os.path.join(os.path.dirname(__file__), "..", "code")
SCRIPTS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CODE, "train_*_ACDC.py")))


def _run_with(tiny_root, snap, change):
    """Mean Teacher's main with its Method passed through `change` first."""
    args = train_mean_teacher_ACDC.parse_args(["--root_path", tiny_root, "--snapshot_dir", snap, *SMALL,
                                               "--max_iterations", "2", "--val_interval", "2"])
    with TrainingRun(args, train_mean_teacher_ACDC.BATCHES, script="train_mean_teacher_ACDC") as run:
        return run.fit(change(train_mean_teacher_ACDC.build(args, run)))


def test_a_teacher_left_out_of_models_stops_before_training(tiny_root, tmp_path):
    snap = str(tmp_path / "mt")
    drop_teacher = lambda m: dataclasses.replace(m, models={"model": m.models["model"]})
    with pytest.raises(TypeError, match="train_step uses 'teacher': a UNet with weights or buffers that is not in "
                                        "Method.models; add it"):
        _run_with(tiny_root, snap, drop_teacher)
    assert not os.path.exists(os.path.join(snap, "last.pth"))
    # the unchanged Method trains, and its checkpoint holds the teacher
    _run_with(tiny_root, snap, lambda m: m)
    assert set(torch.load(os.path.join(snap, "last.pth"), weights_only=False)["models"]) == {"model", "teacher"}


def _tiny_method(**change):
    net, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    method = Method(train_step=lambda batch, it: {}, models={"model": net}, optimizers={"optimizer": opt},
                    lr_schedules={"optimizer": "poly"}, eval_model=net)
    return dataclasses.replace(method, **{k: v(net, other, opt) for k, v in change.items()})


@pytest.mark.parametrize("change,message", [
    (dict(lr_schedules=lambda n, o, opt: {}), r"lr_schedules must name every optimizer.*\['optimizer'\]"),
    (dict(lr_schedules=lambda n, o, opt: {"optimizer": "cosine"}), r"'cosine': choose one of \('poly', 'constant'\)"),
    (dict(eval_model=lambda n, o, opt: o), "eval_model must be one of Method.models"),
    (dict(optimizers=lambda n, o, opt: {"optimizer": torch.optim.SGD([*n.parameters(), *o.parameters()], lr=1)}),
     "optimizer 'optimizer' updates parameters of a module that is not in Method.models"),
])
def test_method_breaches_name_the_fix(change, message):
    check_method(_tiny_method())  # the unchanged one passes
    with pytest.raises(TypeError, match=message):
        check_method(_tiny_method(**change))
    assert LR_SCHEDULES == ("poly", "constant")


def test_wrapped_networks_and_closed_over_modules_must_be_saved():
    net, stray = torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)  # a buffer-only module has state too
    helpers = {"norm": stray}

    def train_step(batch, it):
        return {"x": helpers["norm"](net(batch))}

    method = Method(train_step=train_step, models={"model": net}, optimizers={}, lr_schedules={}, eval_model=net)
    with pytest.raises(TypeError, match="train_step uses 'helpers': a BatchNorm1d"):
        check_method(method)
    check_method(dataclasses.replace(method, models={"model": net, "norm": stray}))
    with pytest.raises(TypeError, match="run.wrap: a Linear"):
        check_method(dataclasses.replace(method, models={"model": net, "norm": stray}), [torch.nn.Linear(1, 1)])
    with pytest.raises(TypeError, match="build\\(\\) must return utils.trainer.Method"):
        check_method({"train_step": train_step})


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_declares_the_batches_its_step_reads(name):
    """BATCHES is the one place a script says what its batches hold (its main and benchmark.py both read it):
    as many strong views as the step reads (image_strong, image_strong2), unlabeled slices exactly when it is
    semi-supervised."""
    script = importlib.import_module(name)
    source = inspect.getsource(script.build)
    assert script.BATCHES.strong_views == ("image_strong" in source) + ("image_strong2" in source)
    assert script.BATCHES.semi_supervised == (name != "train_fully_supervised_ACDC")
    assert "TrainingRun(args, BATCHES)" in inspect.getsource(script.main)
