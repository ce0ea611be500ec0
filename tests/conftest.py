"""Shared fixtures: the reference data directory when this machine has one, the data sets, and
a stored run (a compressed model file and its result)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sgsc.experiments import data


def _threads() -> int:
    """OMP_NUM_THREADS when set (the suite must pass at 1 and at 2: another thread count
    gives other numbers for the same seed), else 1: the models under test are tiny, one
    thread is faster than two fighting over a busy machine, and it keeps the suite's
    timings steady on CI's two cores."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1


torch.set_num_threads(_threads())


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


@pytest.fixture
def stored_run(tmp_path):
    """A run folder holding a compressed digits CNN's file, and the result the report
    would hold for it (its test accuracy measured on the reloaded file)."""
    import torch

    from sgsc.core.compress import SelfCompression
    from sgsc.core.tasks import evaluate
    from sgsc.experiments import harness, store
    from sgsc.experiments.models import CNNConfig, MnistCNN
    from sgsc.fileformat.export import load_compressed, save_compressed

    torch.manual_seed(0)
    sc = SelfCompression(MnistCNN(CNNConfig.for_digits()), init_bits=4)
    run_dir = tmp_path / "runs" / "digits" / "sc-s0-abc"
    run_dir.mkdir(parents=True)
    info = save_compressed(sc, run_dir / store.PACKED)
    test = harness.load_splits("digits").test
    accuracy = evaluate(load_compressed(run_dir / store.PACKED), test,
                        torch.device("cpu"))["accuracy"]
    return {"method": "sc", "data": "digits", "seed": 0, "params": {"gamma": 0.1},
            "run_dir": str(run_dir), "storage_bytes": info.file_bytes, "test_acc": accuracy}
