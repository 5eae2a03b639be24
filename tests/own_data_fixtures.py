"""Synthetic own-data inputs: an nnU-Net raw dataset of 3-D NIfTI phantoms (spacing, origin and an oblique
direction; some cases without labels) and a folder of PNG images with palette masks."""
import json
import os

import numpy as np
import SimpleITK as sitk
from PIL import Image

from dataloaders.synthetic import make_volume

SPACING = (1.4, 1.2, 7.5)  # ITK (x, y, z)
ORIGIN = (-120.5, 33.25, 10.0)
_c, _s = np.cos(0.3), np.sin(0.3)
DIRECTION = (_c, -_s, 0.0, _s, _c, 0.0, 0.0, 0.0, 1.0)  # rotated 0.3 rad about z
CLASS_VALUES = {"background": 0, "RV": 1, "Myo": 2, "LV": 3}


def nifti(path, array, spacing=SPACING, origin=ORIGIN, direction=DIRECTION):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, path)


def make_nnunet(root, n_cases=8, unlabeled=("case06", "case07"), size=(48, 56), depth=4, seed=0):
    """imagesTr/caseNN_0000.nii.gz (int16 'MR' intensities), labelsTr/caseNN.nii.gz except `unlabeled`.
    -> {case: (raw image, label)}."""
    os.makedirs(os.path.join(root, "imagesTr"))
    os.makedirs(os.path.join(root, "labelsTr"))
    rng, cases = np.random.default_rng(seed), {}
    for i in range(n_cases):
        name = f"case{i:02d}"
        img, lab = make_volume(rng, depth, *size)
        raw = np.round(img * 800 + 40).astype(np.int16)  # scanner-like values, not [0, 1]
        nifti(os.path.join(root, "imagesTr", f"{name}_0000.nii.gz"), raw)
        if name not in unlabeled:
            nifti(os.path.join(root, "labelsTr", f"{name}.nii.gz"), lab.astype(np.uint8))
        cases[name] = (raw, lab)
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "MRI"}, "labels": CLASS_VALUES, "numTraining": n_cases,
                   "file_ending": ".nii.gz"}, f)
    return cases


def make_png_folder(root, n_images=8, unlabeled=(6, 7), size=(48, 56), seed=1):
    """images/imgNN.png (RGB) and masks/imgNN.png (palette, values 0..3) except `unlabeled`."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    rng, out = np.random.default_rng(seed), {}
    for i in range(n_images):
        img, lab = make_volume(rng, 1, *size)
        grey = np.round(img[0] * 255).astype(np.uint8)
        Image.fromarray(np.stack([grey] * 3, -1)).save(os.path.join(root, "images", f"img{i:02d}.png"))
        if i not in unlabeled:
            mask = Image.fromarray(lab[0].astype(np.uint8), mode="P")
            mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
            mask.save(os.path.join(root, "masks", f"img{i:02d}.png"))
        out[f"img{i:02d}"] = (grey, lab[0])
    return out
