"""Fully supervised baseline: the U-Net trained on the labeled slices only (batches of --batch_size labeled).
Paper: Ronneberger et al., U-Net (MICCAI 2015), as trained in SSL4MIS; --labelnum 140 is the 100% row.
Specific flags: none.
"""
import torch

from networks.semantic_coloring import colorize
from networks.unet import net_factory
from utils.config import run_main, training_parser
from utils.losses import seg_loss
from utils.trainer import Batches, Method, TrainingRun


BATCHES = Batches(semi_supervised=False, strong_views=0)


def parse_args(argv):
    return training_parser(__doc__, exp="ACDC/Fully_Supervised").parse_args(argv)


def build(args, run):
    """The method's networks, optimizers and train step, as the Method that run.fit trains."""
    net = net_factory(args.model, in_chns=1, class_num=run.num_classes).to(run.device)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.base_lr, momentum=0.9, weight_decay=1e-4)
    model = run.wrap(net)  # DDP under torchrun, `net` itself otherwise

    def train_step(batch, it):
        image, label = batch["image"], batch["label"]  # (B, 1, H, W), (B, H, W)
        logits = model(image)
        loss = seg_loss(logits, label)
        run.backward_step(optimizer, loss, "loss")
        if run.should_log_images(it):
            c = run.num_classes
            run.log_images("train/image_gt_pred", [image[0], colorize(label[:1], c)[0],
                                                   colorize(logits[:1].argmax(1), c)[0]], it)
        return {"loss/seg": loss}

    return Method(train_step=train_step, models={"model": net}, optimizers={"optimizer": optimizer},
                  lr_schedules={"optimizer": "poly"}, eval_model=net)


def main(argv=None):
    """Flags -> the run (snapshot folder, data, device) -> the method's networks and step -> training."""
    args = parse_args(argv)
    with TrainingRun(args, BATCHES) as run:
        return run.fit(build(args, run))


if __name__ == "__main__":
    run_main(main)
