"""Raw scanner intensities -> the [0, 1] images the networks take. One scheme per dataset: prepare_data.py
writes it into the dataset's `dataset.json`, training copies it into every checkpoint, and predict.py applies
it to a new scan, so a scan is treated exactly as the training data was.

    minmax      per case: (x - min) / (max - min). The paper's datasets, and the default for MR and any
                modality whose intensities have no fixed physical scale.
    percentile  per case: clip to the case's 0.5 and 99.5 percentiles, then min-max. As minmax, but a few
                very bright voxels (flow artefacts, implants) no longer squeeze the anatomy into a few grey levels.
    zscore      per case: (x - mean) / std, clipped to [-3, 3] and mapped linearly onto [0, 1].
    ct          one window for the whole dataset: clip to [lo, hi], the 0.5 and 99.5 percentiles of the
                labelled foreground voxels of the training cases (up to 100 000 drawn per case), then
                (x - lo) / (hi - lo). Hounsfield units
                mean the same tissue in every CT scan, so a per-case rescale would throw that away (nnU-Net
                clips CT the same way). The default when the dataset's channel is named "CT".
"""
import numpy as np

SCHEMES = ("minmax", "percentile", "zscore", "ct")
CT_PERCENTILES = (0.5, 99.5)


def default_scheme(channel_name):
    """nnU-Net's channel name (dataset.json `channel_names`) -> our default scheme."""
    return "ct" if str(channel_name).strip().upper() == "CT" else "minmax"


def foreground_sample(image, label, rng, n=100_000):
    """Up to n intensities of the voxels labelled foreground (label > 0), drawn with rng (empty without any)."""
    values = image[label > 0] if label is not None else image[:0]
    return values if values.size <= n else rng.choice(values, n, replace=False)


def ct_window(samples):
    """Foreground samples of the training cases -> [lo, hi], their CT_PERCENTILES."""
    values = np.concatenate([np.ravel(v) for v in samples]) if samples else np.zeros(0)
    if values.size == 0:
        raise ValueError("no foreground voxels in the labeled training cases to set a CT window from")
    lo, hi = np.percentile(values.astype(np.float64), CT_PERCENTILES)
    if not hi > lo:  # a window of one value would map every voxel to 0 (and dataset.json refuses it)
        raise ValueError(f"the labeled foreground has one intensity ({lo:g}) between its {CT_PERCENTILES[0]} and "
                         f"{CT_PERCENTILES[1]} percentiles, no window")
    return [float(lo), float(hi)]


def _rescale(image, lo, hi):
    return ((image - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(image)


def normalize(image, normalization):
    """image (any shape, any numeric dtype) + {"scheme": one of SCHEMES[, "window": [lo, hi]]} -> float32 in [0, 1].

    minmax is computed in float32 with Python-float bounds, bit for bit as every earlier preparation did."""
    scheme = normalization.get("scheme", "minmax")
    image = np.asarray(image).astype(np.float32)
    if scheme == "minmax":
        return _rescale(image, float(image.min()), float(image.max()))
    if scheme == "percentile":
        lo, hi = (float(v) for v in np.percentile(image, CT_PERCENTILES))
        return _rescale(np.clip(image, lo, hi), lo, hi)
    if scheme == "zscore":
        mean, std = float(image.mean()), float(image.std())
        z = (image - mean) / std if std > 0 else np.zeros_like(image)
        return ((np.clip(z, -3.0, 3.0) + 3.0) / 6.0).astype(np.float32)
    if scheme == "ct":
        lo, hi = (float(v) for v in normalization["window"])
        return np.clip(_rescale(np.clip(image, lo, hi), lo, hi), 0.0, 1.0)
    raise ValueError(f"unknown intensity normalisation {scheme!r}; one of {SCHEMES}")
