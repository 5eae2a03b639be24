"""Data loading: datasets, samplers, augmentations and the synthetic phantom generator."""
