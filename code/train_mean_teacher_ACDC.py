"""Mean Teacher: the student on the unlabeled slices must match the softmax of its own exponential moving average.
Paper: Tarvainen & Valpola, Mean teachers are better role models (NeurIPS 2017), as trained in SSL4MIS.
Specific flags: --ema_decay --consistency --consistency_rampup.
"""
import torch

from networks.unet import net_factory
from utils.config import FRACTION, consistency_flags, run_main, training_parser
from utils.losses import seg_loss
from utils.mean_teacher import ema_update, make_teacher, noisy
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/Mean_Teacher")
    g = consistency_flags(p, "Mean Teacher")
    g.add_argument("--ema_decay", type=FRACTION, default=0.99, help="teacher <- decay teacher + (1 - decay) student")
    return p.parse_args(argv)


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    teacher = make_teacher(net)  # no gradients: its weights move only by ema_update
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    student = run.wrap(net)  # DDP under torchrun, `net` itself otherwise

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        logits = student(image)
        with torch.no_grad():
            teacher_probs = teacher(noisy(image[lbs:])).softmax(1)  # (B_u, C, H, W)
        sup = seg_loss(logits[:lbs], label[:lbs])
        consistency = ((logits[lbs:].softmax(1) - teacher_probs) ** 2).mean()
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step(optimizer, sup + w * consistency, "L_mt")
        ema_update(teacher, net, args.ema_decay, it)
        return {"seg/sup": sup, "mt/consistency": consistency, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net, "teacher": teacher},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
