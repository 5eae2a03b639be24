import itertools

import pytest
import torch

from networks.semantic_coloring import (colorize, decolorize, encode_labels, label_channels, one_hot_map,
                                        palette)


def test_palette_small_class_counts():
    assert palette(2).tolist() == [[0, 0, 0], [1, 1, 1]]  # black, white
    assert palette(3).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]  # black, red, green
    assert palette(4).tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]  # + blue


@pytest.mark.parametrize("C", range(2, 13))
def test_palette_distinct_and_in_unit_cube(C):
    pal = palette(C, dtype=torch.float64)
    assert pal.shape == (C, 3)
    assert pal.min() >= 0 and pal.max() <= 1
    if C <= 8:  # corners of the RGB cube only
        assert set(pal.flatten().tolist()) <= {0.0, 1.0}
    d = torch.cdist(pal, pal) + torch.eye(C) * 10
    assert d.min() >= 0.5  # well separated, not merely distinct
    assert palette(C).tolist() == pal.float().tolist()  # deterministic
    if C > 4:  # a longer palette extends the shorter one (except the special 2-class one)
        assert pal[:C - 1].tolist() == palette(C - 1, dtype=torch.float64).tolist()


def test_palette_is_a_fresh_copy():
    p = palette(4)
    p.fill_(7)
    assert colorize(torch.full((1, 2, 2), 1), 4)[0, :, 0, 0].tolist() == [1, 0, 0]


@pytest.mark.parametrize("C", range(2, 13))
def test_colorize_round_trip_exact(C):
    g = torch.Generator().manual_seed(C)
    labels = torch.randint(0, C, (2, 9, 7), generator=g)
    labels[0, 0, :C if C <= 7 else 7] = torch.arange(min(C, 7))
    colors = colorize(labels, C)
    assert colors.shape == (2, 3, 9, 7) and colors.dtype == torch.float32
    assert torch.equal(colors[:, :, 0, 1], palette(C)[labels[:, 0, 1]])
    back = decolorize(colors, C)
    assert back.dtype == torch.long and torch.equal(back, labels)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_kept(dtype):
    labels = torch.randint(0, 4, (2, 5, 6))
    colors = colorize(labels, 4, dtype=dtype)
    assert colors.dtype == dtype
    assert torch.equal(decolorize(colors, 4), labels)
    assert palette(4, dtype=dtype).dtype == dtype


def test_decolorize_snaps_to_nearest():
    labels = torch.randint(0, 4, (2, 6, 6))
    noisy = colorize(labels, 4) + 0.2 * torch.rand(2, 3, 6, 6) - 0.1
    assert torch.equal(decolorize(noisy, 4), labels)


def test_device_kept():
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        labels = torch.randint(0, 3, (2, 4, 4), device=dev)
        assert colorize(labels, 3).device.type == dev.type
        assert one_hot_map(labels, 3).device.type == dev.type
        assert palette(3, device=dev).device.type == dev.type


def test_one_hot_and_encode_labels():
    labels = torch.randint(0, 5, (2, 8, 8))
    oh = one_hot_map(labels, 5)
    assert oh.shape == (2, 5, 8, 8) and oh.dtype == torch.float32
    assert torch.equal(oh.sum(1), torch.ones(2, 8, 8))
    assert torch.equal(oh.argmax(1), labels)
    assert torch.equal(encode_labels(labels, 5, "onehot"), oh)
    assert torch.equal(encode_labels(labels, 5, "color"), colorize(labels, 5))
    for C, scheme in itertools.product((2, 4, 7), ("color", "onehot")):
        assert encode_labels(labels % C, C, scheme).shape[1] == label_channels(C, scheme)
    assert label_channels(4, "color") == 3 and label_channels(4, "onehot") == 4
    with pytest.raises(ValueError):
        label_channels(4, "rgb")
    with pytest.raises(ValueError):
        encode_labels(labels, 5, "rgb")
