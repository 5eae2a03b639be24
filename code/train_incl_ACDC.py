"""INCL / ICL: learnable global class proxies, refined by attention over each batch's pixel features, predict the
segmentation a second way; labeled data supervise it (SSPA), unlabeled data must agree with it (USCL).
Paper: Zhu et al., Inherent Consistent Learning for Accurate Semi-supervised Medical Image Segmentation (MIDL 2023).
Specific flags: --proxy_dim --consistency --consistency_rampup.
Only the paper's abstract was available to us, so this is a reconstruction, not the authors' code:
- global proxies G (C, D) are parameters; per batch and per stream (labeled / unlabeled) they attend to the
  U-Net's last decoder features (cross-attention, one head) and are updated residually: P = G + attn(G, f);
- a pixel's proxy prediction is softmax over classes of <q(f), P_c> / sqrt(D);
- SSPA (labeled): CE+Dice of the proxy prediction against the ground truth;
- USCL (unlabeled): CE of the proxy prediction against the U-Net's argmax and of the U-Net against the proxy
  argmax (both detached), plus MSE between the labeled and unlabeled refined proxies (aligns the two streams);
- both modules are training-only: the U-Net alone is evaluated and tested, as in the paper.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from networks.unet import net_factory
from utils.config import consistency_flags, run_main, training_parser
from utils.losses import seg_loss
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, models=["unet"], exp="ACDC/INCL")  # it reads the U-Net's decoder features
    g = consistency_flags(p, "INCL")
    g.add_argument("--proxy_dim", type=int, default=64, help="width D of the class proxies and attention")
    return p.parse_args(argv)


class SemanticProxies(nn.Module):
    """Global class proxies and the attention that refines them on a batch and scores pixels against them."""

    def __init__(self, num_classes, feat_ch=16, dim=64):
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_classes, dim) * 0.02)  # G (C, D)
        self.query, self.key, self.value = (nn.Conv2d(feat_ch, dim, 1) for _ in range(3))
        self.scale = 1.0 / math.sqrt(dim)

    def refine(self, feats):
        """P = G + softmax(G K(f)^T / sqrt(D)) V(f): feats (B, F, H, W) -> refined proxies (C, D)."""
        k, v = self.key(feats).flatten(2), self.value(feats).flatten(2)  # (B, D, HW)
        k, v = k.transpose(0, 1).flatten(1), v.transpose(0, 1).flatten(1)  # (D, B*HW): the whole stream
        attn = (self.proxies @ k * self.scale).softmax(-1)  # (C, B*HW)
        return self.proxies + attn @ v.t()

    def forward(self, feats):
        """feats (B, F, H, W) -> class logits (B, C, H, W) against this stream's refined proxies, and those."""
        proxies = self.refine(feats)
        return torch.einsum("bdhw,cd->bchw", self.query(feats), proxies) * self.scale, proxies


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    proxy_net = SemanticProxies(run.num_classes, net.decoder.out_conv.in_channels, args.proxy_dim).to(run.device)
    optimizer = torch.optim.SGD([*net.parameters(), *proxy_net.parameters()], lr=args.base_lr, momentum=0.9,
                                weight_decay=1e-4)
    model, proxies = run.wrap(net), run.wrap(proxy_net)

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        logits, feats = model.forward_with_features(image)  # (B,C,H,W), (B,16,H,W)
        proxy_lab, p_lab = proxies(feats[:lbs])
        proxy_unl, p_unl = proxies(feats[lbs:])
        sup = seg_loss(logits[:lbs], label[:lbs])
        sspa = seg_loss(proxy_lab, label[:lbs])
        # .max(1).indices = argmax(1), ~13x faster on CPU
        uscl = (F.cross_entropy(proxy_unl, logits[lbs:].detach().max(1).indices)
                + F.cross_entropy(logits[lbs:], proxy_unl.detach().max(1).indices) + F.mse_loss(p_unl, p_lab))
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step(optimizer, sup + sspa + w * uscl, "L_incl")
        return {"seg/sup": sup, "incl/sspa": sspa, "incl/uscl": uscl, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net, "proxies": proxy_net},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
