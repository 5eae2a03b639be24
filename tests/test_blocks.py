import copy

import pytest
import torch

from networks.blocks import Dropout
from utils.losses import masked_pseudo_label


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5])
def test_cpu_dropout_mask_rate_scale_and_gradient(p):
    torch.manual_seed(0)
    x = torch.rand(8, 16, 64, 64) + 0.5  # no zeros, so y == 0 marks exactly the dropped elements
    x.requires_grad_(True)
    drop = Dropout(p).train()
    y = drop(x)
    keep = y != 0
    n = keep.numel()
    rate = keep.float().mean().item()
    sigma = ((1 - p) * p / n) ** 0.5
    assert abs(rate - (1 - p)) < 5 * sigma + 1 / 65536, (rate, 1 - p)
    assert torch.equal(y[keep], x.detach()[keep] * (1.0 / (1.0 - p)))
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.equal(x.grad, g * keep * (1.0 / (1.0 - p)))
    # the mask is not position-biased: each quarter of the elements (each 16-bit lane of a draw) keeps 1 - p
    lanes = keep.flatten().view(-1, 4).float().mean(0)
    assert (lanes - (1 - p)).abs().max().item() < 5 * 2 * sigma, lanes


def test_cpu_dropout_seeded_eval_identity_and_zero_p():
    x = torch.randn(4, 8, 16, 16)
    drop = Dropout(0.2).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, drop(x))  # the generator moved on
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    odd = torch.randn(3, 5, 7)  # numel not a multiple of 4
    assert drop.train()(odd).shape == odd.shape


def test_pseudo_label_index_is_argmax_with_first_index_ties():
    torch.manual_seed(0)
    logits = torch.randn(4, 4, 32, 32) * 3
    logits[0, :, :4, :4] = 0.0  # all classes equal: no class survives the mask -> background
    logits[1, 1, :8] = logits[1, 2, :8] = 10.0  # a tie between two classes
    y = masked_pseudo_label(logits, 0.8)
    p = logits.softmax(1)
    pmin, pmax = p.min(1, keepdim=True).values, p.max(1, keepdim=True).values
    assert torch.equal(y, (p * ((p - pmin) / pmax > 0.8)).argmax(1))
    assert (y[0, :4, :4] == 0).all()


def test_channels_last_unet_predicts_what_the_nchw_one_does():
    """test_ACDC.py --channels_last changes the evaluation network's memory layout only: its eval-mode logits
    match the NCHW network's up to float rounding, and so do the predicted labels."""
    from networks.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 4).eval()
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    w = net_cl.encoder.stages[0].conv2[0].weight
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        a, b = net(x), net_cl(x)
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, a.abs().max().item())
