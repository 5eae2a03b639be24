"""Label decoder (docs/method.md, Networks): rectified latent -> C-class logits at full resolution.

A τ-conditioned U-Net decoder (up 256->128->64->32->16, no dropout, 3x3 output conv). Its skips are B_sem's
encodings of the *condition* input, so it also sees the unrectified label at every finer resolution; the
rectified latent takes the place of B_sem's bottleneck.
"""
import torch.nn as nn

from networks.blocks import Decoder

WIDTHS = (16, 32, 64, 128, 256)


class LabelDecoder(nn.Module):
    def __init__(self, num_classes, emb_dim=512, widths=WIDTHS):
        super().__init__()
        self.decoder = Decoder(num_classes, widths, emb_dim)

    def forward(self, latent, cond_feats, emb):
        # latent (B, 256, H/16, W/16), cond_feats: B_sem's 5 condition maps, emb (B, emb_dim)
        # -> logits (B, C, H, W)
        return self.decoder(list(cond_feats[:-1]) + [latent], emb)
