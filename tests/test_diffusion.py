import math

import pytest
import torch

from networks.gaussian_diffusion import GaussianDiffusion, cosine_alphas_cumprod, respaced_timesteps

COSINE_ABAR = [0.972, 0.899, 0.787, 0.647, 0.494, 0.341, 0.203, 0.094, 0.024, 2.4e-5]


def oracle(x0):
    return lambda z_t, t: x0.clone()


def test_cosine_schedule_matches_spec():
    abar = cosine_alphas_cumprod(10)
    assert abar.shape == (10,)
    assert torch.allclose(abar, torch.tensor(COSINE_ABAR, dtype=torch.float64), atol=1e-3)
    assert abs(abar[-1].item() - 2.4e-5) < 1e-6  # β_9 clipped at 0.999
    assert (abar[1:] < abar[:-1]).all()
    assert (abar > 0).all() and (abar < 1).all()
    d = GaussianDiffusion(10)
    assert torch.allclose(d.alphas_cumprod.double(), abar)


def test_respaced_timesteps():
    assert respaced_timesteps(10, 2) == [9, 0]
    assert respaced_timesteps(10, 1) == [9]
    assert respaced_timesteps(10, 3) == [9, 4, 0]  # round(4.5) = 4 (half to even)
    assert respaced_timesteps(10, 10) == list(range(9, -1, -1))
    assert respaced_timesteps(10, 50) == list(range(9, -1, -1))
    with pytest.raises(ValueError):
        respaced_timesteps(10, 0)


def test_q_sample_matches_eq1():
    d = GaussianDiffusion(10)
    g = torch.Generator().manual_seed(0)
    n = 40000
    z0 = torch.full((10, n), 0.7)
    t = torch.arange(10)
    z_t = d.q_sample(z0, t, torch.randn(10, n, generator=g))
    abar = cosine_alphas_cumprod(10).float()
    assert torch.allclose(z_t.mean(1), abar.sqrt() * 0.7, atol=0.02)
    assert torch.allclose(z_t.var(1), 1 - abar, atol=0.02)
    assert torch.allclose(d.q_sample(z0, t, torch.zeros(10, n)), abar.sqrt()[:, None] * z0, atol=1e-6)


def test_training_loss_oracle_and_generator():
    d = GaussianDiffusion(10)
    x0 = torch.randn(64, 4, 3, 3) * 2
    loss, x0_hat, t = d.training_loss(oracle(x0), x0, torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and loss.item() == 0.0
    assert torch.equal(x0_hat, x0)
    assert t.shape == (64,) and t.dtype == torch.long and t.min() >= 0 and t.max() <= 9
    assert len(t.unique()) > 5  # drawn per sample
    seen = {}
    loss_a, _, t_a = d.training_loss(lambda z, tt: seen.setdefault("a", z), x0, torch.Generator().manual_seed(3))
    loss_b, _, t_b = d.training_loss(lambda z, tt: seen.setdefault("b", z), x0, torch.Generator().manual_seed(3))
    assert torch.equal(t_a, t_b) and torch.equal(seen["a"], seen["b"]) and loss_a.item() == loss_b.item()
    assert loss_a.item() > 0  # the identity map is not an oracle


@pytest.mark.parametrize("steps", [1, 2, 3, 10])
def test_ddim_oracle_returns_x0(steps):
    d = GaussianDiffusion(10)
    x0 = torch.randn(2, 4, 3, 3) * 3
    out = d.ddim_sample(oracle(x0), x0.shape, steps, torch.Generator().manual_seed(0), clip=False)
    assert torch.equal(out, x0)
    x0c = x0.clamp(-1, 1)
    out = d.ddim_sample(oracle(x0c), x0.shape, steps, torch.Generator().manual_seed(0), clip=True)
    assert torch.equal(out, x0c)
    out = d.ddim_sample(oracle(x0), x0.shape, steps, torch.Generator().manual_seed(0), clip=True)
    assert torch.equal(out, x0c)  # clip clamps ẑ_0 (reference behaviour)


def test_ddim_trajectory_and_determinism():
    """With an oracle, η = 0 DDIM keeps the initial ε: z at step t' = √ᾱ_t' x0 + √(1-ᾱ_t') ε."""
    d = GaussianDiffusion(10)
    abar = cosine_alphas_cumprod(10)
    x0 = torch.rand(2, 4, 3, 3) * 2 - 1
    seen = []

    def fn(z, t):
        seen.append((z.clone(), t.clone()))
        return x0.clone()

    d.ddim_sample(fn, x0.shape, 3, torch.Generator().manual_seed(5), clip=False)
    assert [s[1].tolist() for s in seen] == [[9, 9], [4, 4], [0, 0]]
    z9 = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(seen[0][0], z9)  # starts from the generator's noise
    eps = (z9 - math.sqrt(abar[9]) * x0) / math.sqrt(1 - abar[9])
    for z, t in seen[1:]:
        a = abar[t[0]].item()
        assert torch.allclose(z, math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, atol=1e-5)


def test_posterior_and_ddpm_step():
    d = GaussianDiffusion(10)
    assert d.posterior_variance[0].item() == 0.0
    z0, z_t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.zeros(3, dtype=torch.long)
    mean, var, _ = d.posterior_mean_variance(z0, z_t, t)
    assert torch.equal(mean, z0) and torch.equal(var, torch.zeros(3, 1, 1, 1))
    assert torch.equal(d.ddpm_step(z_t, t, z0, torch.Generator().manual_seed(0)), z0)  # no noise at t = 0
    # eq. 12 equals DDIM with η = 1 to the previous step (same mean, σ² = β̃_t, same noise draw)
    for step in range(1, 10):
        tt = torch.full((3,), step)
        a = d.ddpm_step(z_t, tt, z0, torch.Generator().manual_seed(step))
        b = d.ddim_step(z_t, step, step - 1, z0, eta=1.0, generator=torch.Generator().manual_seed(step))
        assert torch.allclose(a, b, atol=1e-5)
        _, var, logv = d.posterior_mean_variance(z0, z_t, tt)
        assert torch.allclose(var.log(), logv) and (var > 0).all()


def test_ddpm_loop_oracle_returns_x0():
    d = GaussianDiffusion(10)
    x0 = torch.rand(2, 4, 3, 3) * 2 - 1
    calls = []
    out = d.p_sample_loop(lambda z, t: calls.append(t[0].item()) or x0.clone(), x0.shape,
                          torch.Generator().manual_seed(0), clip=True)
    assert calls == list(range(9, -1, -1))
    assert torch.allclose(out, x0, atol=1e-6)
