"""The comparison methods of the paper's Table 1: each runs, writes a checkpoint test_ACDC reads, and its
method-specific piece matches a hand computation."""
import argparse
import math
import os
import re

import pytest
import torch

import test_ACDC
import train_bcp_ACDC
import train_cps_ACDC
import train_diffrect_ACDC
import train_fixmatch_ACDC
import train_ict_ACDC
import train_incl_ACDC
import train_mcnetv2_ACDC
import train_mean_teacher_ACDC
import train_uamt_ACDC
import train_unimatch_ACDC
from networks.unet import UNet, net_factory
from test_training import SMALL, logged_terms
from utils.config import number_in
from utils.mean_teacher import ema_update, make_teacher
from conftest import TEST_GPU

SCRIPTS = {"uamt": (train_uamt_ACDC, "uamt/consistency"), "cps": (train_cps_ACDC, "cps/a"),
           "ict": (train_ict_ACDC, "ict/consistency"), "mcnetv2": (train_mcnetv2_ACDC, "mcnet/consistency"),
           "incl": (train_incl_ACDC, "incl/uscl"), "meanteacher": (train_mean_teacher_ACDC, "mt/consistency")}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_baseline_runs_and_test_acdc_reads_its_checkpoint(tiny_root, tmp_path, name):
    script, term = SCRIPTS[name]
    snap = str(tmp_path / name)
    script.main(["--root_path", tiny_root, "--snapshot_dir", snap, *SMALL, "--max_iterations", "3",
                 "--val_interval", "3", "--consistency_rampup", "0"])
    terms = logged_terms(snap)
    assert len(terms[term]) == 3 and all(math.isfinite(v) for vs in terms.values() for v in vs), terms
    assert terms["info/consistency_weight"] == [0.1] * 3
    ckpt = [f for f in os.listdir(snap) if f.endswith("_best_model.pth")]
    assert len(ckpt) == 1
    summary = test_ACDC.main(["--root_path", tiny_root, "--checkpoint", os.path.join(snap, ckpt[0]), "--split", "val",
                              "--gpu", TEST_GPU])
    assert summary["num_cases"] == 4 and 0.0 <= summary["mean"]["dice"]["mean"] <= 1.0


def test_baseline_flag_checks_fail_before_anything_is_written(tiny_root, tmp_path):
    snap = tmp_path / "bad"
    for script, flags in [(train_ict_ACDC, ["--batch_size", "5"]), (train_uamt_ACDC, ["--uncertainty_T", "3"]),
                          (train_uamt_ACDC, ["--model", "vnet"])]:
        with pytest.raises(ValueError, match="--"):
            script.main(["--root_path", tiny_root, "--snapshot_dir", str(snap), *SMALL, *flags])
    for script in (train_mcnetv2_ACDC, train_incl_ACDC):  # argparse refuses another --model (exit 2, one line)
        with pytest.raises(SystemExit) as e:
            script.main(["--root_path", tiny_root, "--snapshot_dir", str(snap), *SMALL, "--model", "vnet"])
        assert e.value.code == 2
    assert not snap.exists()


def test_number_in_accepts_its_interval_and_names_the_rest():
    closed, half_open, positive = number_in(0, 1), number_in(0, 1, high_open=True), number_in(0, low_open=True)
    assert (closed("0"), closed("1"), half_open("0.99"), positive("1e9")) == (0.0, 1.0, 0.99, 1e9)
    assert number_in(0, kind=int)("7") == 7
    for parse, text, message in [(half_open, "1", "1 must be in [0, 1)"), (positive, "0", "0 must be in (0, inf)"),
                                 (positive, "inf", "inf must be in (0, inf)"),
                                 (closed, "-0.5", "-0.5 must be in [0, 1]"), (closed, "nan", "nan must be in"),
                                 (closed, "x", "'x' is not a number"), (number_in(0, kind=int), "-1", "-1 must be"),
                                 (number_in(0, kind=int), "2.5", "'2.5' is not an integer")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
            parse(text)


@pytest.mark.parametrize("script, flag, value", [
    (train_fixmatch_ACDC, "--conf_thresh", "95"),  # a percentage: no pixel would pass, silently all background
    (train_diffrect_ACDC, "--conf_thresh", "1"), (train_diffrect_ACDC, "--seed", "-1"),
    (train_mean_teacher_ACDC, "--ema_decay", "99"), (train_ict_ACDC, "--ict_alpha", "0"),
    (train_mcnetv2_ACDC, "--temperature", "0"), (train_uamt_ACDC, "--base_lr", "-0.01"),
    (train_bcp_ACDC, "--crop_ratio", "1"), (train_unimatch_ACDC, "--fp_dropout", "1"),
    (train_cps_ACDC, "--consistency", "-0.1")])
def test_out_of_range_flags_stop_in_one_line_before_anything_is_written(tiny_root, tmp_path, capsys, script,
                                                                       flag, value):
    snap = tmp_path / "bad"
    with pytest.raises(SystemExit) as e:
        script.main(["--root_path", tiny_root, "--snapshot_dir", str(snap), *SMALL, flag, value])
    assert e.value.code == 2 and not snap.exists()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: {value} must be in " in error and "Traceback" not in error, error


def test_ema_update_matches_hand_computation():
    torch.manual_seed(0)
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    t0 = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert ema_update(teacher, student, 0.99, 0) == 0.0  # step 0: the teacher copies the student
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s) and not t.requires_grad
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    assert ema_update(teacher, student, 0.99, 3) == pytest.approx(0.75)  # min(1 - 1/4, 0.99)
    for t, s, s0 in zip(teacher.parameters(), student.parameters(), t0):
        assert torch.allclose(t, 0.75 * (s0 + 1) + 0.25 * s)
    assert ema_update(teacher, student, 0.99, 10_000) == 0.99


def test_uamt_uncertainty_and_threshold_ramp():
    torch.manual_seed(0)
    net = UNet(1, 4)
    unc = train_uamt_ACDC.uncertainty(net, torch.rand(3, 1, 32, 32), 8)
    assert unc.shape == (3, 1, 32, 32) and not unc.requires_grad
    assert unc.min() >= -1e-5 and unc.max() <= math.log(4) + 1e-5

    class Confident(torch.nn.Module):  # always class 2 with certainty: entropy ~ 0
        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full(x.shape[:1] + x.shape[2:], 2), 4).permute(0, 3, 1, 2) * 50.0

    assert Confident()(torch.zeros(2, 1, 4, 4)).shape == (2, 4, 4, 4)
    assert train_uamt_ACDC.uncertainty(Confident(), torch.zeros(2, 1, 4, 4), 4).max() < 1e-4
    base = math.log(2)
    assert train_uamt_ACDC.uncertainty_threshold(0, 1000, base) == pytest.approx(0.75 * base + 0.25 * base * math.exp(-5))
    assert train_uamt_ACDC.uncertainty_threshold(500, 1000, base) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * base)
    assert train_uamt_ACDC.uncertainty_threshold(1000, 1000, base) == pytest.approx(base)


def test_ict_mix_coefficients_and_targets():
    a, b = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    lam = torch.tensor([0.25, 0.9]).view(2, 1, 1, 1)
    mixed = train_ict_ACDC.mix(a, b, lam)
    assert torch.allclose(mixed[0], torch.full((1, 2, 2), 0.25)) and torch.allclose(mixed[1], torch.full((1, 2, 2), 0.9))
    pa = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(2, 2, 2, 2)
    pb = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1).expand(2, 2, 2, 2)
    target = train_ict_ACDC.mix(pa, pb, lam)  # the teacher targets mix the same way
    assert torch.allclose(target[:, 1, 0, 0], torch.tensor([0.25, 0.9])) and torch.allclose(target.sum(1), torch.ones(2, 2, 2))
    torch.manual_seed(0)
    lam = torch.distributions.Beta(torch.tensor(0.2), torch.tensor(0.2)).sample((4000,))
    assert 0 <= lam.min() and lam.max() <= 1 and abs(lam.mean().item() - 0.5) < 0.03  # Beta(a, a): mean 1/2
    assert ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.5  # alpha 0.2: mostly near one end


def test_cps_targets_are_the_other_networks_argmax_detached():
    la = torch.randn(2, 4, 8, 8, requires_grad=True)
    lb = torch.randn(2, 4, 8, 8, requires_grad=True)
    ta, tb = train_cps_ACDC.cross_targets(la, lb)
    assert torch.equal(ta, lb.argmax(1)) and torch.equal(tb, la.argmax(1))
    assert not ta.requires_grad and not tb.requires_grad and ta.dtype == torch.long


def test_cps_networks_start_apart_from_the_same_default_distribution(tiny_root, tmp_path):
    # lr 0: last.pth holds the two initial networks (momentum and weight decay move nothing at lr 0)
    snap = str(tmp_path / "cps0")
    train_cps_ACDC.main(["--root_path", tiny_root, "--snapshot_dir", snap, *SMALL, "--max_iterations", "1",
                         "--val_interval", "1", "--base_lr", "0"])
    models = torch.load(os.path.join(snap, "last.pth"), map_location="cpu", weights_only=False)["models"]
    key = "encoder.stages.1.conv.conv1.0.weight"
    wa, wb, wd = models["model"][key], models["model_b"][key], UNet().state_dict()[key]
    assert not torch.equal(wa, wb)
    assert (wa.std() / wb.std()).item() == pytest.approx(1.0, rel=0.1)  # same init scheme for both ...
    assert (wa.std() / wd.std()).item() == pytest.approx(1.0, rel=0.1)  # ... and it is PyTorch's default


def test_mcnet_has_three_decoders_and_sharpening_matches_hand_values():
    net = net_factory("mcnet", 1, 4)
    assert [d.ups[0].up_mode for d in net.decoders] == ["transposed", "bilinear", "nearest"]
    outs = net.all_logits(torch.rand(2, 1, 32, 32))
    assert len(outs) == 3 and all(o.shape == (2, 4, 32, 32) for o in outs)
    net.eval()
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(net(x), torch.stack(net.all_logits(x)).mean(0))
    p = torch.tensor([0.6, 0.3, 0.1, 0.0]).view(1, 4, 1, 1)
    s = train_mcnetv2_ACDC.sharpen(p, 0.5)  # p^2 / (p^2 + (1-p)^2)
    assert torch.allclose(s.flatten(), torch.tensor([0.36 / 0.52, 0.09 / 0.58, 0.01 / 0.82, 0.0]))
    one_hot = torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1)
    assert train_mcnetv2_ACDC.mutual_consistency([one_hot] * 3, 0.1) == 0
    # 6 ordered pairs, each MSE(p_i, sharpen(p_j)) with detached targets
    probs = [torch.full((1, 4, 1, 1), 0.25, requires_grad=True) for _ in range(3)]
    loss = train_mcnetv2_ACDC.mutual_consistency(probs, 0.5)
    assert loss.item() == pytest.approx(6 * (0.25 - 0.0625 / (0.0625 + 0.5625)) ** 2)
    loss.backward()
    assert all(p.grad is not None for p in probs)


def test_incl_proxies_score_pixels_and_learn():
    torch.manual_seed(0)
    module = train_incl_ACDC.SemanticProxies(4, 16, 8)
    feats = torch.randn(2, 16, 8, 8)
    logits, proxies = module(feats)
    assert logits.shape == (2, 4, 8, 8) and proxies.shape == (4, 8)
    q = module.query(feats)
    assert torch.allclose(logits[1, :, 3, 5], proxies @ q[1, :, 3, 5] / math.sqrt(8), atol=1e-5)
    logits.sum().backward()
    assert module.proxies.grad is not None and module.proxies.grad.abs().sum() > 0
