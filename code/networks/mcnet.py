"""MC-Net+ (Wu et al., MedIA 2022): one U-Net encoder, three decoders that differ only in up-sampling.

The decoders' disagreement is the uncertainty MC-Net+ trains away. At inference `forward` returns the mean of
the three decoders' logits, so `test_ACDC.py` reads an MC-Net+ checkpoint like any other.
"""
import torch
import torch.nn as nn

from networks.blocks import Decoder, Encoder

DECODER_UP_MODES = ("transposed", "bilinear", "nearest")


class MCNet(nn.Module):
    def __init__(self, in_chns=1, class_num=4):
        super().__init__()
        self.in_chns, self.class_num = in_chns, class_num
        self.encoder = Encoder(in_chns)
        self.decoders = nn.ModuleList([Decoder(class_num, up_mode=m) for m in DECODER_UP_MODES])

    def all_logits(self, x):
        # x: (B, in_chns, H, W) -> list of 3 logits (B, class_num, H, W), one per decoder
        feats = self.encoder(x)
        return [d(feats) for d in self.decoders]

    def forward(self, x):
        return torch.stack(self.all_logits(x)).mean(0)
