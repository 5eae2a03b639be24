"""Weak and strong views of a 2-D slice (docs/method.md, Training iteration), in numpy/cv2 (no PIL round trips).

Order: resize to the patch -> one shared geometry (flip LR p=.5, flip UD p=.5, then p=.5 a rotation by an
integer angle in [0, 358] about the centre, zero fill) = the weak view; the strong view is the weak view plus, in random order, contrast / sharpness / brightness enhancement (each
p=.5, factor 1 + U[0, 0.1)), then a Gaussian blur (p=.5, radius U[0, 1)). The enhancements follow
PIL.ImageEnhance's definitions on a float image in [0, 1], clamped like PIL's 8-bit output.
All randomness comes from the numpy Generator passed in, so a sample is a pure function of its seed.

Image and label share one geometry. The image is resampled linearly (cv2's centre-aligned convention); the
label goes through exactly the same interpolation, one indicator map per class, and each pixel takes the
class of largest weight (`resample_label`). cv2's INTER_NEAREST is corner-aligned in `resize` (a label moves
up to half a source pixel towards the origin: 91.6 Dice between resized label and resized image on the real
ACDC val masks at 128², 95.9 at 256²); the class-weight rule gives 99.3 / 100.0 and never invents a class.
"""
import cv2
import numpy as np

# PIL's ImageFilter.SMOOTH kernel, the "degenerate" image of ImageEnhance.Sharpness
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def resample_label(label, interpolate):
    """(H, W) integer labels -> (H', W') uint8, resampled the way `interpolate` resamples an image.

    interpolate: (H, W, K) float32 -> (H', W', K) (or (H', W') when K == 1), a linear cv2 resize/warp with zero
    fill. Each foreground class's indicator map is interpolated; a pixel takes the heaviest foreground class
    if it outweighs the background (1 - their sum, so anything outside the source counts as background);
    ties go to the background, then to the lower class id. A binary mask thus becomes exactly
    interpolate(mask) > 0.5, the set its linearly resampled image shows.
    """
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=1))
    fg = present[present > 0]
    if fg.size == 0:
        return np.zeros(interpolate(np.zeros(label.shape + (1,), np.float32)).shape[:2], np.uint8)
    onehot = (label[..., None] == fg).astype(np.float32)  # (H, W, K)
    weights = interpolate(onehot)
    weights = weights.reshape(weights.shape[:2] + (fg.size,))
    best = weights.argmax(-1)
    top = np.take_along_axis(weights, best[..., None], -1)[..., 0]
    return np.where(top > 1.0 - weights.sum(-1), fg[best], 0).astype(np.uint8)


def resize_pair(image, label, size):
    """(H, W) float32 + (H, W) uint8 (or None: unlabeled) -> both (size[0], size[1]), through one centre-aligned
    linear resize."""
    h, w = size
    if image.shape == (h, w):
        return image, label
    resize = lambda a: cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)
    return resize(image), None if label is None else resample_label(label, resize)


def draw_geometry(rng):
    """-> (flip_lr, flip_ud, angle in degrees or None): one draw of the shared geometry."""
    flip_lr, flip_ud = rng.random() < 0.5, rng.random() < 0.5
    angle = float(rng.integers(0, 359)) if rng.random() < 0.5 else None
    return flip_lr, flip_ud, angle


def apply_geometry(image, label, geometry):
    """Flips, then the rotation about the centre (zero fill), applied alike to image and label (None: none)."""
    flip_lr, flip_ud, angle = geometry
    has_label = label is not None
    label = label if has_label else np.zeros((0, 0), np.uint8)  # nothing to move, the flips below stay uniform
    if flip_lr:
        image, label = image[:, ::-1], label[:, ::-1]
    if flip_ud:
        image, label = image[::-1], label[::-1]
    if angle is not None:
        h, w = image.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        rotate = lambda a: cv2.warpAffine(np.ascontiguousarray(a), m, (w, h), flags=cv2.INTER_LINEAR,
                                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        image, label = rotate(image), resample_label(label, rotate) if has_label else label
    return np.ascontiguousarray(image), np.ascontiguousarray(label) if has_label else None


def random_geometry(image, label, rng):
    """The shared geometry, drawn from rng: the same transform for image and label."""
    return apply_geometry(image, label, draw_geometry(rng))


def _contrast(img, f):
    mean = float(img.mean())
    return mean + f * (img - mean)


def _sharpness(img, f):
    smooth = cv2.filter2D(img, -1, _SMOOTH, borderType=cv2.BORDER_REPLICATE)
    smooth[0, :], smooth[-1, :], smooth[:, 0], smooth[:, -1] = img[0, :], img[-1, :], img[:, 0], img[:, -1]
    return smooth + f * (img - smooth)


def _brightness(img, f):
    return img * f


def strong_photometric(image, rng):
    """Photometric changes only: the strong view keeps the weak view's geometry and label."""
    ops = [_contrast, _sharpness, _brightness]
    out = image.astype(np.float32, copy=True)
    for i in rng.permutation(3):
        if rng.random() < 0.5:
            out = np.clip(ops[i](out, 1.0 + 0.1 * rng.random()), 0.0, 1.0).astype(np.float32)
    if rng.random() < 0.5:
        radius = rng.random()
        if radius > 1e-3:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=radius, borderType=cv2.BORDER_REPLICATE)
    return out


def make_views(image, label, rng, patch_size, strong=True):
    """-> weak (H, W) float32, strong (H, W) float32 or None, label (H, W) uint8 (None in, None out), all at
    patch_size."""
    image, label = resize_pair(image, label, patch_size)
    weak, label = random_geometry(image, label, rng)
    return weak, (strong_photometric(weak, rng) if strong else None), label
