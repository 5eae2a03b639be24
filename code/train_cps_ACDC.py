"""Cross pseudo supervision: two differently initialised U-Nets, each trained on the other's hard pseudo labels.
Paper: Chen et al., Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision (CVPR 2021).
Specific flags: --consistency --consistency_rampup.

The two networks are independent draws of the default initialisation (consecutive draws from the seeded
generator). An earlier version re-drew net A with Kaiming-normal and net B with Xavier-normal weights: Kaiming's
2.4x larger conv weights shrink the effective step of every BatchNorm'd conv, and under the CPU protocol
net A (the one evaluated) reached 12.7 val Dice where net B reached 44.1.
"""
import torch
import torch.nn.functional as F

from networks.unet import net_factory
from utils.config import consistency_flags, run_main, training_parser
from utils.losses import seg_loss
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/Cross_Pseudo_Supervision")
    consistency_flags(p, "CPS")
    return p.parse_args(argv)


@torch.no_grad()
def cross_targets(logits_a, logits_b):
    """Network A learns from B's argmax and B from A's: (B,C,H,W) x2 -> (target_a, target_b), (B,H,W) long."""
    return logits_b.max(1).indices, logits_a.max(1).indices  # = argmax(1), ~13x faster on CPU


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    def make():
        net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
        return net, torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)

    net_a, optimizer_a = make()
    net_b, optimizer_b = make()  # the generator has moved on: different weights, same distribution
    model_a, model_b = run.wrap(net_a), run.wrap(net_b)

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        logits_a, logits_b = model_a(image), model_b(image)
        sup_a, sup_b = seg_loss(logits_a[:lbs], label[:lbs]), seg_loss(logits_b[:lbs], label[:lbs])
        target_a, target_b = cross_targets(logits_a[lbs:], logits_b[lbs:])
        cps_a, cps_b = F.cross_entropy(logits_a[lbs:], target_a), F.cross_entropy(logits_b[lbs:], target_b)
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step((optimizer_a, optimizer_b), sup_a + sup_b + w * (cps_a + cps_b), "L_cps")
        return {"seg/sup_a": sup_a, "seg/sup_b": sup_b, "cps/a": cps_a, "cps/b": cps_b, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net_a, "model_b": net_b},
                  optimizers={"optimizer": optimizer_a, "optimizer_b": optimizer_b},
                  lr_schedules={"optimizer": "poly", "optimizer_b": "poly"}, eval_model=net_a)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
