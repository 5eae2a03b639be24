"""Scalar conditioning: sinusoidal features + MLP (docs/method.md, Networks).

Used twice in the rectifier, with separate weights: for the calibration-guidance value τ (fed as τ·999, so a
perfect pseudo label looks like a clean timestep) and for the denoiser's integer diffusion step t.
"""
import math

import torch
import torch.nn as nn


def sinusoidal_embedding(values, dim=128, max_period=10000.0):
    """values (B,) float or long -> (B, dim): [cos(v·f_k), sin(v·f_k)], f_k = max_period^(-k/half).

    The transformer / guided-diffusion timestep embedding, so any real value (τ·999 or t) gets a smooth code.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd dim: pad one zero column
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb  # (B, dim)


class EmbeddingMLP(nn.Module):
    """(B,) values -> sinusoidal (B, dim_in) -> Linear-SiLU-Linear -> (B, dim_out)."""

    def __init__(self, dim_in=128, dim_out=512):
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.mlp = nn.Sequential(nn.Linear(dim_in, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))

    def forward(self, values):
        # values: (B,) -> (B, dim_out)
        return self.mlp(sinusoidal_embedding(values, self.dim_in))
