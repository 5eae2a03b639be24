"""The segmentation U-Net theta of SSL4MIS (docs/method.md, Networks): 1,813,764 parameters for 4 classes."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.blocks import Decoder, Encoder
from networks.mcnet import MCNet


class UNet(nn.Module):
    def __init__(self, in_chns=1, class_num=4):
        super().__init__()
        self.in_chns, self.class_num = in_chns, class_num
        self.encoder = Encoder(in_chns)
        self.decoder = Decoder(class_num)

    def forward(self, x):
        # x: (B, in_chns, H, W), H and W divisible by 16 -> logits (B, class_num, H, W)
        return self.decoder(self.encoder(x))

    def forward_with_features(self, x):
        # -> logits (B, class_num, H, W) and the decoder's last features (B, 16, H, W)
        h = self.decoder.hidden(self.encoder(x))
        return self.decoder.out_conv(h), h

    def forward_perturbed(self, x, p, first=0):
        """UniMatch's feature perturbation (Yang et al., CVPR 2023, Sec. 3): one encoder pass over x; the decoder
        decodes the clean features of all of x and, as a second stream, those of x[first:] with channel dropout
        (probability p, kept channels scaled by 1/(1-p)) on every encoder stage, skips included. A training
        forward: the dropout acts in eval mode too. Both streams share one decoder pass, so BatchNorm sees them
        together. x (B, in_chns, H, W) -> logits (B, class_num, H, W), perturbed logits (B - first, class_num, H, W)."""
        feats = self.encoder(x)
        logits = self.decoder([torch.cat([f, F.dropout2d(f[first:], p, training=True)]) for f in feats])
        return logits[:len(x)], logits[len(x):]


NETWORKS = {"unet": UNet, "mcnet": MCNet}


def net_factory(net_type="unet", in_chns=1, class_num=4):
    """Build a segmentation network by name; the name is stored in checkpoints so tests can rebuild it."""
    if net_type not in NETWORKS:
        raise ValueError(f"--model {net_type!r} is unknown; choose one of {sorted(NETWORKS)}")
    return NETWORKS[net_type](in_chns=in_chns, class_num=class_num)
