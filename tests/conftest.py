"""Shared fixtures: the real ICBHI sample (skipped with a reason when absent) and one tiny
trained-and-exported model built once per session from simulated data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def icbhi_sample_dir() -> Path | None:
    """The shared ICBHI sample: $STETHOEDGE_ICBHI_SAMPLE or ../shared/data/icbhi_sample."""
    env = os.environ.get("STETHOEDGE_ICBHI_SAMPLE")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "icbhi_sample"
    return path if (path / "audio_and_txt_files").is_dir() else None


@pytest.fixture(scope="session")
def icbhi_dir() -> Path:
    path = icbhi_sample_dir()
    if path is None:
        pytest.skip("real ICBHI sample not present: set STETHOEDGE_ICBHI_SAMPLE or place it at ../shared/data/icbhi_sample")
    return path


@pytest.fixture(scope="session")
def sim_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated ICBHI-layout dataset (8 patients x 2 recordings x 15 s)."""
    from stethoedge.train.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("sim") / "data"
    simulate_dataset(out, n_patients=8, recordings_per_patient=2, duration_s=15.0, seed=7)
    return out


@pytest.fixture(scope="session")
def trained_run(sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The micro AST trained for 2 epochs with SAM on ``sim_data``."""
    from stethoedge.train.trainer import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data=str(sim_data), out=str(run), preset="micro", epochs=2, batch_size=8, seed=0))
    return run


@pytest.fixture(scope="session")
def bundle_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``trained_run`` exported to a verified bundle (the two cheap ONNX artifacts; tests/test_export_formats.py
    builds every format once for itself)."""
    from stethoedge.export.exporter import export_run

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_run(trained_run, out, max_windows=24, allow_degraded=True, formats=["onnx-fp32", "onnx-int8-dynamic"])
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one torch thread (and leave the other core to the rest of CI)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
