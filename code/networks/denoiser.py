"""Latent denoising U-Net ε (docs/method.md, Networks), x0-parameterised: ε(z_t, t, cond) ≈ z_0.

On the latent (B, 256, h, w): no input conv, two max-pool downs 256->384->512, two up blocks back to 256 with
skips, conv blocks without dropout (BN throughout), each block conditioned on its own embedding of the raw
integer step t. No output projection: the output is the last block's activation (as in the reference).

Condition path (`cond_input`):
  "skip"  (reference) the top-level skip of the last up block is z_t + cond; the down path sees z_t only,
          so the condition reaches the network only through that skip.
  "input" (the paper's description) the down path gets z_t + cond as well.
"""
import torch.nn as nn

from networks.blocks import DownBlock, UpBlock
from networks.embeddings import EmbeddingMLP

COND_INPUTS = ("skip", "input")


class LatentDenoiser(nn.Module):
    def __init__(self, latent_chn=256, base_chn=64, emb_dim=512, time_dim=128):
        super().__init__()
        c0, c1, c2 = latent_chn, 6 * base_chn, 8 * base_chn  # 256, 384, 512 at base 64
        self.time_embed = EmbeddingMLP(time_dim, emb_dim)
        self.down1 = DownBlock(c0, c1, 0.0, emb_dim)
        self.down2 = DownBlock(c1, c2, 0.0, emb_dim)
        self.up1 = UpBlock(c2, c1, c1, 0.0, emb_dim)
        self.up2 = UpBlock(c1, c0, c0, 0.0, emb_dim)

    def forward(self, z_t, t, cond, cond_input="skip"):
        # z_t (B, 256, h, w), t (B,) long in [0, T), cond (B, 256, h, w) -> predicted z0 (B, 256, h, w)
        if cond_input not in COND_INPUTS:
            raise ValueError(f"cond_input {cond_input!r} is unknown; choose one of {COND_INPUTS}")
        emb = self.time_embed(t)  # (B, emb_dim)
        x0 = z_t + cond  # top-level skip, (B, 256, h, w)
        x1 = self.down1(x0 if cond_input == "input" else z_t, emb)  # (B, 384, ceil(h/2), ceil(w/2))
        x2 = self.down2(x1, emb)  # (B, 512, ceil(h/4), ceil(w/4))
        h = self.up1(x2, x1, emb)  # (B, 384, ceil(h/2), ceil(w/2))
        return self.up2(h, x0, emb)  # (B, 256, h, w)
