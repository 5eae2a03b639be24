"""Weak and strong views of a 2-D slice (SPEC §4), in numpy/cv2 (no PIL round trips).

Order: resize to the patch (image linear, label nearest) -> one shared geometry (flip LR p=.5, flip UD p=.5,
then p=.5 a rotation by an integer angle in [0, 358] about the centre, zero fill) = the weak view; the
strong view is the weak view plus, in random order, contrast / sharpness / brightness enhancement (each
p=.5, factor 1 + U[0, 0.1)), then a Gaussian blur (p=.5, radius U[0, 1)). The enhancements follow
PIL.ImageEnhance's definitions on a float image in [0, 1], clamped like PIL's 8-bit output.
All randomness comes from the numpy Generator passed in, so a sample is a pure function of its seed.
"""
import cv2
import numpy as np

# PIL's ImageFilter.SMOOTH kernel, the "degenerate" image of ImageEnhance.Sharpness
_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13.0


def resize_pair(image, label, size):
    """(H, W) float32 + (H, W) uint8 -> both (size[0], size[1]); image linear, label nearest."""
    h, w = size
    if image.shape == (h, w):
        return image, label
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST))


def random_geometry(image, label, rng):
    """The shared geometry: flips, then maybe a rotation. Same transform for image and label."""
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if rng.random() < 0.5:
        image, label = image[::-1], label[::-1]
    if rng.random() < 0.5:
        angle = float(rng.integers(0, 359))
        h, w = image.shape
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
        image = cv2.warpAffine(np.ascontiguousarray(image), m, (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        label = cv2.warpAffine(np.ascontiguousarray(label), m, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


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
    """-> weak (H, W) float32, strong (H, W) float32 or None, label (H, W) uint8, all at patch_size."""
    image, label = resize_pair(image, label, patch_size)
    weak, label = random_geometry(image, label, rng)
    return weak, (strong_photometric(weak, rng) if strong else None), label
