"""The official downloads of the paper's three datasets: finding their cases and reading them (NIfTI).

Each reader returns, per case, the image as float32 (D, H, W) min-max normalised to [0, 1] as a whole volume,
the label as uint8 (D, H, W) remapped to our contiguous ids (docs/datasets.md), and the voxel spacing in mm in the same
(D, H, W) axis order. Anything unusable raises DataError naming the case and the fix.
NIfTI is read with SimpleITK, which test_ACDC.py also uses to write its NIfTI outputs.
"""
import glob
import os
import re
from dataclasses import dataclass

import numpy as np

from dataloaders.dataset import DataError
from dataloaders.image_io import read_itk
from dataloaders.intensity import normalize
from utils.errors import one_line

# official label code -> our id. ACDC and Task05 are already contiguous; MS-CMRSEG19 uses 200/500/600.
LABEL_MAPS = {
    "acdc": {0: 0, 1: 1, 2: 2, 3: 3},  # BG, RV, Myo, LV
    "mscmr": {0: 0, 600: 1, 200: 2, 500: 3},  # RV=600, Myo=200, LV=500 -> ACDC order
    "prostate": {0: 0, 1: 1, 2: 2},  # BG, PZ, TZ
}
CLASS_NAMES = {"acdc": ["BG", "RV", "Myo", "LV"], "mscmr": ["BG", "RV", "Myo", "LV"], "prostate": ["BG", "PZ", "TZ"]}


@dataclass
class Case:
    patient: str  # split unit, e.g. patient001
    volume: str  # output id, e.g. patient001_frame01
    image_path: str
    label_path: str


def _require(path, case, what):
    if not os.path.isfile(path):
        raise DataError(f"case {case}: {what} {path} not found; the download is incomplete or not in the official "
                        f"folder structure")
    return path


def find_acdc(root):
    """training/patientXXX/patientXXX_frameYY.nii.gz with _gt; testing/ the same way (when it holds labels)."""
    cases = []
    for image in sorted(glob.glob(os.path.join(root, "*", "patient*", "patient*_frame[0-9][0-9].nii.gz"))):
        vol = os.path.basename(image)[:-len(".nii.gz")]
        label = _require(image[:-len(".nii.gz")] + "_gt.nii.gz", vol, "label")
        cases.append(Case(vol.split("_")[0], vol, image, label))
    return cases


def find_mscmr(root):
    """LGE images patient{N}_LGE.nii.gz and manual labels patient{N}_LGE_manual.nii.gz, anywhere under root."""
    labels = {os.path.basename(p): p for p in glob.glob(os.path.join(root, "**", "*_LGE_manual.nii.gz"), recursive=True)}
    cases = []
    images = glob.glob(os.path.join(root, "**", "patient*_LGE.nii.gz"), recursive=True)
    for image in sorted(images, key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0])):
        pid = os.path.basename(image)[:-len("_LGE.nii.gz")]
        name = f"{pid}_LGE_manual.nii.gz"
        if name not in labels:
            raise DataError(f"case {pid}: label {name} not found under {root}; the download is incomplete")
        cases.append(Case(pid, pid, image, labels[name]))
    return cases


def find_prostate(root):
    """MSD Task05: imagesTr/prostate_XX.nii.gz (4-D: T2, ADC) with labelsTr/prostate_XX.nii.gz."""
    cases = []
    for image in sorted(glob.glob(os.path.join(root, "imagesTr", "prostate_*.nii.gz"))):
        name = os.path.basename(image)
        if name.startswith("._"):  # macOS resource forks ship inside the official tarball
            continue
        vol = name[:-len(".nii.gz")]
        cases.append(Case(vol, vol, image, _require(os.path.join(root, "labelsTr", name), vol, "label")))
    return cases


FINDERS = {"acdc": find_acdc, "mscmr": find_mscmr, "prostate": find_prostate}


def _read(path, case):
    """-> (array, ITK spacing (x, y, z[, t])); a bad file names its case."""
    try:
        img, array = read_itk(path)
    except DataError as e:
        why = str(e).partition(f"{path}: ")[2] or one_line(e)  # the reason without the path, named here
        raise DataError(f"case {case}: cannot read {path} ({why}); re-download it") from None
    return array, tuple(float(s) for s in img.GetSpacing())


def load_case(case, dataset):
    """-> image float32 (D,H,W) in [0,1], label uint8 (D,H,W), spacing (D,H,W) in mm."""
    image, spacing = _read(case.image_path, case.volume)
    label, _ = _read(case.label_path, case.volume)
    if dataset == "prostate":
        if image.ndim != 4:
            raise DataError(f"case {case.volume}: {case.image_path} is {image.ndim}-D; Task05 images are 4-D "
                            f"(T2, ADC)")
        image, spacing = image[0], spacing[:3]  # T2 is channel 0
    if image.ndim != 3:
        raise DataError(f"case {case.volume}: {case.image_path} is {image.ndim}-D {image.shape}, a 3-D volume is "
                        f"expected (a 4-D cine file, e.g. *_4d.nii.gz, is not a frame)")
    if label.shape != image.shape:
        raise DataError(f"case {case.volume}: image {image.shape} and label {label.shape} differ in shape")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DataError(f"case {case.volume}: {case.image_path} has NaN or infinite values")
    return normalize(image, {"scheme": "minmax"}), remap_labels(label, LABEL_MAPS[dataset], case.volume), spacing[::-1]


def remap_labels(label, mapping, case):
    """Official codes -> contiguous ids; a code outside the map is an error naming the case and the code."""
    codes = np.unique(label)
    unknown = [int(c) for c in codes if int(c) not in mapping]
    if unknown:
        raise DataError(f"case {case}: label codes {unknown} are not in the label map {sorted(mapping)}; is this the "
                        f"right --dataset?")
    lut = np.zeros(int(codes.max()) + 1, dtype=np.uint8)
    for code, ours in mapping.items():
        if code <= codes.max():
            lut[code] = ours
    return lut[label.astype(np.int64)]
