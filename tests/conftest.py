import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "code"))

# The --gpu the end-to-end tests train and evaluate with: the CPU by default (CI has no GPU);
# DIFFRECT_TEST_GPU=0 runs them on CUDA device 0 (the CUDA path users run). The gloo tests of
# test_distributed.py stay on the CPU.
TEST_GPU = os.environ.get("DIFFRECT_TEST_GPU", "-1")

# The real ACDC (prepared SSL4MIS layout), for the few tests that read it: $DIFFRECT_ACDC, else data/ACDC in
# the repository. Those tests are skipped when neither holds the data.
REAL_ACDC = os.environ.get("DIFFRECT_ACDC") or str(pathlib.Path(__file__).resolve().parents[1] / "data" / "ACDC")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """The default synthetic dataset (16 train / 4 val / 4 test patients), generated once per session."""
    from dataloaders.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "ACDC"
    generate_dataset(str(root), seed=0)
    return str(root)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A small synthetic dataset (4 train / 2 val / 2 test patients, 64 px) for fast flag and fault tests."""
    from dataloaders.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny") / "ACDC"
    generate_dataset(str(root), seed=1, n_train=4, n_val=2, n_test=2, size=(64, 64), depth_range=(4, 6))
    return str(root)
