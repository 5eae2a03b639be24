"""BCP: labeled and unlabeled slices copy-pasted into each other both ways, learned by a mean-teacher student.
Paper: Bai et al., Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation (CVPR 2023).
Specific flags: --pretrain_iterations --alpha --crop_ratio --ema_decay.

The paper's method (Sec. 3) and its ACDC setting (Sec. 4), in one run (utils/bcp.py):
  pre-training  iterations [0, --pretrain_iterations): the labeled slices copy-pasted into each other through the
                crop, each part supervised by its pasted ground truth; then teacher and student both start from
                these weights
  self-training each labeled slice X_l is paired with one unlabeled slice X_u; one mask M per step, zero inside a
                crop of 2/3 of each side at a random place, gives
                  X_in = X_l ⊙ M + X_u ⊙ (1 - M),    X_out = X_u ⊙ M + X_l ⊙ (1 - M)
                  Y_in = Y_l ⊙ M + Ŷ_u ⊙ (1 - M),    Y_out = Ŷ_u ⊙ M + Y_l ⊙ (1 - M)
                Ŷ_u: the teacher's argmax on X_u, each class cut to its largest connected component (the paper's
                post-processing for 2-D ACDC); Q = the student's prediction on the mixed slice;
                  L_in  = L_seg(Q_in, Y_in) ⊙ M + α L_seg(Q_in, Y_in) ⊙ (1 - M)
                  L_out = L_seg(Q_out, Y_out) ⊙ (1 - M) + α L_seg(Q_out, Y_out) ⊙ M
                  L = L_in + L_out,  α = 0.5;  Θ_t <- λ Θ_t + (1 - λ) Θ_s,  λ = 0.99
  ACDC          SGD, lr 0.01, batch 24 (12 labeled + 12 unlabeled), 256²; 10 000 + 30 000 iterations (the
                preset paper-acdc gives --max_iterations 40000; the default pre-training share is a quarter).
Where the paper leaves a detail open, the authors' implementation decides: lr constant at 0.01 in both stages;
the student keeps the pre-training's SGD momentum; L_seg(Q, Y) ⊙ M = (CE averaged over the part's pixels + Dice
over them) / 2; pre-training weighs both pasted parts 1; the largest component is taken in 8-connectivity.
Ours: the slices of a pair exchange the crop both ways, so every pixel of the batch is trained on once (the
paper mixes two labeled with two unlabeled slices and keeps half of their pixels); the teacher and student start
from the final pre-trained weights (the authors' code loads the best-on-validation ones).
"""
import torch

from networks.unet import net_factory
from utils.bcp import TwoStages, bcp_flags, bcp_loss, check_bcp_args, copy_paste_pairs, pseudo_labels
from utils.config import run_main, training_parser
from utils.mean_teacher import ema_update, make_teacher
from utils.mixing import copy_paste_crop
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=0)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/BCP")
    bcp_flags(p, "BCP")
    return check_bcp_args(p.parse_args(argv))


def build(args, run):
    """The method's networks, optimizer and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    teacher = make_teacher(net)  # its weights: the pre-trained student's at the switch, then the EMA
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    student = run.wrap(net)  # DDP under torchrun, `net` itself otherwise
    stages = TwoStages(args, run, net, student, teacher, optimizer)  # sets each step's learning rate

    def train_step(batch, it):
        image, label, lbs = batch["image"], batch["label"], args.labeled_bs  # (B,1,H,W), (B,H,W)
        crop = copy_paste_crop(args.patch_size, args.crop_ratio, image.device)  # where M = 0: (1,1,H,W)
        if stages.pretraining(it):
            return stages.pretrain_step(image[:lbs], label[:lbs], crop)
        pseudo = pseudo_labels(teacher, image[lbs:], run.num_classes)  # Ŷ_u
        mixed, target, from_gt = copy_paste_pairs(image[:lbs], image[lbs:], label[:lbs], pseudo, crop)
        loss_in, loss_out = bcp_loss(student(mixed), target, from_gt, args.alpha)
        run.backward_step(optimizer, loss_in + loss_out, "L_bcp")
        ema_update(teacher, net, args.ema_decay, it)
        return {"bcp/in": loss_in, "bcp/out": loss_out}

    return Method(train_step=train_step, models={"model": net, "teacher": teacher},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "constant"},  # set by `stages`
                  eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
