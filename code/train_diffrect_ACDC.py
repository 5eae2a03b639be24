"""DiffRect: pseudo labels calibrated (LCC) and rectified by a latent diffusion model (LFR).
Paper: Liu et al., "Latent Diffusion Label Rectification for Semi-supervised Medical Image Segmentation",
MICCAI 2024. Specific flags: the rectifier group below (diffusion, guidance, ablations).

One iteration (docs/method.md, Training iteration; eq. 13 with λ1 = w(t), λ2 = 1, then eq. 14):
  1. L_Semi^Seg  θ on weak + strong views (the FixMatch step)                       -> SGD on θ
  2. W2G         rectifier maps θ's weak pseudo label towards the ground truth
  3. S2W         rectifier maps θ's strong pseudo label towards the weak one        -> one SGD on the rectifier
  4. L_Rect      after --refine_start: θ learns the rectified labels of the unlabeled slices -> SGD on θ
"""
import torch

from networks.rectifier import Rectifier
from networks.semantic_coloring import colorize
from networks.unet import net_factory
from utils.calibration import GUIDANCES, calibration_guidance, overlap_scores
from utils.config import UsageError, run_main, semi_supervised_flags, training_parser
from utils.losses import complementary_loss, fixmatch_losses, masked_pseudo_label, seg_loss
from utils.ramps import consistency_weight
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=True, strong_views=1)


def parse_args(argv):
    p = semi_supervised_flags(training_parser(__doc__, exp="ACDC/DiffRect", batch_size=6, labeled_bs=3))
    g = p.add_argument_group("rectifier (LCC + LFR)")
    g.add_argument("--refine_start", type=int, default=1000, help="L_Rect is on once the iteration exceeds this")
    g.add_argument("--ts", type=int, default=10, help="diffusion steps T")
    g.add_argument("--ts_sample", type=int, default=2, help="DDIM steps when rectifying")
    g.add_argument("--beta_schedule", default="cosine", choices=["cosine", "linear"])
    g.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"], help="ddpm: the stochastic step of eq. 12")
    g.add_argument("--base_chn_rf", type=int, default=64, help="denoiser widths: 256 -> 6x -> 8x this")
    g.add_argument("--cond_input", default="skip", choices=["skip", "input"],
                   help="skip: condition only through the top skip (reference); input: also into the down path")
    g.add_argument("--clip_latent", type=int, default=1, choices=[0, 1], help="clamp each sampled z0 to [-1, 1]")
    g = p.add_argument_group("ablations (docs/method.md, Ablations)")
    g.add_argument("--no_scs", action="store_true", help="one-hot label maps instead of the colouring scheme")
    g.add_argument("--cg", default="dice", choices=GUIDANCES, help="calibration guidance τ")
    g.add_argument("--no_w2g", action="store_true", help="drop the weak-to-ground-truth rectifier loss")
    g.add_argument("--no_s2w", action="store_true", help="drop the strong-to-weak rectifier loss")
    g.add_argument("--no_lfr", action="store_true", help="LCC only: decode B_sem's condition latent, no diffusion")
    args = p.parse_args(argv)
    for flag in ("ts", "ts_sample", "base_chn_rf"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} {getattr(args, flag)} must be positive")
    if args.ts_sample > args.ts:
        raise UsageError(f"--ts_sample {args.ts_sample} cannot exceed the diffusion steps --ts {args.ts}")
    if args.no_w2g and args.no_s2w:
        raise UsageError("--no_w2g together with --no_s2w leaves nothing to train the rectifier")
    return args


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    C, lbs, thresh = run.num_classes, args.labeled_bs, args.conf_thresh
    net = net_factory(args.model, in_chns=1, class_num=C).to(run.device)
    rectifier_net = Rectifier(num_classes=C, label_scheme="onehot" if args.no_scs else "color", T=args.ts,
                              base_chn=args.base_chn_rf, cond_input=args.cond_input,
                              clip_latent=bool(args.clip_latent), use_diffusion=not args.no_lfr,
                              sample_steps=args.ts_sample, sampler=args.sampler,
                              schedule=args.beta_schedule).to(run.device)
    sgd = dict(lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    optimizer = torch.optim.SGD(net.parameters(), **sgd)
    optimizer_rf = torch.optim.SGD(rectifier_net.parameters(), **sgd)  # constant LR, as the reference
    # DDP under torchrun, the networks themselves otherwise; ablations leave parts of the rectifier unused
    model, rectifier = run.wrap(net), run.wrap(rectifier_net, find_unused=True)
    noise = run.generator("diffusion")  # diffusion t/noise and random τ only, a stream of their own

    def guidance(a, b):
        return calibration_guidance(a, b, C, args.cg, noise)

    def train_step(batch, it):
        weak, strong, label = batch["image"], batch["image_strong"], batch["label"]  # (B,1,H,W) x2, (B,H,W)
        gt = label[:lbs]
        w = consistency_weight(it, args.consistency, args.consistency_rampup)

        # 1. L_Semi^Seg (eq. 3): supervised + weak->strong pseudo-label consistency + complementary term
        logits_w = model(weak)
        loss_seg, terms, y_w, y_s = fixmatch_losses(logits_w, model(strong), gt, w, thresh)
        run.backward_step(optimizer, loss_seg, "L_seg")

        # 2. W2G: condition colour(y_w) (eq. 4, 5), target colour(GT) on labeled / colour(y_w) on unlabeled
        tau_l = guidance(y_w[:lbs], gt)  # eq. 6
        loss_rf = 0.0
        if not args.no_w2g:
            lat_l, dec_w2g = rectifier.training_losses(weak, y_w, torch.cat([gt, y_w[lbs:]]), tau_l, noise)
            w2g_seg = seg_loss(dec_w2g[:lbs], gt)
            loss_rf = w2g_seg + lat_l  # L_Lat-L (eq. 11) over the whole batch
            terms.update({"w2g/seg": w2g_seg, "w2g/latent": lat_l})
            y_w2 = masked_pseudo_label(dec_w2g, thresh)
        else:
            dec_w2g, y_w2 = logits_w.detach(), y_w

        # 3. S2W: condition colour(y_s), target colour(y_w); supervised by the W2G output on unlabeled
        tau_u = guidance(y_s[lbs:], y_w2[lbs:])
        if not args.no_s2w:
            lat_u, dec_s2w = rectifier.training_losses(strong, y_s, y_w, tau_u, noise)
            s2w_seg, s2w_comp = seg_loss(dec_s2w[lbs:], y_w2[lbs:]), complementary_loss(dec_s2w, dec_w2g)
            loss_rf = loss_rf + w * (s2w_seg + s2w_comp + lat_u)  # L_Lat-U (eq. 9); eq. 13 with λ1 = w(t)
            terms.update({"s2w/seg": s2w_seg, "s2w/comp": s2w_comp, "s2w/latent": lat_u})
        run.backward_step(optimizer_rf, loss_rf, "L_rectifier")

        # 4. L_Rect (eq. 14): θ learns the rectified labels; the rectifier stays in train mode (reference)
        y_r = None
        if it > args.refine_start:
            y_r = masked_pseudo_label(rectifier.rectify(weak, y_w, tau_l, noise), thresh)
            loss_rect = seg_loss(model(weak)[lbs:], y_r[lbs:])
            run.backward_step(optimizer, loss_rect, "L_rect")
            terms["rect/seg"] = loss_rect
            terms["diag/rectified_dice_labeled"] = overlap_scores(y_r[:lbs], gt, C)[0]
        terms["diag/weak_dice_labeled"] = overlap_scores(y_w[:lbs], gt, C)[0]
        if tau_l is not None:
            terms.update({"tau/labeled": tau_l, "tau/unlabeled": tau_u})
        terms["info/consistency_weight"] = w

        if run.should_log_images(it):
            maps = [label, y_w, y_s] + ([y_r] if y_r is not None else [])
            run.log_images("train/image_gt_weak_strong_rectified", [weak[0]] + [colorize(m[:1], C)[0] for m in maps],
                           it)
        return terms

    return Method(train_step=train_step, models={"model": net, "rectifier": rectifier_net},
                  optimizers={"optimizer": optimizer, "optimizer_rf": optimizer_rf},
                  lr_schedules={"optimizer": "poly", "optimizer_rf": "constant"}, eval_model=net,
                  generators={"noise": noise})


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
