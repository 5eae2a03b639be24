"""The pictures a person looks at: test_ACDC.py's overlays and the training image grids (matplotlib, headless).

Each panel has a title and the figure a legend of the class colours (the palette of networks/semantic_coloring),
so a picture can be read without the code.
"""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from networks.semantic_coloring import palette  # noqa: E402
from utils.safe_write import write_file  # noqa: E402

PANEL_INCHES = 3.0  # each panel ≈ 300 px at the default 100 dpi, whatever the slice or patch size


def blend(image, label, colors, alpha=0.5):
    """(H, W) image in [0, 1] + (H, W) int labels -> (H, W, 3) RGB float in [0, 1], labels (> 0) blended in."""
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    mask = label > 0
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[label[mask]]
    return rgb


def _legend(fig, class_names, colors):
    """class_names: every class, background first (not in the legend: it is left uncoloured)."""
    handles = [Patch(color=colors[c], label=name) for c, name in enumerate(class_names) if c > 0]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=11)


def overlay_figure(path, case, image, label, pred, class_names, slices, dice=None):
    """One PNG per case: a row per slice, columns image | ground truth | prediction.
    image (D, H, W) in [0, 1]; label, pred (D, H, W) int; class_names: every class, background first;
    slices: the indices to show; dice: {slice: Dice %}."""
    colors = palette(len(class_names)).numpy()
    h, w = image.shape[1:]
    fig, axes = plt.subplots(len(slices), 3, squeeze=False,
                             figsize=(3 * PANEL_INCHES, len(slices) * PANEL_INCHES * h / w + 0.8))
    for row, z in zip(axes, slices):
        score = f", Dice {dice[z]:.1f} %" if dice is not None else ""
        for ax, picture, title in zip(row, (np.clip(image[z], 0, 1), blend(image[z], label[z], colors),
                                            blend(image[z], pred[z], colors)),
                                      (f"{case} slice {z + 1}", "ground truth", f"prediction{score}")):
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=11)
            ax.axis("off")
    _legend(fig, class_names, colors)
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    try:
        write_file(path, fig.savefig)
    finally:
        plt.close(fig)


def panel_grid(panels, titles, class_names):
    """Training image grid: panels [(3, H, W) float array in [0, 1]] side by side with titles and the class
    legend -> (3, H', W') float32 in [0, 1] for tensorboard (and the --save_images PNG)."""
    colors = palette(len(class_names)).numpy()
    h, w = panels[0].shape[1:]
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(len(panels) * PANEL_INCHES, PANEL_INCHES * h / w + 0.9))
    for ax, p, title in zip(axes[0], panels, titles):
        ax.imshow(np.transpose(p, (1, 2, 0)), vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.axis("off")
    _legend(fig, class_names, colors)
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba(), dtype=np.float32) / 255.0
    plt.close(fig)
    return np.ascontiguousarray(rgba[..., :3].transpose(2, 0, 1))
