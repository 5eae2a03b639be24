"""The segmentation U-Net theta of SSL4MIS (README, Method: Networks): 1,813,764 parameters for 4 classes."""
import torch.nn as nn

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


NETWORKS = {"unet": UNet, "mcnet": MCNet}


def net_factory(net_type="unet", in_chns=1, class_num=4):
    """Build a segmentation network by name; the name is stored in checkpoints so tests can rebuild it."""
    if net_type not in NETWORKS:
        raise ValueError(f"--model {net_type!r} is unknown; choose one of {sorted(NETWORKS)}")
    return NETWORKS[net_type](in_chns=in_chns, class_num=class_num)
