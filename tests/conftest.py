"""Shared fixtures: the reference data directory, when this machine has one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sgsc import data

# The models under test are tiny: one thread is faster than two fighting over a busy
# machine, and it keeps timings of the suite steady on CI's two cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """$SGSC_DATA_DIR if it holds the published files; otherwise the test is skipped."""
    root = os.environ.get(data.DATA_DIR_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"{data.DATA_DIR_ENV} is not set to a folder holding the published data")
    missing = [f.name for files in data.FILES.values() for f in files
               if data.locate(f, Path(root)) is None]
    if missing:
        pytest.skip(f"{root} lacks {', '.join(missing)}")
    return Path(root)


@pytest.fixture(scope="session")
def mnist(shared_data_dir):
    return data.load_mnist(download=False)


@pytest.fixture(scope="session")
def digits():
    return data.load_digits()
