"""FixMatch: the U-Net on a weak view supervises its strong view through confidence-masked pseudo labels.
Paper: Sohn et al., FixMatch (NeurIPS 2020); here DiffRect's segmentation step alone (its Table 4 "Baseline").
Specific flags: --conf_thresh --consistency --consistency_rampup.
"""
import torch

from networks.unet import net_factory
from utils.config import run_main, semi_supervised_flags, training_parser
from utils.losses import fixmatch_losses
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=1)


def parse_args(argv):
    return semi_supervised_flags(training_parser(__doc__, exp="ACDC/FixMatch")).parse_args(argv)


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    model = run.wrap(net)  # DDP under torchrun, `net` itself otherwise

    def train_step(batch, it):
        weak, strong, label = batch["image"], batch["image_strong"], batch["label"]  # (B,1,H,W) x2, (B,H,W)
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        loss, terms, _, _ = fixmatch_losses(model(weak), model(strong), label[:args.labeled_bs], w, args.conf_thresh)
        run.backward_step(optimizer, loss, "L_seg")
        return {**terms, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net}, optimizers={"optimizer": optimizer},
                  lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
