"""Connected components of stacks of 2-D masks and label maps, in numpy/scipy.

Used by the synthetic phantoms (one RV piece per slice) and by BCP's pseudo-label post-processing (one component
per class and slice). Connectivity is in-plane, 4 (edge neighbours; the default) or 8 (edge and corner
neighbours): components never cross slices.
"""
import numpy as np
from scipy import ndimage

# in-plane structuring elements for (D, H, W) arrays: 4-connectivity (CROSS3) and 8-connectivity (SQUARE3)
CROSS3 = np.zeros((3, 3, 3), dtype=bool)
CROSS3[1, 1, :] = CROSS3[1, :, 1] = True
SQUARE3 = np.zeros((3, 3, 3), dtype=bool)
SQUARE3[1] = True
STRUCTURES = {4: CROSS3, 8: SQUARE3}


def largest_per_slice(mask: np.ndarray, min_pixels: int = 1, connectivity: int = 4) -> np.ndarray:
    """Keep, in each slice of a (D, H, W) bool mask, only its largest component (if >= min_pixels) in in-plane
    `connectivity` (4 or 8); ties go to the component met first in raster order."""
    lab, n = ndimage.label(mask, structure=STRUCTURES[connectivity])  # components never cross slices
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    zs = np.nonzero(mask)[0]
    comp_z = np.zeros(n + 1, dtype=np.int64)
    comp_z[lab[mask]] = zs
    keep = np.zeros(n + 1, dtype=bool)
    for zi in np.unique(comp_z[1:]):
        ids = np.nonzero(comp_z == zi)[0]
        ids = ids[ids > 0]
        best = ids[np.argmax(sizes[ids])]
        keep[best] = sizes[best] >= min_pixels
    return keep[lab]


def largest_component_per_class(labels: np.ndarray, num_classes: int, connectivity: int = 4) -> np.ndarray:
    """(D, H, W) integer label maps -> a copy in which every foreground class keeps, in each slice, only its
    largest component in in-plane `connectivity` (4 or 8); the pixels of its other components become background."""
    out = labels.copy()
    for c in range(1, num_classes):
        mask = labels == c
        out[mask & ~largest_per_slice(mask, connectivity=connectivity)] = 0
    return out
