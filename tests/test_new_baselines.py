"""BCP, ABD and UniMatch: each trains and writes a checkpoint test_ACDC reads, BCP and ABD resume bit for bit across
their pre-training / self-training switch, and their shared pieces (copy-paste, displacement, feature
perturbation, largest connected component) match hand-made cases."""
import argparse
import math
import os

import numpy as np
import pytest
import torch

import benchmark
import test_ACDC
import train_abd_ACDC
import train_bcp_ACDC
import train_unimatch_ACDC
from conftest import TEST_GPU
from networks.unet import UNet
from test_resume_and_faults import assert_same_state, straight_runs, weights
from test_training import SMALL, logged_terms
from utils.bcp import TwoStages
from utils.errors import UsageError
from utils.losses import dice_loss, largest_component_labels, masked_seg_loss, seg_loss
from utils.mixing import (bidirectional_copy_paste, bidirectional_displacement, copy_paste_crop, cutmix,
                          cutmix_boxes, cutmix_partners, patch_confidence)
from utils.mean_teacher import make_teacher

SCRIPTS = {"bcp": (train_bcp_ACDC, ["--pretrain_iterations", "2"], {"bcp/in", "bcp/out"}),
           "abd": (train_abd_ACDC, ["--pretrain_iterations", "2"], {"bcp/in", "bcp/out", "abd/r", "abd/i"}),
           "unimatch": (train_unimatch_ACDC, [], {"seg/sup", "unimatch/fp", "unimatch/s1", "unimatch/s2"})}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_new_baseline_trains_and_test_acdc_reads_its_checkpoint(tiny_root, tmp_path, name):
    script, flags, self_terms = SCRIPTS[name]
    snap = str(tmp_path / name)
    script.main(["--root_path", tiny_root, "--snapshot_dir", snap, *SMALL, "--max_iterations", "4",
                 "--val_interval", "4", *flags])
    terms = logged_terms(snap)
    assert all(math.isfinite(v) for vs in terms.values() for v in vs), terms
    assert all(len(terms[t]) == (2 if flags else 4) for t in self_terms), terms  # BCP / ABD: 2 + 2 iterations
    if flags:
        assert len(terms["bcp/pretrain"]) == 2
    summary = test_ACDC.main(["--root_path", tiny_root, "--checkpoint", os.path.join(snap, "unet_best_model.pth"),
                              "--split", "val", "--gpu", TEST_GPU])
    assert summary["num_cases"] == 4 and 0.0 <= summary["mean"]["dice"]["mean"] <= 1.0


def test_unimatch_absent_classes_flag_reaches_its_three_unlabeled_dice_terms(tiny_root, tmp_path, monkeypatch):
    seen, real = [], train_unimatch_ACDC.dice_loss
    monkeypatch.setattr(train_unimatch_ACDC, "dice_loss",
                        lambda *a, **k: seen.append(k["skip_absent"]) or real(*a, **k))
    for mode, skip in (("count", False), ("skip", True)):
        train_unimatch_ACDC.main(["--root_path", tiny_root, *SMALL, "--max_iterations", "1", "--val_interval", "1",
                                  "--snapshot_dir", str(tmp_path / mode), "--absent_classes", mode])
        assert seen == [skip] * 3, (mode, seen)  # fp, s1, s2 (the supervised Dice is seg_loss's own)
        seen.clear()


@pytest.mark.parametrize("name", ["bcp", "abd"])
def test_resume_across_the_pretraining_switch_equals_the_straight_run(tiny_root, tmp_path, name):
    """Stopped exactly at the switch (last.pth at the end of pre-training), then run on: the teacher's copy of the
    pre-trained student and the optimizer's momentum come out the same."""
    script = SCRIPTS[name][0]
    args = ["--root_path", tiny_root, *SMALL, "--max_iterations", "5", "--pretrain_iterations", "2",
            "--val_interval", "5", "--log_interval", "5"]
    a, b, again = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "again")
    run_to_run = straight_runs(lambda snap: script.main(args + ["--snapshot_dir", snap]), a, again)
    script.main(args + ["--snapshot_dir", b, "--max_run_iterations", "2"])
    assert torch.load(os.path.join(b, "last.pth"), weights_only=False)["iteration"] == 2
    script.main(args + ["--snapshot_dir", b])
    assert_same_state(weights(os.path.join(a, "last.pth")), weights(os.path.join(b, "last.pth")), run_to_run)


def test_two_stages_switch_copies_the_student_into_the_teacher_and_keeps_the_optimizer():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    teacher = make_teacher(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    args = type("Args", (), {"pretrain_iterations": 4, "max_iterations": 12, "base_lr": 0.01})()
    stages = TwoStages(args, None, net, net, teacher, opt)
    assert stages.pretraining(0) and stages.pretraining(3)
    (net(torch.randn(4, 2)) * torch.randn(4, 2)).sum().backward()
    opt.step()  # momentum buffers and BN statistics that the switch must deal with
    momentum = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    assert not torch.equal(teacher[0].weight, net[0].weight)
    assert not stages.pretraining(4)
    for t, s in zip(teacher.state_dict().values(), net.state_dict().values()):
        assert torch.equal(t, s)  # weights and BatchNorm statistics
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(opt.state[p]["momentum_buffer"], m) for p, m in zip(net.parameters(), momentum))
    assert opt.param_groups[0]["lr"] == 0.01 and not stages.pretraining(8)  # the lr is the trainer's constant one


def test_bidirectional_copy_paste_conserves_pixels_and_labels_follow_them():
    torch.manual_seed(0)
    a, b = torch.arange(2 * 12 * 9.0).view(2, 1, 12, 9), 1000 + torch.arange(2 * 12 * 9.0).view(2, 1, 12, 9)
    label_a, label_b = (a[:, 0] % 4).long(), (b[:, 0] % 3).long()  # any function of the pixel
    crop = copy_paste_crop((12, 9), 2 / 3, a.device)
    assert crop.shape == (1, 1, 12, 9) and crop.sum() == 8 * 6  # round(2/3 of each side)
    rows, cols = crop[0, 0].any(1).nonzero()[:, 0], crop[0, 0].any(0).nonzero()[:, 0]
    assert crop[0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one box
    out1, out2 = bidirectional_copy_paste(a, b, crop)
    lab1, lab2 = bidirectional_copy_paste(label_a, label_b, crop)
    # every pixel of both inputs lands in exactly one output, at its own place
    both_in = torch.stack([a, b]).sort(0).values
    both_out = torch.stack([out1, out2]).sort(0).values
    assert torch.equal(both_in, both_out)
    assert torch.equal(torch.cat([out1, out2]).flatten().sort().values, torch.cat([a, b]).flatten().sort().values)
    assert torch.equal(out1[:, :, ~crop[0, 0]], a[:, :, ~crop[0, 0]]) and torch.equal(out1[..., crop[0, 0]],
                                                                                       b[..., crop[0, 0]])
    # labels follow their pixels
    for out, lab in ((out1, lab1), (out2, lab2)):
        from_a = out[:, 0] < 1000
        assert torch.equal(lab[from_a], (out[:, 0][from_a] % 4).long())
        assert torch.equal(lab[~from_a], (out[:, 0][~from_a] % 3).long())


def test_bcp_loss_weights_the_pseudo_labelled_part_by_alpha():
    from utils.bcp import bcp_loss, copy_paste_pairs

    torch.manual_seed(0)
    lab, unl = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    y_l, y_u = torch.randint(0, 4, (2, 16, 16)), torch.randint(0, 4, (2, 16, 16))
    crop = copy_paste_crop((16, 16), 0.5, lab.device)
    x, y, from_gt = copy_paste_pairs(lab, unl, y_l, y_u, crop)
    assert x.shape == (4, 1, 16, 16) and y.shape == from_gt.shape == (4, 16, 16)
    inside = crop[0, 0].expand(2, 16, 16)
    assert torch.equal(from_gt[:2], ~inside) and torch.equal(from_gt[2:], inside)
    assert torch.equal(y[:2][from_gt[:2]], y_l[from_gt[:2]]) and torch.equal(y[2:][~from_gt[2:]], y_u[~from_gt[2:]])
    logits = torch.randn(4, 4, 16, 16)
    loss_in, loss_out = bcp_loss(logits, y, from_gt, 0.5)
    g = from_gt[:2].float()
    expected = masked_seg_loss(logits[:2], y[:2], g) + 0.5 * masked_seg_loss(logits[:2], y[:2], 1 - g)
    assert loss_in == pytest.approx(float(expected))
    ones = torch.ones(2, 16, 16)
    assert masked_seg_loss(logits[:2], y[:2], ones) == pytest.approx(float(seg_loss(logits[:2], y[:2])) / 2)
    # a part's CE is its pixels' mean: (CE mean over the part + Dice over the part) / 2
    ce = torch.nn.functional.cross_entropy(logits[:2], y[:2], reduction="none")[g.bool()].mean()
    dice = dice_loss(logits[:2].softmax(1), y[:2], mask=g)
    assert masked_seg_loss(logits[:2], y[:2], g) == pytest.approx(float(ce + dice) / 2)


def test_abd_displacement_moves_the_patches_its_rule_picks():
    """A 2 x 2 grid on 4 x 4 slices; hand-made confidences: in the weak view patch 3 is the least and patch 0 the most
    confident, in the strong view patch 1 the least and patch 2 the most."""
    weak = torch.arange(16.0).view(1, 1, 4, 4)
    strong = 100 + torch.arange(16.0).view(1, 1, 4, 4)
    lab_w, lab_s = torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long)
    conf_w, conf_s = torch.tensor([[0.9, 0.5, 0.6, 0.1]]), torch.tensor([[0.4, 0.2, 0.95, 0.3]])
    patch = lambda x, k: x[..., 2 * (k // 2):2 * (k // 2) + 2, 2 * (k % 2):2 * (k % 2) + 2]
    (rw, rlw), (rs, rls) = bidirectional_displacement((weak, lab_w), (strong, lab_s), conf_w, conf_s, 2)
    # ABD-R: weak's least confident patch (3) <- strong's most confident (2); strong's least (1) <- weak's most (0)
    assert torch.equal(patch(rw, 3), patch(strong, 2)) and torch.equal(patch(rlw, 3), patch(lab_s, 2))
    assert torch.equal(patch(rs, 1), patch(weak, 0)) and torch.equal(patch(rls, 1), patch(lab_w, 0))
    for k in (0, 1, 2):
        assert torch.equal(patch(rw, k), patch(weak, k)) and torch.equal(patch(rlw, k), patch(lab_w, k))
    for k in (0, 2, 3):
        assert torch.equal(patch(rs, k), patch(strong, k))
    # ABD-I: weak's most confident patch (0) <- strong's least confident (1); strong's most (2) <- weak's least (3)
    (iw, ilw), (is_, _) = bidirectional_displacement((weak, lab_w), (strong, lab_s), conf_w, conf_s, 2, inverse=True)
    assert torch.equal(patch(iw, 0), patch(strong, 1)) and torch.equal(patch(ilw, 0), patch(lab_s, 1))
    assert torch.equal(patch(is_, 2), patch(weak, 3))
    assert (iw != weak).sum() == 4 and (is_ != strong).sum() == 4  # one patch each, nothing else
    # the confidences come from the predictions, patch by patch, row-major
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0] = torch.tensor([[1.0, 1, .5, .5], [1, 1, .5, .5], [.7, .7, .9, .9], [.7, .7, .9, .9]])
    probs[:, 1] = 1 - probs[:, 0]
    assert torch.allclose(patch_confidence(probs, 2), torch.tensor([[1.0, 0.5, 0.7, 0.9]]))


def test_unimatch_feature_dropout_acts_only_on_the_perturbed_stream():
    torch.manual_seed(0)
    net = UNet(1, 4).eval()  # eval: BatchNorm's running statistics, no encoder dropout; the FP dropout still acts
    x = torch.rand(3, 1, 32, 32)
    seen = []
    net.decoder.register_forward_pre_hook(lambda m, args: seen.append([f.clone() for f in args[0]]))
    logits, logits_fp = net.forward_perturbed(x, 0.5, first=1)
    assert logits.shape == (3, 4, 32, 32) and logits_fp.shape == (2, 4, 32, 32)
    with torch.no_grad():
        clean = net.encoder(x)
        assert torch.allclose(logits, net(x), atol=1e-6)  # the clean stream is the plain forward
    for f, both in zip(clean, seen[0]):
        assert torch.equal(both[:3], f)  # clean stream untouched
        pert, ref = both[3:], f[1:]
        kept = pert.abs().sum((2, 3)) > 0  # (2, C): whole channels are dropped or kept
        assert torch.allclose(pert[kept], 2 * ref[kept]) and (pert[~kept] == 0).all()
        assert 0.2 < kept.float().mean() < 0.8
    assert not torch.allclose(logits_fp, net(x[1:]), atol=1e-3)
    net.decoder._forward_pre_hooks.clear()
    same, same_fp = net.forward_perturbed(x, 0.0, first=1)  # p = 0: the perturbed stream equals the clean one
    assert torch.allclose(same_fp, same[1:], atol=1e-6)


def test_cutmix_pastes_the_partners_box_with_its_labels():
    torch.manual_seed(0)
    x = torch.arange(4 * 8 * 8.0).view(4, 1, 8, 8)
    y = (x[:, 0] // 10).long()
    box, partner = cutmix_boxes(4, (8, 8), 1.0, x.device, area=(0.2, 0.4)), cutmix_partners(4)
    assert box.shape == (4, 1, 8, 8) and box.flatten(1).any(1).all() and sorted(partner.tolist()) == [0, 1, 2, 3]
    assert (partner != torch.arange(4)).all()  # nobody is its own partner
    mixed, mixed_y = cutmix(x, box, partner), cutmix(y, box, partner)
    for i in range(4):
        inside = box[i, 0]
        assert torch.equal(mixed[i, 0][inside], x[partner[i], 0][inside])
        assert torch.equal(mixed[i, 0][~inside], x[i, 0][~inside])
        assert torch.equal(mixed_y[i], (mixed[i, 0] // 10).long())
    assert not cutmix_boxes(16, (8, 8), 0.0, x.device).any()  # probability 0: no box


def test_cutmix_boxes_are_rectangles_of_unimatchs_area_and_aspect_inside_the_slice():
    torch.manual_seed(0)
    boxes = cutmix_boxes(200, (64, 96), 1.0, "cpu")[:, 0]
    for b in boxes:
        rows, cols = b.any(1).nonzero()[:, 0], b.any(0).nonzero()[:, 0]
        h, w = len(rows), len(cols)
        assert h and w and int(b.sum()) == h * w  # one filled rectangle, inside the slice by construction
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w
        # int() truncates each side of a box of area s in [0.02, 0.4] x 64 x 96 and aspect h / w in [0.3, 1 / 0.3]
        assert h * w <= 0.4 * 64 * 96 and (h + 1) * (w + 1) >= 0.02 * 64 * 96
        assert h / (w + 1) <= 1 / 0.3 and (h + 1) / w >= 0.3
    frac = boxes.flatten(1).float().mean(1)
    assert 0.15 < float(frac.mean()) < 0.25  # U(0.02, 0.4): mean 0.21, a little less after truncation
    half = cutmix_boxes(400, (32, 32), 0.5, "cpu").flatten(1).any(1).float().mean()
    assert 0.4 < float(half) < 0.6


def test_dice_loss_counts_or_skips_a_class_absent_from_the_masked_target():
    """Two pixels under the mask, both background: class 1 is absent there. Hand computation with s = 1e-5:
    background 1 - (2*0.9 + s) / (0.81 + 2 + s) and the same for 0.7 / 0.49 pooled; class 1 1 - s / (sum p^2 + s)."""
    probs = torch.tensor([[0.9, 0.7, 0.2], [0.1, 0.3, 0.8]]).view(1, 2, 1, 3)  # (B=1, C=2, 1, 3)
    target = torch.tensor([[[0, 0, 1]]])
    mask = torch.tensor([[[1, 1, 0]]])  # the class-1 pixel is not confident
    s = 1e-5
    bg = 1 - (2 * (0.9 + 0.7) + s) / ((0.81 + 0.49) + 2 + s)
    fg = 1 - s / ((0.01 + 0.09) + s)  # ~1: absent, yet scored
    assert float(dice_loss(probs, target, mask=mask)) == pytest.approx((bg + fg) / 2, abs=1e-6)  # fp32 sums
    assert float(dice_loss(probs, target, mask=mask, skip_absent=True)) == pytest.approx(bg, abs=1e-6)
    assert float(dice_loss(probs, target, skip_absent=True)) == pytest.approx(float(dice_loss(probs, target)))
    assert float(dice_loss(probs, target, mask=torch.zeros_like(mask), skip_absent=True)) == 0.0


def test_largest_component_keeps_exactly_one_component_per_class():
    from scipy import ndimage

    lab = torch.zeros(2, 10, 10, dtype=torch.long)
    lab[0, 0:3, 0:3] = 1  # class 1: 9 pixels ...
    lab[0, 6:8, 6:8] = 1  # ... and 4 pixels
    lab[0, 5, 0] = 1      # ... and 1 pixel
    lab[0, 0:2, 5:9] = 2  # class 2: 8 pixels and, touching diagonally (one 8-component), 2
    lab[0, 4, 4] = lab[0, 5, 5] = 2
    lab[1, 2:6, 2:6] = 3  # slice 2: class 3 in two pieces, 16 and 2; a lone class 1 pixel stays
    lab[1, 8, 8:10] = 3
    lab[1, 0, 9] = 1
    lab[1, 6, 0] = lab[1, 7, 1] = lab[1, 8, 2] = lab[1, 9, 3] = 2  # class 2: a diagonal of 4 (one 8-component)
    lab[1, 0, 0:3] = 2                                                # ... beats a bar of 3
    out = largest_component_labels(lab, 4)
    for i in range(2):
        for c in range(1, 4):
            n = ndimage.label(out[i].numpy() == c, structure=np.ones((3, 3)))[1]  # 8-connectivity
            assert n == (1 if (lab[i] == c).any() else 0), (i, c, n)
    assert (out[1] == 2).sum() == 4 and out[1, 9, 3] == 2 and out[1, 0, 0] == 0
    assert (out[0] == 1).sum() == 9 and (out[0] == 2).sum() == 8 and (out[1] == 3).sum() == 16
    assert out[1, 0, 9] == 1 and out[0, 6, 6] == 0 and out[0, 4, 4] == 0  # removed pixels become background
    assert torch.equal(out[lab == 0], lab[lab == 0])


def test_flag_checks_fail_before_anything_is_written(tiny_root, tmp_path):
    snap = tmp_path / "bad"
    for script, flags, match in [
            (train_bcp_ACDC, ["--batch_size", "6", "--labeled_bs", "2"], "twice it"),
            (train_bcp_ACDC, ["--batch_size", "6", "--labeled_bs", "3"], "even"),
            (train_bcp_ACDC, ["--pretrain_iterations", "9", "--max_iterations", "8"], "--pretrain_iterations 9"),
            (train_abd_ACDC, ["--abd_grid", "3"], "--abd_grid 3")]:
        with pytest.raises(UsageError, match=match):
            script.main(["--root_path", tiny_root, "--snapshot_dir", str(snap), *SMALL, *flags])
    with pytest.raises(SystemExit) as e:  # UniMatch's feature perturbation is a U-Net forward
        train_unimatch_ACDC.main(["--root_path", tiny_root, "--snapshot_dir", str(snap), *SMALL, "--model", "mcnet"])
    assert e.value.code == 2
    assert not snap.exists()
    defaults = train_bcp_ACDC.parse_args(["--max_iterations", "1200"])
    assert (defaults.pretrain_iterations, defaults.alpha, defaults.crop_ratio, defaults.ema_decay) == \
        (300, 0.5, 2 / 3, 0.99)
    assert train_bcp_ACDC.parse_args(["--max_iterations", "40000"]).pretrain_iterations == 10000
    u = train_unimatch_ACDC.parse_args([])
    assert (u.conf_thresh, u.fp_dropout, u.batch_size, u.labeled_bs) == (0.95, 0.5, 24, 12)


def test_benchmark_times_bcp_in_each_stage():
    """benchmark.py's bcp runs the self-training step (teacher + student on every slice), bcp_pretrain the
    cheaper pre-training step (student on the labeled slices)."""
    a = argparse.Namespace(batch_size=4, labeled_bs=2, patch_size=[48, 48], gpu=-1, amp="off", deterministic=1,
                           compile=0, warmup=1, iters=1, profile=0)
    pre, self_training = benchmark.bench_one("bcp_pretrain", a), benchmark.bench_one("bcp", a)
    assert 0 < pre["gflop_per_iter"] < self_training["gflop_per_iter"]
    assert {"bcp", "abd", "unimatch", "fixmatch"} <= set(benchmark.METHODS)
