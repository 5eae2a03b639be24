"""Semantic context embedding B_sem plus its image-feature encoder (docs/method.md, Networks).

B_sem encodes [image, label map] (1 + label_channels inputs) through five τ-conditioned stages (16..256, the θ
encoder's dropouts). A second encoder of the same shape, with its own weights, encodes the image alone; its
stage-i output is added to B_sem's stage-i output before that sum feeds stage i+1 and the skip. (The paper
says "concatenation"; the reference concatenates the raw image at the input and adds the features — we
follow the reference.) The image pass does not depend on the label, so the rectifier computes it once per
image and reuses it for the condition and the target encodings.
"""
import torch
import torch.nn as nn

from networks.blocks import Encoder

WIDTHS = (16, 32, 64, 128, 256)
DROPOUTS = (0.05, 0.1, 0.2, 0.3, 0.5)


class SemanticContextEncoder(nn.Module):
    def __init__(self, label_chn=3, emb_dim=512, widths=WIDTHS, dropouts=DROPOUTS):
        super().__init__()
        self.label_chn = label_chn
        self.sem = Encoder(1 + label_chn, widths, dropouts, emb_dim)  # B_sem over [image, label map]
        self.img = Encoder(1, widths, dropouts, emb_dim)  # image-feature encoder, own weights

    def image_features(self, image, emb):
        # image (B, 1, H, W), emb (B, emb_dim) -> 5 maps (B, widths[i], H/2^i, W/2^i)
        return self.img(image, emb)

    def forward(self, image, label_map, emb, image_feats):
        """Paper eq. 5, B_sem: image (B, 1, H, W), label_map (B, label_chn, H, W) float (colour/one-hot encoded),
        emb (B, emb_dim), image_feats from `image_features` -> 5 maps; the last, (B, 256, H/16, W/16),
        is the latent z."""
        return self.sem(torch.cat([image, label_map], dim=1), emb, add=image_feats)
