"""BCP's two training stages and its copy-paste supervision, shared by train_bcp_ACDC.py and train_abd_ACDC.py
(ABD's BCP-based variant adds its displacement to BCP's self-training step).

Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical Image Segmentation", CVPR 2023, Sec. 3.
Shapes: slices (N, 1, H, W), label maps (N, H, W) long, crop bool (1, 1, H, W) (utils/mixing.py).
"""
import torch

from utils.config import FRACTION, number_in
from utils.errors import UsageError
from utils.losses import largest_component_labels, masked_seg_loss
from utils.mixing import bidirectional_copy_paste


def bcp_flags(parser, title):
    """BCP's flags (the paper's values as defaults); returns the group so a script can add its own."""
    g = parser.add_argument_group(title)
    g.add_argument("--pretrain_iterations", type=int, default=None, help="pre-training iterations at the start of "
                   "--max_iterations; none given: a quarter of it (the paper's 10 000 of 10 000 + 30 000)")
    g.add_argument("--alpha", type=FRACTION, default=0.5, help="weight of the pseudo-labelled part of each mixed slice")
    g.add_argument("--crop_ratio", type=number_in(0, 1, low_open=True, high_open=True), default=2 / 3,
                   help="side of the copy-paste crop / side of the slice")
    g.add_argument("--ema_decay", type=FRACTION, default=0.99, help="teacher <- decay teacher + (1 - decay) student")
    return g


def check_bcp_args(args):
    """Resolves --pretrain_iterations; raises UsageError on flags BCP's pairing cannot use. -> args."""
    if args.pretrain_iterations is None:
        args.pretrain_iterations = args.max_iterations // 4
    if not 0 <= args.pretrain_iterations <= args.max_iterations:
        raise UsageError(f"--pretrain_iterations {args.pretrain_iterations} must be in [0, --max_iterations "
                         f"{args.max_iterations}]")
    if args.batch_size != 2 * args.labeled_bs or args.labeled_bs % 2:
        raise UsageError(f"--batch_size {args.batch_size} --labeled_bs {args.labeled_bs}: BCP pairs each labeled slice "
                         f"with one unlabeled slice and pre-trains on pairs of labeled slices; give an even "
                         f"--labeled_bs and --batch_size twice it")
    return args


class TwoStages:
    """BCP's schedule in one run: iterations [0, P) pre-train the student on copy-pasted labeled slices; at P the
    teacher becomes a copy of the pre-trained student (weights and BatchNorm statistics), as the paper initialises
    both networks from the pre-trained model, and self-training runs to --max_iterations (paper, ACDC: P = 10 000,
    then 30 000). The learning rate stays --base_lr and the student keeps its SGD momentum across the switch, as
    the authors' implementation (constant lr; the student loads the pre-training's optimizer state) does. Every
    decision is a function of the iteration alone, so a resume before, after or exactly at the switch continues
    the straight run."""

    def __init__(self, args, run, net, student, teacher, optimizer):
        self.switch = args.pretrain_iterations
        self.run, self.net, self.student, self.teacher, self.optimizer = run, net, student, teacher, optimizer

    def pretraining(self, it):
        """Set step `it` up (at the switch: teacher <- student) -> True while pre-training."""
        if it == self.switch:
            self.teacher.load_state_dict(self.net.state_dict())
        return it < self.switch

    def pretrain_step(self, image, label, crop):
        """One pre-training step: the labeled slices, in two halves, copy-pasted into each other pair by pair in
        both directions; each part of a mixed slice supervised by its own ground truth with weight 1 (bcp_loss at
        α = 1). image (B_l,1,H,W), label (B_l,H,W)."""
        half = len(image) // 2
        x, y, from_first = copy_paste_pairs(image[:half], image[half:], label[:half], label[half:], crop)
        loss = sum(bcp_loss(self.student(x), y, from_first, 1.0))
        self.run.backward_step(self.optimizer, loss, "L_pre")
        return {"bcp/pretrain": loss}


@torch.no_grad()
def pseudo_labels(teacher, unlabeled, num_classes):
    """Ŷ_u: the teacher's hard labels of the unlabeled slices, post-processed as the paper does for 2-D ACDC (each
    class keeps its largest connected component). (N, 1, H, W) -> (N, H, W) long."""
    return largest_component_labels(teacher(unlabeled).max(1).indices, num_classes)


def copy_paste_pairs(labeled, unlabeled, label, pseudo, crop):
    """The bidirectional copy-paste of labeled slice i with unlabeled slice i through one crop:
    X_in = X_l ⊙ M + X_u ⊙ (1 - M) (unlabeled crop on labeled background), X_out = X_u ⊙ M + X_l ⊙ (1 - M)
    (labeled crop on unlabeled background), M zero inside the crop; labels Y_in, Y_out mixed alike from the
    ground truth and Ŷ_u. -> slices (2N,1,H,W) [in; out], their labels (2N,H,W), and which pixels carry ground
    truth (2N,H,W) bool."""
    x = torch.cat(bidirectional_copy_paste(labeled, unlabeled, crop))
    y = torch.cat(bidirectional_copy_paste(label, pseudo, crop))
    from_gt = torch.cat(bidirectional_copy_paste(torch.ones_like(label, dtype=torch.bool),
                                                 torch.zeros_like(label, dtype=torch.bool), crop))
    return x, y, from_gt


def bcp_loss(logits, label, from_gt, alpha):
    """L_in and L_out, each L_seg(Q, Y) ⊙ M_gt + α L_seg(Q, Y) ⊙ M_pseudo over the parts of its slices that carry
    ground truth and pseudo labels (L_seg ⊙ M: utils/losses.masked_seg_loss, (CE + Dice) / 2 over the part);
    logits (2N,C,H,W) [in; out] -> (L_in, L_out)."""
    gt = from_gt.float()
    return tuple(masked_seg_loss(q, y, g) + alpha * masked_seg_loss(q, y, 1.0 - g)
                 for q, y, g in zip(logits.chunk(2), label.chunk(2), gt.chunk(2)))
