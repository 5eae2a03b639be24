"""ICT: the student on a mixup of two unlabeled slices must predict the same mixup of the teacher's predictions.
Paper: Verma et al., Interpolation Consistency Training for Semi-Supervised Learning (IJCAI 2019).
Specific flags: --ict_alpha --ema_decay --consistency --consistency_rampup.
"""
import torch
import torch.nn.functional as F

from networks.unet import net_factory
from utils.config import FRACTION, UsageError, consistency_flags, number_in, run_main, training_parser
from utils.losses import seg_loss
from utils.mean_teacher import ema_update, make_teacher
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/Interpolation_Consistency_Training")
    g = consistency_flags(p, "ICT")
    g.add_argument("--ict_alpha", type=number_in(0, low_open=True), default=0.2,
                   help="mixup coefficients ~ Beta(alpha, alpha)")
    g.add_argument("--ema_decay", type=FRACTION, default=0.99)
    args = p.parse_args(argv)
    if (args.batch_size - args.labeled_bs) % 2:
        raise UsageError(f"--batch_size {args.batch_size} - --labeled_bs {args.labeled_bs} must be even: ICT mixes "
                         f"the unlabeled slices in pairs")
    return args


def mix(a, b, lam):
    """Per-sample interpolation a (1 - lam) + b lam; a, b (N, ...), lam (N, 1, 1, 1)."""
    return a * (1 - lam) + b * lam


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    n_mix = (args.batch_size - args.labeled_bs) // 2
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    teacher = make_teacher(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    student = run.wrap(net)
    beta = torch.distributions.Beta(torch.tensor(args.ict_alpha), torch.tensor(args.ict_alpha))

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        u0, u1 = image[lbs:lbs + n_mix], image[lbs + n_mix:]
        lam = beta.sample((n_mix, 1, 1, 1)).to(image.device)  # global RNG (resumable), on the CPU
        logits = student(torch.cat([image[:lbs], mix(u0, u1, lam)]))
        with torch.no_grad():
            target = mix(teacher(u0).softmax(1), teacher(u1).softmax(1), lam)  # (n_mix, C, H, W)
        consistency = F.mse_loss(logits[lbs:].softmax(1), target)
        sup = seg_loss(logits[:lbs], label[:lbs])
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step(optimizer, sup + w * consistency, "L_ict")
        ema_update(teacher, net, args.ema_decay, it)
        return {"seg/sup": sup, "ict/consistency": consistency, "info/mix_mean": lam.mean(),
                "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net, "teacher": teacher},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
