"""MC-Net+: three decoders (transposed-conv, bilinear, nearest up-sampling) on one encoder; each decoder's
probabilities are pulled towards the others' sharpened probabilities (mutual consistency).
Paper: Wu et al., Mutual consistency learning for semi-supervised medical image segmentation (MedIA 2022).
Specific flags: --temperature --consistency --consistency_rampup (and --model mcnet, the default here).
Our reading: supervised term = mean over decoders of CE+Dice; consistency = sum over the 6 ordered decoder pairs
of MSE(p_i, sharpen(p_j)) on the whole batch, sharpened targets detached.
"""
import torch
import torch.nn.functional as F

from networks.unet import net_factory
from utils.config import consistency_flags, number_in, run_main, training_parser
from utils.losses import seg_loss
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, models=["mcnet"], exp="ACDC/MCNetV2", model="mcnet")  # three decoders
    g = consistency_flags(p, "MC-Net+")
    g.add_argument("--temperature", type=number_in(0, low_open=True), default=0.1, help="sharpening temperature T")
    return p.parse_args(argv)


def sharpen(p, temperature):
    """MC-Net+'s sharpening, per class: p^(1/T) / (p^(1/T) + (1 - p)^(1/T)). p (B,C,H,W) in [0,1]."""
    a, b = p ** (1 / temperature), (1 - p) ** (1 / temperature)
    return a / (a + b)


def mutual_consistency(probs, temperature):
    """Sum over ordered pairs i != j of MSE(probs[i], sharpen(probs[j])), the targets detached."""
    targets = [sharpen(p, temperature).detach() for p in probs]
    return sum(F.mse_loss(probs[i], targets[j]) for i in range(len(probs)) for j in range(len(probs)) if i != j)


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    model = run.wrap(net)

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        logits = model.all_logits(image)  # one (B, C, H, W) per decoder
        sup = sum(seg_loss(lg[:lbs], label[:lbs]) for lg in logits) / len(logits)
        consistency = mutual_consistency([lg.softmax(1) for lg in logits], args.temperature)
        w = consistency_weight(it, args.consistency, args.consistency_rampup)
        run.backward_step(optimizer, sup + w * consistency, "L_mcnet")
        return {"seg/sup": sup, "mcnet/consistency": consistency, "info/consistency_weight": w}

    return Method(train_step=train_step, models={"model": net}, optimizers={"optimizer": optimizer},
                  lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
