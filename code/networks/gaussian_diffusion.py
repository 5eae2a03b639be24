"""Latent feature rectification maths (docs/method.md, Latent diffusion): one named function per formula, paper equation numbers cited.

The denoiser is x0-parameterised: every `model_fn(z_t, t)` here takes z_t (B, ...) and t (B,) long (original,
un-respaced step indices 0..T-1) and returns the predicted clean latent ẑ_0 of z_t's shape. t = 0 is already
one noising step (ᾱ_0 < 1). Schedule values are computed in float64 on the host once; per-sample coefficients
live in non-persistent float32 buffers (they follow `.to(device)` and stay out of checkpoints); sampler
coefficients are Python floats, so nothing on the forward path copies between host and device.
"""
import math

import torch
import torch.nn as nn


def cosine_alphas_cumprod(T, s=0.008, max_beta=0.999):
    """ᾱ_t, t = 0..T-1 (float64), of the cosine schedule: β_t = min(1 - f((t+1)/T) / f(t/T), max_beta),
    f(u) = cos²((u + s)/(1 + s)·π/2). The clip makes ᾱ_{T-1} = 0.001·ᾱ_{T-2} rather than 0."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)], dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(T):
    """ᾱ_t of the DDPM linear β schedule (1e-4..0.02 at T=1000, rescaled to T steps)."""
    scale = 1000 / T
    return torch.cumprod(1 - torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64), dim=0)


SCHEDULES = {"cosine": cosine_alphas_cumprod, "linear": linear_alphas_cumprod}


def respaced_timesteps(T, steps):
    """Original timesteps a `steps`-step sampler visits, in sampling order (descending).

    steps = 1 -> [T-1]; steps >= 2 -> round(linspace(0, T-1, steps)) (steps = 2 -> [T-1, 0]); capped at T."""
    if steps < 1:
        raise ValueError(f"need at least one sampling step, got {steps}")
    if steps == 1:
        return [T - 1]
    ts = torch.linspace(0, T - 1, min(steps, T), dtype=torch.float64).round().long().unique()
    return ts.flip(0).tolist()


class GaussianDiffusion(nn.Module):
    def __init__(self, T=10, schedule="cosine"):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is unknown; choose one of {sorted(SCHEDULES)}")
        self.T = T
        abar = SCHEDULES[schedule](T)  # (T,) float64
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1 - abar / abar_prev
        post_var = betas * (1 - abar_prev) / (1 - abar)  # 0 at t = 0
        self.alphas_cumprod_host = abar  # float64 on the host: scalar look-ups in the samplers
        for name, v in {
            "alphas_cumprod": abar,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "posterior_coef_z0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_coef_zt": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
            "posterior_variance": post_var,
            # log of 0 at t = 0 is replaced by the t = 1 value (that step adds no noise anyway)
            "posterior_log_variance_clipped": torch.cat([post_var[1:2], post_var[1:]]).log(),
        }.items():
            self.register_buffer(name, v.float(), persistent=False)

    @staticmethod
    def _extract(buf, t, x):
        # buf (T,), t (B,) long -> (B, 1, ..., 1) broadcastable against x, in x's dtype
        return buf[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    def q_sample(self, z0, t, noise):
        """Forward process, paper eq. 1/7: z_t = √ᾱ_t z_0 + √(1-ᾱ_t) ε, i.e. q(z_t|z_0) = N(√ᾱ_t z_0, (1-ᾱ_t)I)."""
        return self._extract(self.sqrt_alphas_cumprod, t, z0) * z0 + \
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, z0) * noise

    def training_loss(self, model_fn, z0, generator=None):
        """Paper eq. 9/11: t ~ U{0..T-1} per sample, loss = MSE(z_0, ε(z_t, t)) over batch and all elements.

        z0 (B, ...) is the (detached) target latent. Draws t, then the noise, from `generator` (on z0's device).
        Returns (loss scalar float32, ẑ_0 (B, ...), t (B,) long)."""
        t = torch.randint(0, self.T, (z0.shape[0],), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        z0_hat = model_fn(self.q_sample(z0, t, noise), t)
        return (z0_hat.float() - z0.float()).pow(2).mean(), z0_hat, t

    def posterior_mean_variance(self, z0, z_t, t):
        """q(z_{t-1} | z_t, z_0) = N(c0_t z_0 + ct_t z_t, β̃_t I) with c0_t = β_t √ᾱ_{t-1}/(1-ᾱ_t),
        ct_t = (1-ᾱ_{t-1}) √α_t/(1-ᾱ_t), β̃_t = β_t (1-ᾱ_{t-1})/(1-ᾱ_t), ᾱ_{-1} = 1.
        Returns (mean, variance, clipped log variance), the latter two (B, 1, ..., 1)."""
        mean = self._extract(self.posterior_coef_z0, t, z_t) * z0 + self._extract(self.posterior_coef_zt, t, z_t) * z_t
        return mean, self._extract(self.posterior_variance, t, z_t), \
            self._extract(self.posterior_log_variance_clipped, t, z_t)

    def ddpm_step(self, z_t, t, z0_hat, generator=None):
        """Paper eq. 12 (ancestral DDPM step): z_{t-1} = posterior mean + √β̃_t·n, n ~ N(0, I), no noise at t = 0."""
        mean, _, log_var = self.posterior_mean_variance(z0_hat, z_t, t)
        noise = torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=z_t.dtype)
        nonzero = (t != 0).to(z_t.dtype).reshape(-1, *([1] * (z_t.dim() - 1)))
        return mean + nonzero * (0.5 * log_var).exp() * noise

    def p_sample_loop(self, model_fn, shape, generator=None, clip=True, device=None, dtype=torch.float32, noise=None):
        """Eq. 12 over all T steps from z_{T-1} ~ N(0, I); `clip` clamps each ẑ_0 to [-1, 1]. Returns z_{-1}."""
        z = noise if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for t in range(self.T - 1, -1, -1):
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
            z0_hat = model_fn(z, tt)
            z0_hat = z0_hat.clamp(-1, 1) if clip else z0_hat
            z = self.ddpm_step(z, tt, z0_hat, generator)
        return z

    def ddim_step(self, z_t, t, t_prev, z0_hat, eta=0.0, generator=None):
        """DDIM update (Song et al. 2021, their eq. 12) from original step t to t_prev (-1 = clean, ᾱ = 1):
        ε̂ = (z_t - √ᾱ_t ẑ_0)/√(1-ᾱ_t); z_prev = √ᾱ_prev ẑ_0 + √(1-ᾱ_prev-σ²) ε̂ + σ n,
        σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_prev). t, t_prev are Python ints (one step for the whole batch)."""
        a_t = float(self.alphas_cumprod_host[t])
        a_prev = 1.0 if t_prev < 0 else float(self.alphas_cumprod_host[t_prev])
        eps = (z_t - math.sqrt(a_t) * z0_hat) / math.sqrt(1 - a_t)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(max(1 - a_t / a_prev, 0.0))
        z_prev = math.sqrt(a_prev) * z0_hat + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            z_prev = z_prev + sigma * torch.randn(z_t.shape, generator=generator, device=z_t.device, dtype=z_t.dtype)
        return z_prev

    def ddim_sample(self, model_fn, shape, steps=2, generator=None, clip=True, eta=0.0, device=None,
                    dtype=torch.float32, noise=None):
        """Rectification sampler (docs/method.md, Latent diffusion): z ~ N(0, I) from `generator` (or `noise`), DDIM over the respaced
        timesteps; `clip` clamps each ẑ_0 to [-1, 1] (reference). Returns the last step's ẑ_0, shape `shape`."""
        ts = respaced_timesteps(self.T, steps)
        z = noise if noise is not None else torch.randn(shape, generator=generator, device=device, dtype=dtype)
        for i, t in enumerate(ts):
            z0_hat = model_fn(z, torch.full((z.shape[0],), t, device=z.device, dtype=torch.long))
            z0_hat = z0_hat.clamp(-1, 1) if clip else z0_hat
            if i + 1 < len(ts):  # the last step goes to ᾱ = 1, where z_prev = ẑ_0 exactly
                z = self.ddim_step(z, t, ts[i + 1], z0_hat, eta, generator)
        return z0_hat
