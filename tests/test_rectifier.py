import math

import pytest
import torch

from networks.context_encoder import SemanticContextEncoder
from networks.denoiser import LatentDenoiser
from networks.embeddings import EmbeddingMLP, sinusoidal_embedding
from networks.label_decoder import LabelDecoder
from networks.rectifier import Rectifier
from networks.semantic_coloring import colorize

SIZES = [(16, 16), (32, 32), (48, 48), (64, 64), (80, 80), (48, 80), (64, 32)]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def rect():
    torch.manual_seed(0)
    return Rectifier(4)


def batch(H, W, C=4, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 1, H, W, generator=g), torch.randint(0, C, (B, H, W), generator=g),
            torch.randint(0, C, (B, H, W), generator=g))


def test_sinusoidal_embedding():
    v = torch.tensor([0.0, 3.0, 998.0])
    e = sinusoidal_embedding(v, 128)
    assert e.shape == (3, 128)
    assert torch.equal(e[0], torch.cat([torch.ones(64), torch.zeros(64)]))  # cos 0, sin 0
    assert math.isclose(e[1, 0].item(), math.cos(3.0), abs_tol=1e-6)
    assert math.isclose(e[1, 64 + 1].item(), math.sin(3.0 * 10000 ** (-1 / 64)), abs_tol=1e-6)
    assert sinusoidal_embedding(v, 7).shape == (3, 7)
    assert EmbeddingMLP(128, 512)(torch.tensor([1, 2])).shape == (2, 512)


def test_parameter_counts_default_4_classes(rect):
    assert n_params(rect.tau_embed) == 328_704
    assert n_params(rect.context.sem) == 1_435_344
    assert n_params(rect.context.img) == 1_434_912
    assert n_params(rect.context) == 2_870_256
    assert n_params(rect.denoiser) == 13_512_832
    assert n_params(rect.denoiser.time_embed) == 328_704
    assert n_params(rect.decoder) == 756_420
    assert n_params(rect) == 17_468_212
    assert n_params(Rectifier(3)) == 17_468_067  # output conv only
    assert not [k for k in rect.state_dict() if k.startswith("diffusion.")]  # schedule buffers not checkpointed


@pytest.mark.parametrize("H,W", SIZES)
def test_shapes(rect, H, W):
    image, cond, _ = batch(H, W)
    emb = rect.embed_tau(torch.tensor([0.1, 0.9]))
    with torch.no_grad():
        img_feats = rect.context.image_features(image, emb)
        feats = rect.context(image, colorize(cond, 4), emb, img_feats)
        for i, (a, b) in enumerate(zip(img_feats, feats)):
            shape = (2, 16 * 2 ** i, math.ceil(H / 2 ** i), math.ceil(W / 2 ** i))
            assert a.shape == shape and b.shape == shape
        z = feats[-1]
        assert z.shape == (2, 256, math.ceil(H / 16), math.ceil(W / 16))
        t = torch.tensor([0, 9])
        for mode in ("skip", "input"):
            assert rect.denoiser(torch.randn_like(z), t, z, mode).shape == z.shape
        assert rect.decoder(z, feats, emb).shape == (2, 4, H, W)
        assert rect.rectify(image, cond, torch.tensor([0.2, 0.2])).shape == (2, 4, H, W)


def test_denoiser_cond_input_modes():
    torch.manual_seed(0)
    den = LatentDenoiser().eval()
    seen = []
    den.down1.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    z, cond, t = torch.randn(2, 256, 4, 4), torch.randn(2, 256, 4, 4), torch.tensor([3, 5])
    with torch.no_grad():
        out_skip = den(z, t, cond, "skip")
        out_input = den(z, t, cond, "input")
    assert torch.equal(seen[0], z)  # reference: the down path sees z_t only
    assert torch.allclose(seen[1], z + cond)
    assert not torch.allclose(out_skip, out_input)
    with pytest.raises(ValueError):
        den(z, t, cond, "concat")


def test_context_encoder_adds_image_features():
    torch.manual_seed(0)
    enc = SemanticContextEncoder(3).eval()
    image, cond, _ = batch(32, 32)
    emb = torch.randn(2, 512)
    with torch.no_grad():
        feats = enc.image_features(image, emb)
        zero = [torch.zeros_like(f) for f in feats]
        assert not torch.allclose(enc(image, colorize(cond, 4), emb, feats)[0],
                                  enc(image, colorize(cond, 4), emb, zero)[0])
        assert torch.allclose(enc(image, colorize(cond, 4), emb, feats)[0],
                              enc(image, colorize(cond, 4), emb, zero)[0] + feats[0])


def test_label_decoder_uses_latent_in_place_of_bottleneck():
    torch.manual_seed(0)
    dec = LabelDecoder(4).eval()
    feats = [torch.randn(2, 16 * 2 ** i, 32 // 2 ** i, 32 // 2 ** i) for i in range(5)]
    emb = torch.randn(2, 512)
    with torch.no_grad():
        a = dec(feats[-1], feats, emb)
        b = dec(torch.randn_like(feats[-1]), feats, emb)
        c = dec(feats[-1], feats[:-1] + [torch.randn_like(feats[-1])], emb)
    assert a.shape == (2, 4, 32, 32) and not torch.allclose(a, b) and torch.equal(a, c)


def test_training_losses_and_gradients(rect):
    rect.train()
    rect.zero_grad()
    image, cond, target = batch(32, 32)
    loss, logits = rect.training_losses(image, cond, target, torch.tensor([0.3, 0.3]),
                                        torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    assert logits.shape == (2, 4, 32, 32) and torch.isfinite(logits).all()
    (loss + torch.nn.functional.cross_entropy(logits, target)).backward()
    missing = [n for n, p in rect.named_parameters() if p.grad is None]
    assert not missing, missing
    for group in (rect.tau_embed, rect.context.sem, rect.context.img, rect.denoiser, rect.denoiser.time_embed,
                  rect.decoder):
        assert sum(p.grad.abs().sum() for p in group.parameters()) > 0
    rect.zero_grad()


def test_training_losses_deterministic_with_generator(rect):
    rect.eval()  # no dropout: everything random comes from the generator
    image, cond, target = batch(32, 48)
    tau = torch.tensor([0.5, 0.5])
    a = rect.training_losses(image, cond, target, tau, torch.Generator().manual_seed(7))
    b = rect.training_losses(image, cond, target, tau, torch.Generator().manual_seed(7))
    assert a[0].item() == b[0].item() and torch.equal(a[1], b[1])
    rect.train()


def test_rectify_deterministic_and_mode_kept(rect):
    image, cond, _ = batch(48, 48)
    tau = torch.tensor([0.4, 0.4])
    rect.eval()
    a = rect.rectify(image, cond, tau, torch.Generator().manual_seed(1))
    b = rect.rectify(image, cond, tau, torch.Generator().manual_seed(1))
    c = rect.rectify(image, cond, tau, torch.Generator().manual_seed(2))
    assert not rect.training
    assert a.shape == (2, 4, 48, 48) and not a.requires_grad
    assert torch.equal(a, b) and not torch.equal(a, c)
    rect.train()
    torch.manual_seed(3)
    a = rect.rectify(image, cond, tau, torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    b = rect.rectify(image, cond, tau, torch.Generator().manual_seed(1))
    assert rect.training and torch.equal(a, b)


def test_onehot_scheme_changes_input_channels():
    r = Rectifier(4, label_scheme="onehot")
    assert r.context.sem.stages[0].conv1[0].in_channels == 1 + 4
    assert Rectifier(6).context.sem.stages[0].conv1[0].in_channels == 1 + 3
    assert n_params(r.context.sem) == 1_435_488
    image, cond, target = batch(32, 32)
    loss, logits = r.training_losses(image, cond, target, torch.tensor([0.1, 0.1]))
    assert torch.isfinite(loss) and logits.shape == (2, 4, 32, 32)


def test_lcc_only_path():
    torch.manual_seed(0)
    r = Rectifier(4, use_diffusion=False)
    image, cond, target = batch(32, 32)
    loss, logits = r.training_losses(image, cond, target, torch.tensor([0.1, 0.1]))
    assert loss.item() == 0.0 and logits.shape == (2, 4, 32, 32)
    logits.sum().backward()
    assert all(p.grad is None for p in r.denoiser.parameters())
    assert all(p.grad is not None for p in r.context.parameters())
    r.eval()
    a = r.rectify(image, cond, torch.tensor([0.1, 0.1]), torch.Generator().manual_seed(0))
    b = r.rectify(image, cond, torch.tensor([0.1, 0.1]), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)  # no noise involved


def test_tau_none_zero_embedding(rect):
    assert torch.equal(rect.embed_tau(None, 2), torch.zeros(2, 512))
    e = rect.embed_tau(torch.tensor([0.25, 0.25]))
    assert e.shape == (2, 512) and e.abs().sum() > 0
    assert torch.equal(rect.embed_tau(0.25, 2), e)  # scalar τ broadcast to the batch
    rect.train()
    image, cond, target = batch(32, 32)
    loss, logits = rect.training_losses(image, cond, target, None, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and logits.shape == (2, 4, 32, 32)
    rect.zero_grad()
    logits.sum().backward()
    assert all(p.grad is None for p in rect.tau_embed.parameters())  # CG switched off
    rect.zero_grad()


def test_sampler_options():
    torch.manual_seed(0)
    image, cond, _ = batch(32, 32)
    tau = torch.tensor([0.3, 0.3])
    for kw in (dict(sampler="ddpm"), dict(clip_latent=False, sample_steps=3), dict(cond_input="input")):
        r = Rectifier(4, **kw).eval()
        out = r.rectify(image, cond, tau, torch.Generator().manual_seed(0))
        assert out.shape == (2, 4, 32, 32) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        Rectifier(4, sampler="euler")
