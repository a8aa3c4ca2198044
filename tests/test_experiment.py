"""The experiment: baseline vs a generator (Mixed-N) vs the ensemble, on the simulator, tiny."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.experiment import ExperimentConfig, comparison_table, run_experiment, summarize


def test_summary_and_table_mean_sd() -> None:
    summary = summarize({"baseline": [{"score": 0.5, "macro_f1": 0.4, "auroc": 0.6},
                                      {"score": 0.7, "macro_f1": 0.6, "auroc": float("nan")}]})
    assert summary["baseline"]["score"]["mean"] == pytest.approx(0.6)
    assert summary["baseline"]["score"]["sd"] == pytest.approx(0.1414213, rel=1e-5)
    assert summary["baseline"]["auroc"]["n"] == 1
    assert "| baseline | 0.600 +- 0.141 | 0.500 +- 0.141 | 0.600 +- 0.000 | 2 |" in comparison_table(summary)


def test_unknown_kind_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown generator kind"):
        run_experiment(ExperimentConfig(data=str(tmp_path), out=str(tmp_path / "x"), kinds=["gan9"]))


def test_experiment_end_to_end_tiny(sim_data: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = ExperimentConfig(
            data=str(sim_data), out=str(tmp_path / "exp"), kinds=["vae"], seeds=[0], preset="micro", epochs=1,
            batch_size=16, n=2, mode="per-class", n_mels=16, n_frames=32, gen_steps=2, vocoder_steps=2,
            generator_config={"vae": {"width": 1 / 16, "latent": 8, "batch_size": 8}},
            vocoder_config={"residual_channels": 4, "layers": 2, "dilation_cycle": 2, "timesteps": 3, "batch_size": 4})
        record = run_experiment(cfg)
    finally:
        torch.set_num_threads(threads)
    assert set(record["summary"]) == {"baseline", "vae", "ensemble"}
    for condition in ("baseline", "vae", "ensemble"):
        stats = record["summary"][condition]
        assert 0.0 <= stats["score"]["mean"] <= 1.0 and stats["score"]["n"] == 1
    out = tmp_path / "exp"
    table = (out / "comparison.md").read_text()
    assert "| vae |" in table and "| ensemble |" in table and "AUROC" in table
    assert json.loads((out / "experiment.json").read_text())["runs"]["vae"] == [str(out / "seed-0" / "vae")]
    synthetic = out / "seed-0" / "synthetic" / "vae" / "audio_and_txt_files"
    assert len(list(synthetic.glob("*.wav"))) == 2 * 4
    splits = json.loads((out / "seed-0" / "vae" / "splits.json").read_text())
    assert not any("Synth" in stem for stem in splits.get("test", []) + splits.get("val", []))
    assert (out / "seed-0" / "ensemble" / "checkpoint.pt").is_file()
