"""Mixed training samples whose labels follow their pixels: BCP's bidirectional copy-paste, CutMix (UniMatch's
strong views) and ABD's confidence-guided patch displacement.

Shapes: images (N, 1, H, W); label maps and pixel-weight maps (N, H, W); region masks bool (N or 1, 1, H, W),
True inside the region. Every function moves images and label maps through the same `torch.where`, so a mixed
sample holds exactly the pixels of its sources and each pixel keeps its label. Random draws use torch's global
generator on the CPU (the trainer saves and restores it), so a resumed run draws the same regions.
"""
import math

import torch


def _region_like(region, x):
    """A (N|1, 1, H, W) region mask shaped to broadcast against x: (N, C, H, W) images or (N, H, W) maps."""
    return region if x.dim() == region.dim() else region[:, 0]


def copy_paste_crop(size, ratio, device):
    """BCP's mask for one step: True inside one box of round(ratio H) x round(ratio W) at a uniformly drawn
    position inside the (H, W) slice (the zero region of the paper's mask M). -> bool (1, 1, H, W)."""
    (h, w), crop = size, torch.zeros(1, 1, *size, dtype=torch.bool)
    ch, cw = round(ratio * h), round(ratio * w)
    y0, x0 = (int(torch.randint(0, n - c + 1, ())) for n, c in ((h, ch), (w, cw)))
    crop[..., y0:y0 + ch, x0:x0 + cw] = True
    return crop.to(device)


def bidirectional_copy_paste(a, b, crop):
    """Copy-paste in both directions through one crop: (a with b's crop pasted in, b with a's crop pasted in).
    Every pixel of a and b lands in exactly one output. a, b: images (N, C, H, W) or maps (N, H, W)."""
    inside = _region_like(crop, a)
    return torch.where(inside, b, a), torch.where(inside, a, b)


def cutmix_boxes(n, size, prob, device, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3)):
    """One CutMix box per sample, drawn as UniMatch's medical setting draws it: area ~ U(area) of the slice,
    aspect h / w ~ U(aspect), top-left corner uniform; aspect and corner are drawn again until the box lies inside
    the slice. Each sample gets its box with probability `prob`, else none. -> bool (n, 1, H, W)."""
    (h, w), box = size, torch.zeros(n, 1, *size, dtype=torch.bool)
    for i in range(n):
        if float(torch.rand(())) >= prob:
            continue
        pixels = h * w * float(torch.empty(()).uniform_(*area))
        while True:
            r = float(torch.empty(()).uniform_(*aspect))
            bh, bw = int(math.sqrt(pixels * r)), int(math.sqrt(pixels / r))
            y0, x0 = int(torch.randint(0, h, ())), int(torch.randint(0, w, ()))
            if y0 + bh <= h and x0 + bw <= w:
                break
        box[i, 0, y0:y0 + bh, x0:x0 + bw] = True
    return box.to(device)


def cutmix_partners(n):
    """Each sample's CutMix partner: the sample `shift` places later in the batch (cyclically), shift drawn from
    [1, n) so that no sample is its own partner (n = 1: itself). -> long (n,)."""
    shift = int(torch.randint(1, n, ())) if n > 1 else 0
    return (torch.arange(n) + shift) % n


def cutmix(x, box, partner):
    """x with, in each sample's box, its partner's pixels (images or maps; labels and confidences likewise)."""
    return torch.where(_region_like(box, x), x[partner.to(x.device)], x)


def patch_confidence(probs, grid):
    """(N, C, H, W) class probabilities -> (N, grid * grid) each patch's mean max-probability over its pixels, the
    patches of a grid x grid tiling numbered row by row (H and W divisible by grid)."""
    n, _, h, w = probs.shape
    top = probs.max(1).values.float()  # (N, H, W)
    return top.view(n, grid, h // grid, grid, w // grid).mean((2, 4)).flatten(1)


def displace_patch(dst, src, dst_idx, src_idx, grid):
    """dst with, in each sample i, patch dst_idx[i] replaced by src's patch src_idx[i] (the grid x grid tiling of
    patch_confidence). dst, src: images (N, C, H, W) or maps (N, H, W) of one shape; idx long (N,)."""
    x, s = (t if t.dim() == 4 else t[:, None] for t in (dst, src))
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    tiles = lambda t: t.reshape(n, c, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ph, pw)
    out = tiles(x).clone()
    rows = torch.arange(n, device=x.device)
    out[rows, dst_idx] = tiles(s)[rows, src_idx]
    out = out.reshape(n, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
    return out if dst.dim() == 4 else out[:, 0]


def bidirectional_displacement(weak, strong, conf_weak, conf_strong, grid, inverse=False):
    """ABD's displacement between the weak and strong views of the same slices (Chi et al., CVPR 2024).

    weak, strong: tuples of tensors that move together (an image and its label map, ...), weak[k] and
    strong[k] of one shape; conf_*: (N, grid * grid) patch confidences of each view (patch_confidence).
    ABD-R (inverse=False): each view's least confident patch is replaced by the other view's most confident one.
    ABD-I (inverse=True): each view's most confident patch is replaced by the other view's least confident one.
    -> (new weak tuple, new strong tuple)."""
    least_w, most_w = conf_weak.argmin(1), conf_weak.argmax(1)
    least_s, most_s = conf_strong.argmin(1), conf_strong.argmax(1)
    # (the patch each view gives up, the patch it takes from the other view)
    (out_w, in_s), (out_s, in_w) = ((most_w, least_s), (most_s, least_w)) if inverse else \
        ((least_w, most_s), (least_s, most_w))
    new_weak = tuple(displace_patch(w, s, out_w, in_s, grid) for w, s in zip(weak, strong))
    new_strong = tuple(displace_patch(s, w, out_s, in_w, grid) for w, s in zip(weak, strong))
    return new_weak, new_strong
