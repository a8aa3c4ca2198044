"""Mixed-N: class plans, generator -> vocoder -> ICBHI-layout directory the training loader reads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.train.generators import MelSet, create
from stethoedge.train.icbhi import list_recordings, load_cycles, parse_annotation
from stethoedge.train.mixed import plan_counts, write_icbhi_dir, write_mixed_dataset


def test_plan_counts_modes() -> None:
    counts = [100, 30, 20, 5]
    assert plan_counts(counts, 10) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert plan_counts(counts, 10, "minority") == {1: 10, 2: 10, 3: 10}
    assert plan_counts(counts, 0, "balance") == {1: 70, 2: 80, 3: 95}
    assert plan_counts(counts, 50, "balance") == {1: 50, 2: 50, 3: 50}
    assert plan_counts(counts, 10, "minority", classes=[0, 3]) == {3: 10}
    with pytest.raises(DataError, match="mode"):
        plan_counts(counts, 10, "more")


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def tiny_pair() -> tuple:
    spec = FeatureSpec(n_mels=16)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(16) % 4
    data = MelSet(torch.randn(16, 32, 16, generator=g), labels, spec, 0.1 * torch.randn(16, 32 * 160, generator=g))
    gen = create("vae", n_mels=16, n_frames=32, width=1 / 16, latent=8, batch_size=8)
    gen.fit(data, steps=2, progress=False)
    voc = create("diffwave", n_mels=16, n_frames=32, residual_channels=8, layers=2, dilation_cycle=2, timesteps=4)
    voc.fit(data, steps=2, progress=False)
    return gen, voc, data


def test_mixed_dataset_reads_back_as_icbhi(tiny_pair: tuple, tmp_path: Path) -> None:
    gen, voc, _ = tiny_pair
    out = write_mixed_dataset(tmp_path / "mixed", gen, {1: 3, 3: 2}, vocoder=voc, seed=1)
    recs = list_recordings(out)
    assert len(recs) == 5 and all(r.split == "train" for r in recs)
    labels = sorted(label for r in recs for _, label in load_cycles(r, 16000))
    assert labels == [1, 1, 1, 3, 3]
    cycle = parse_annotation(recs[0].annotation_path)[0]
    assert cycle.start_s == 0.0 and abs(cycle.end_s - 32 * 160 / 16000) < 1e-3
    audio, _ = load_cycles(recs[0], 16000)[0]
    assert audio.shape == (32 * 160,) and np.isfinite(audio).all()
    assert (out / "synthetic.json").is_file() and not list(tmp_path.glob(".*"))
    with pytest.raises(DataError, match="already exists"):
        write_mixed_dataset(out, gen, {1: 1}, vocoder=voc)
    write_mixed_dataset(out, gen, {2: 1}, vocoder=voc, overwrite=True)
    assert [r.stem for r in list_recordings(out)] == ["9002_1_Tc_sc_SynthVae"]


def test_vocoder_resynthesis_of_real_minority_mels(tiny_pair: tuple, tmp_path: Path) -> None:
    _, voc, data = tiny_pair
    out = write_mixed_dataset(tmp_path / "resyn", voc, {3: 2}, source=data)
    assert len(list_recordings(out)) == 2
    with pytest.raises(DataError, match="vocoder is needed"):
        write_mixed_dataset(tmp_path / "x", tiny_pair[0], {1: 1})


def test_synthetic_directory_joins_training_only(tiny_pair: tuple, tmp_path: Path) -> None:
    """The training side's loader takes every synthetic cycle, labelled, for the training split."""
    from stethoedge.train.dataset import load_synthetic

    out = write_icbhi_dir(tmp_path / "w", {0: np.zeros((1, 4000), np.float32) + 0.01, 2: np.full((2, 4000), 0.02,
                                                                                                np.float32)}, 16000)
    windows = load_synthetic([str(out)], FeatureSpec())
    assert sorted(windows.labels.tolist()) == [0, 2, 2]
