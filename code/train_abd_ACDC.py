"""ABD (BCP-based): BCP plus patches displaced between the weak and strong views by the teacher's confidence.
Paper: Chi et al., Adaptive Bidirectional Displacement for Semi-Supervised Medical Image Segmentation (CVPR 2024),
its variant built on BCP (Bai et al., CVPR 2023; train_bcp_ACDC.py, utils/bcp.py).
Specific flags: BCP's (--pretrain_iterations --alpha --crop_ratio --ema_decay), --abd_grid --abd_i.

BCP unchanged: pre-training on copy-pasted labeled slices, then self-training on labeled/unlabeled pairs copy-pasted
both ways (X_in, X_out with labels Y_in, Y_out from ground truth and the teacher's Ŷ_u), L_in + L_out, EMA teacher.
ABD adds, per self-training step (utils/mixing.py, bidirectional_displacement):
  views       weak = the loader's slice, strong = its photometric strong view (same geometry, so one label map);
              the strong views are copy-pasted with the same crop as the weak ones: X_in^s, X_out^s
  confidence  each slice is tiled into --abd_grid x --abd_grid patches; a patch's confidence is the mean over its
              pixels of the teacher's top class probability
  ABD-R       (reliable confidence; on BCP's mixed slices, which carry the unlabeled data, as the authors run
              their BCP variant) each view's least confident patch is replaced by the other view's most confident
              patch; the teacher's argmax labels move with the pixels: X^w', Ŷ^w' and X^s', Ŷ^s';
              L_R = L_seg(f(X^w'), Ŷ^w') + L_seg(f(X^s'), Ŷ^s')
  ABD-I       (inverse confidence; on the labeled slices) each view's most confident patch is replaced by the
              other view's least confident patch, harder samples whose ground truth moves with the pixels;
              L_I = L_seg(f(X_l^w''), Y^w'') + L_seg(f(X_l^s''), Y^s'')
  total       L = L_in + L_out + L_R + L_I, L_seg = CE + Dice
Values the paper's description leaves open (ours): a 4 x 4 grid (16 patches, 64² at 256²); a patch's confidence
as the mean top-class probability; the teacher, BCP's labeller, gives the confidences and the ABD-R labels (no
largest-component cut there: a mixed slice may hold one piece of a class from each source); L_R and L_I weigh 1,
like L_in + L_out, with no ramp. The authors' note on their BCP code (GitHub chy-upc/ABD, issue 6): ABD-R runs on the
copy-pasted slices, which it treats as unlabeled, and ABD-I is dropped; --abd_i 0 gives that, the default keeps
ABD-I, the paper's operation for labeled slices. Where the authors' BCP-variant code goes further than the paper's
description, this script follows the description: one student and its EMA teacher (the code trains two students,
on the weak and on the strong mixes, with a cross-pseudo Dice loss between them and the confidences from each
student's own prediction), the most confident patch always moves (the code, half of the time, takes among the four
most confident the one closest in KL divergence to the patch it replaces), ABD-I on every labeled pair (the code:
on half of the steps).
"""
import torch

from networks.unet import net_factory
from utils.bcp import TwoStages, bcp_flags, bcp_loss, check_bcp_args, copy_paste_pairs, pseudo_labels
from utils.config import UsageError, run_main, training_parser
from utils.losses import seg_loss
from utils.mean_teacher import ema_update, make_teacher
from utils.mixing import bidirectional_displacement, copy_paste_crop, patch_confidence
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=1)


def parse_args(argv):
    p = training_parser(__doc__, exp="ACDC/ABD_BCP")
    g = bcp_flags(p, "BCP and ABD")
    g.add_argument("--abd_grid", type=int, default=4, help="patches per side of the displacement's tiling")
    g.add_argument("--abd_i", type=int, default=1, choices=[0, 1], help="1: ABD-I on the labeled slices; 0: ABD-R "
                   "only, as the authors' BCP variant")
    args = check_bcp_args(p.parse_args(argv))
    if args.abd_grid <= 0 or any(side % args.abd_grid for side in args.patch_size):
        raise UsageError(f"--abd_grid {args.abd_grid} must be positive and divide --patch_size {args.patch_size}")
    return args


def build(args, run):
    """The method's networks, optimizer and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    teacher = make_teacher(net)  # the pre-trained student at the switch, then the EMA; labels and confidences
    student = run.wrap(net)
    stages, grid = TwoStages(args, run, net, student, teacher, optimizer), args.abd_grid

    @torch.no_grad()
    def teacher_view(x):  # -> the teacher's argmax (N,H,W) and patch confidences (N, grid²) of slices x
        probs = teacher(x).softmax(1)
        return probs.max(1).indices, patch_confidence(probs, grid)

    def displaced_loss(weak, strong, labels, inverse):
        """L_R (inverse=False) or L_I of the view pair weak, strong (N,1,H,W); labels: their label maps, or None
        for the teacher's argmax of each view."""
        (y_w, conf_w), (y_s, conf_s) = teacher_view(weak), teacher_view(strong)
        label_w, label_s = (y_w, y_s) if labels is None else labels
        new_w, new_s = bidirectional_displacement((weak, label_w), (strong, label_s), conf_w, conf_s, grid, inverse)
        logits_w, logits_s = student(torch.cat([new_w[0], new_s[0]])).chunk(2)
        return seg_loss(logits_w, new_w[1]) + seg_loss(logits_s, new_s[1])

    def train_step(batch, it):
        weak, strong, lbs = batch["image"], batch["image_strong"], args.labeled_bs  # (B,1,H,W) x2
        label = batch["label"][:lbs]  # (B_l,H,W)
        crop = copy_paste_crop(args.patch_size, args.crop_ratio, weak.device)  # BCP's M = 0 region
        if stages.pretraining(it):
            return stages.pretrain_step(weak[:lbs], label, crop)
        pseudo = pseudo_labels(teacher, weak[lbs:], run.num_classes)
        mixed_w, target, from_gt = copy_paste_pairs(weak[:lbs], weak[lbs:], label, pseudo, crop)
        mixed_s = copy_paste_pairs(strong[:lbs], strong[lbs:], label, pseudo, crop)[0]
        loss_in, loss_out = bcp_loss(student(mixed_w), target, from_gt, args.alpha)
        loss_r = displaced_loss(mixed_w, mixed_s, None, inverse=False)  # ABD-R, the teacher's labels
        loss_i = displaced_loss(weak[:lbs], strong[:lbs], (label, label), inverse=True) if args.abd_i else 0.0
        run.backward_step(optimizer, loss_in + loss_out + loss_r + loss_i, "L_abd")
        ema_update(teacher, net, args.ema_decay, it)
        return {"bcp/in": loss_in, "bcp/out": loss_out, "abd/r": loss_r, **({"abd/i": loss_i} if args.abd_i else {})}

    return Method(train_step=train_step, models={"model": net, "teacher": teacher},
                  optimizers={"optimizer": optimizer}, lr_schedules={"optimizer": "constant"},  # stages sets it
                  eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
