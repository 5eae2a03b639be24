"""Building blocks shared by every U-Net-shaped network of the project (docs/method.md, Networks).

ConvBlock = conv3x3-BN-LeakyReLU-[+emb]-[Dropout]-conv3x3-BN-LeakyReLU. When an embedding dimension is
given, Linear(emb_dim, C_out)(SiLU(emb)) is added after the first activation (the calibration-guidance and
timestep conditioning of DiffRect). UpBlock = 1x1 conv to the skip's width, bilinear up-sampling to the skip's
size (align_corners=True; equals x2 for even sizes), concat [skip, up], ConvBlock. MC-Net+ alone also uses
UpBlocks whose up-sampling is a transposed conv or nearest-neighbour (`up_mode`).
Dropout is nn.Dropout with a cheaper random mask on CPU (the same distribution, other draws).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _MaskAndScale(torch.autograd.Function):
    """y = x * keep * scale; the backward applies the same mask, saved as bool (1 byte per element)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """nn.Dropout (element-wise, scaled by 1/(1-p) in training), faster on CPU.

    On CPU torch draws the mask with bernoulli_, one generator call per element, which took 8-9 % of a whole
    DiffRect step (torch 2.13, 2 cores). Here each 64-bit draw of the same (seeded) generator gives four
    uniform 16-bit integers, and an element is kept where its integer clears the threshold: keep probability
    1 - p with p rounded to a multiple of 1/65536; forward + backward 2-3x faster. Same distribution, other
    draws, so CPU runs differ from nn.Dropout's bit for bit. CUDA keeps torch's fused dropout kernel.
    """

    def forward(self, x):
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        r = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1)  # uniform over int64
        r = r.view(torch.int16)[:n].view(x.shape)  # four uniform int16 per draw
        keep = r >= round(self.p * 65536) - 32768
        return _MaskAndScale.apply(x, keep, 1.0 / (1.0 - self.p))


class ConvBlock(nn.Module):
    def __init__(self, in_ch, out_ch, dropout=0.0, emb_dim=None):
        super().__init__()
        # in-place activations: the BN output is needed by nothing else, so the same values take less memory
        self.conv1 = nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch),
                                   nn.LeakyReLU(0.01, inplace=True))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch)) if emb_dim else None
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Sequential(nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch),
                                   nn.LeakyReLU(0.01, inplace=True))

    def forward(self, x, emb=None):
        # x: (B, C_in, H, W), emb: (B, emb_dim) or None -> (B, C_out, H, W)
        h = self.conv1(x)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.conv2(self.dropout(h))


class DownBlock(nn.Module):
    """2x max-pool, then a ConvBlock. ceil_mode keeps odd and 1-pixel maps valid (same as floor for even)."""

    def __init__(self, in_ch, out_ch, dropout=0.0, emb_dim=None):
        super().__init__()
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.conv = ConvBlock(in_ch, out_ch, dropout, emb_dim)

    def forward(self, x, emb=None):
        return self.conv(self.pool(x), emb)


UP_MODES = ("bilinear", "nearest", "transposed")


class UpBlock(nn.Module):
    def __init__(self, in_ch, skip_ch, out_ch, dropout=0.0, emb_dim=None, up_mode="bilinear"):
        super().__init__()
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode {up_mode!r}: choose one of {UP_MODES}")
        self.up_mode = up_mode
        if up_mode == "transposed":
            self.reduce = nn.ConvTranspose2d(in_ch, skip_ch, 2, stride=2)
        else:
            self.reduce = nn.Conv2d(in_ch, skip_ch, 1)
        self.conv = ConvBlock(2 * skip_ch, out_ch, dropout, emb_dim)

    def forward(self, x, skip, emb=None):
        # x: (B, in_ch, h, w), skip: (B, skip_ch, H, W) -> (B, out_ch, H, W)
        up = self.reduce(x)
        if self.up_mode == "bilinear":
            up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        elif up.shape[-2:] != skip.shape[-2:]:  # nearest; or a transposed conv from an odd (ceil-pooled) size
            up = F.interpolate(up, size=skip.shape[-2:], mode="nearest")
        return self.conv(torch.cat([skip, up], dim=1), emb)


class Encoder(nn.Module):
    """Five stages (widths `widths`), 2x max-pool between stages. Returns every stage's output."""

    def __init__(self, in_ch, widths=(16, 32, 64, 128, 256), dropouts=(0.05, 0.1, 0.2, 0.3, 0.5), emb_dim=None):
        super().__init__()
        self.stages = nn.ModuleList([ConvBlock(in_ch, widths[0], dropouts[0], emb_dim)])
        for i in range(1, len(widths)):
            self.stages.append(DownBlock(widths[i - 1], widths[i], dropouts[i], emb_dim))

    def forward(self, x, emb=None, add=None):
        """x: (B, in_ch, H, W) -> list of (B, widths[i], H/2^i, W/2^i).

        `add` (optional list of the same shapes) is added to each stage's output before it feeds the next
        stage; B_sem uses it to merge the image encoder's features (docs/method.md, Networks).
        """
        feats, h = [], x
        for i, stage in enumerate(self.stages):
            h = stage(h, emb)
            if add is not None:
                h = h + add[i]
            feats.append(h)
        return feats


class Decoder(nn.Module):
    """U-Net decoder: four UpBlocks from the bottleneck back to full resolution, then a 3x3 output conv."""

    def __init__(self, num_classes, widths=(16, 32, 64, 128, 256), emb_dim=None, up_mode="bilinear"):
        super().__init__()
        self.ups = nn.ModuleList([UpBlock(widths[i], widths[i - 1], widths[i - 1], 0.0, emb_dim, up_mode)
                                  for i in range(len(widths) - 1, 0, -1)])
        self.out_conv = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def hidden(self, feats, emb=None):
        # feats: encoder outputs, coarsest last -> last features before the output conv (B, widths[0], H, W)
        h = feats[-1]
        for up, skip in zip(self.ups, reversed(feats[:-1])):
            h = up(h, skip, emb)
        return h

    def forward(self, feats, emb=None):
        # feats: encoder outputs, coarsest last -> logits (B, num_classes, H, W)
        return self.out_conv(self.hidden(feats, emb))
