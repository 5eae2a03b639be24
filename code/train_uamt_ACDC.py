"""UA-MT: a mean teacher whose consistency target counts only where the teacher is certain.
Paper: Yu et al., Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium Segmentation (MICCAI 2019).
Specific flags: --ema_decay --uncertainty_T --threshold_base --consistency --consistency_rampup.
"""
import math

import torch

from networks.unet import net_factory
from utils.config import FRACTION, UsageError, consistency_flags, number_in, run_main, training_parser
from utils.losses import seg_loss
from utils.mean_teacher import ema_update, make_teacher, noisy
from utils.ramps import consistency_weight, sigmoid_rampup
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/Uncertainty_Aware_Mean_Teacher")
    g = consistency_flags(p, "UA-MT")
    g.add_argument("--ema_decay", type=FRACTION, default=0.99)
    g.add_argument("--uncertainty_T", type=int, default=8, help="noisy teacher passes behind the uncertainty (even)")
    g.add_argument("--threshold_base", type=number_in(0, low_open=True), default=math.log(2),
                   help="the entropy threshold ramps from 0.75x to 1x this; ln 2 is the SSL4MIS value (a 2-class "
                   "leftover: with C classes ln C is the max)")
    args = p.parse_args(argv)
    if args.uncertainty_T < 2 or args.uncertainty_T % 2:
        raise UsageError(f"--uncertainty_T {args.uncertainty_T} must be a positive even number")
    return args


@torch.no_grad()
def uncertainty(teacher, x, passes):
    """Entropy of the mean softmax over `passes` noisy teacher forwards: x (B,1,H,W) -> (B,1,H,W) in [0, ln C].
    Run as passes/2 forwards of the doubled batch, as SSL4MIS does (BN sees the same batch size)."""
    probs = torch.cat([teacher(noisy(x.repeat(2, 1, 1, 1))).softmax(1) for _ in range(passes // 2)])
    mean = probs.view(passes, *x.shape[:1], *probs.shape[1:]).mean(0)  # (B, C, H, W)
    return -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)


def uncertainty_threshold(iteration, max_iterations, base):
    """(0.75 + 0.25 sigmoid_rampup(iteration, max_iterations)) * base: admits more pixels as training goes."""
    return (0.75 + 0.25 * sigmoid_rampup(iteration, max_iterations)) * base


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    teacher = make_teacher(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    student = run.wrap(net)

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        unlabeled = image[lbs:]
        logits = student(image)
        with torch.no_grad():
            teacher_probs = teacher(noisy(unlabeled)).softmax(1)
            unc = uncertainty(teacher, unlabeled, args.uncertainty_T)
        threshold = uncertainty_threshold(it, args.max_iterations, args.threshold_base)
        certain = (unc < threshold).float()  # (B_u, 1, H, W)
        squared = (logits[lbs:].softmax(1) - teacher_probs) ** 2
        consistency = (certain * squared).sum() / (2 * certain.sum() + 1e-16)  # SSL4MIS normalisation
        sup = seg_loss(logits[:lbs], label[:lbs])
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step(optimizer, sup + w * consistency, "L_uamt")
        ema_update(teacher, net, args.ema_decay, it)
        return {"seg/sup": sup, "uamt/consistency": consistency, "uamt/certain_fraction": certain.mean(),
                "info/threshold": threshold, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net, "teacher": teacher},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
