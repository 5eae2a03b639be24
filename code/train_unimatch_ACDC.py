"""UniMatch: FixMatch whose weak-view pseudo labels also teach a feature-perturbed stream and two CutMix strong views.
Paper: Yang et al., Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic Segmentation (CVPR 2023),
in its medical setting (ACDC, U-Net).
Specific flags: --conf_thresh --fp_dropout --cutmix_prob --absent_classes.

The paper's loss (Sec. 3), for a batch of labeled slices x and unlabeled slices u:
  pseudo label   p^w = f(u^w) (no gradient), ŷ = argmax p^w, kept where max p^w >= τ (τ = 0.95, its medical setting)
  FP stream      p^fp = g(P(h(u^w))): the encoder features h of the weak view with 50 % channel dropout P,
                 decoded (UNet.forward_perturbed; one decoder pass with the clean stream)
  strong views   u^s1, u^s2: two strong perturbations of u^w, each CutMix-ed with another unlabeled slice, whose
                 pixels bring their own pseudo labels and confidences
  L_s            (CE + Dice) / 2 of f(x) against the ground truth
  L_u            λ H(p^fp, ŷ) + μ/2 (H(p^s1, ŷ^1) + H(p^s2, ŷ^2)), λ = μ = 0.5; H = Dice over the pixels whose
                 confidence reaches τ (the other pixels leave both sums), background included
  L              (L_s + L_u) / 2
Its ACDC setting: SGD, lr 0.01 with poly decay, 12 labeled + 12 unlabeled slices per step, 256², 300 epochs over the
unlabeled slices (≈ 30 000 iterations at 3 labeled patients). The losses are those of the authors' medical code
(the paper, on natural images, writes H as cross-entropy), and so is CutMix's box (utils/mixing.cutmix_boxes:
area U(0.02, 0.4) of the slice, aspect U(0.3, 1/0.3)), applied to a slice with probability 0.5.
Choices (ours): the strong perturbation is this project's photometric strong view (the loader's image_strong for
u^s1 and its second, independent draw image_strong2 for u^s2); a slice's CutMix partner is another unlabeled slice
of the batch, with its pseudo labels from the same forward pass (the authors' code draws a second unlabeled batch
and labels it in a separate pass).
--absent_classes skip (not the authors'): a class with no confident pixel in the batch leaves the unlabeled Dice
instead of scoring ~1 there (docs/method.md, CPU protocol: UniMatch's collapse at that budget).
"""
import torch

from networks.unet import net_factory
from utils.config import FRACTION, number_in, run_main, training_parser
from utils.losses import dice_loss, seg_loss
from utils.mixing import cutmix, cutmix_boxes, cutmix_partners
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=2)


def parse_args(argv):
    p = training_parser(__doc__, models=["unet"], exp="ACDC/UniMatch")
    g = p.add_argument_group("UniMatch")
    g.add_argument("--conf_thresh", type=FRACTION, default=0.95, help="τ: pseudo labels count where max p^w >= τ")
    g.add_argument("--fp_dropout", type=number_in(0, 1, high_open=True), default=0.5,
                   help="channel dropout of the feature-perturbed stream")
    g.add_argument("--cutmix_prob", type=FRACTION, default=0.5, help="probability that a strong view is CutMix-ed")
    g.add_argument("--absent_classes", choices=["count", "skip"], default="count",
                   help="a class with no confident pseudo-label pixel in the batch: 'count' scores it in the "
                   "unlabeled Dice (~1 until its probability is driven to ~0; the authors' code), 'skip' leaves it out")
    return p.parse_args(argv)


def build(args, run):
    """The method's network, optimizer and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    model = run.wrap(net)  # DDP under torchrun, `net` itself otherwise
    tau, lbs = args.conf_thresh, args.labeled_bs
    skip_absent = args.absent_classes == "skip"

    def dice_u(probs, pseudo, mask):  # H: Dice over the confident pixels
        return dice_loss(probs, pseudo, mask=mask, skip_absent=skip_absent)

    def strong_stream(view, conf, pseudo):  # CutMix one strong view -> (image, pseudo labels, confident pixels)
        box = cutmix_boxes(len(view), args.patch_size, args.cutmix_prob, view.device)  # (B_u,1,H,W)
        partner = cutmix_partners(len(view))
        return cutmix(view, box, partner), cutmix(pseudo, box, partner), cutmix(conf, box, partner) >= tau

    def train_step(batch, it):
        image, label = batch["image"], batch["label"][:lbs]  # (B,1,H,W) weak views, (B_l,H,W)
        strong = batch["image_strong"][lbs:], batch["image_strong2"][lbs:]  # u^s1, u^s2 before CutMix
        logits, logits_fp = model.forward_perturbed(image, args.fp_dropout, first=lbs)  # f(x), f(u^w); p^fp
        conf, pseudo = logits[lbs:].detach().softmax(1).max(1)  # max p^w, ŷ: (B_u,H,W) x2
        (u_s1, y_1, keep_1), (u_s2, y_2, keep_2) = (strong_stream(view, conf, pseudo) for view in strong)
        logits_s1, logits_s2 = model(torch.cat([u_s1, u_s2])).chunk(2)
        loss_s = seg_loss(logits[:lbs], label) / 2
        loss_fp = dice_u(logits_fp.softmax(1), pseudo, mask=conf >= tau)
        loss_s1 = dice_u(logits_s1.softmax(1), y_1, mask=keep_1)
        loss_s2 = dice_u(logits_s2.softmax(1), y_2, mask=keep_2)
        loss_u = 0.5 * loss_fp + 0.25 * (loss_s1 + loss_s2)
        run.backward_step(optimizer, (loss_s + loss_u) / 2, "L_unimatch")
        return {"seg/sup": loss_s, "unimatch/fp": loss_fp, "unimatch/s1": loss_s1, "unimatch/s2": loss_s2,
                "info/confident_fraction": (conf >= tau).float().mean()}

    return Method(train_step=train_step, models={"model": net}, optimizers={"optimizer": optimizer},
                  lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
