"""The experiment: baseline vs a generator (Mixed-N) vs the ensemble, on the simulator, tiny."""
from __future__ import annotations

import json
import re
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


#: docs/GENERATIVE.md's small CPU configuration ("A small run on a 2-core CPU"), at micro sizes: the same
#: options, smaller numbers.
SMALL_CPU_FLAGS = ["--kinds", "vae", "--seeds", "0", "--preset", "micro", "--epochs", "1", "--batch-size", "8",
                   "--n", "2", "--mode", "per-class", "--n-mels", "16", "--n-frames", "32", "--width", "0.0625",
                   "--gen-steps", "2", "--vocoder-steps", "3", "--set", "vae.latent=8", "--set", "vae.batch_size=8",
                   "--set", "diffwave.layers=2", "--set", "diffwave.dilation_cycle=2",
                   "--set", "diffwave.residual_channels=4", "--set", "diffwave.batch_size=4",
                   "--set", "diffwave.timesteps=3", "--threads", "1"]


def test_small_cpu_configuration_shows_progress_and_honours_sizes(sim_data: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture,
                                                                  one_torch_thread: None) -> None:
    from stethoedge.cli import main
    from stethoedge.train.generators import load

    out = tmp_path / "exp"
    assert main(["experiment", "--data", str(sim_data), "--out", str(out), *SMALL_CPU_FLAGS]) == 0
    captured = capsys.readouterr()
    err = captured.err.replace("\r", "\n")
    # the sizes, stated before any work; then numbered stages with elapsed time and an estimate of what is left
    assert "experiment: 1 seed(s) x (baseline + vae + ensemble): 6 stages" in err
    assert "vocoder diffwave 3 steps (width 0.0625, batch_size 4, channels 4, layers 2, timesteps 3" in err
    assert "vae 2 steps (width 0.0625, batch_size 8, latent 8)" in err
    for k, stage in enumerate(["train the baseline (1 epoch(s))", "fit the diffwave vocoder (3 steps)",
                               "fit vae (2 steps)", "synthesise", "train vae (1 epoch(s))", "evaluate the ensemble"], 1):
        assert re.search(rf"experiment \[{k}/6\] \d\d:\d\d elapsed, (\?|~\d\d:\d\d) left: seed 0: "
                         + re.escape(stage), err), stage
    assert "experiment done: 6 stages in" in err
    # progress bars (done/total, elapsed<ETA) of every long loop, on stderr although it is not a terminal
    for bar in (r"fit diffwave: 100%\S* 3/3 \[", r"fit vae: 100%\S* 2/2 \[", r"vocode \d+: 100%",
                r"epoch 1/1: 100%\S* \d+/\d+ \[\d\d:\d\d<\d\d:\d\d"):
        assert re.search(bar, err), bar
    assert "| vae |" in captured.out
    # the sizes were honoured, not replaced by hidden defaults
    vocoder = load(out / "seed-0" / "generators" / "diffwave.pt")
    assert vocoder.step == 3 and vocoder.config.timesteps == 3 and vocoder.config.batch_size == 4
    assert (vocoder.config.layers, vocoder.config.residual_channels, vocoder.config.n_mels) == (2, 4, 16)
    assert len(vocoder.net.layers) == 2
    vae = load(out / "seed-0" / "generators" / "vae.pt")
    assert vae.step == 2 and vae.config.latent == 8 and vae.config.width == 0.0625 and vae.config.n_frames == 32
    # Mixed-N: N per class the generators saw (a class without training cycles is left out, not an error)
    synthetic = json.loads((out / "seed-0" / "synthetic" / "vae" / "synthetic.json").read_text())
    assert set(synthetic["class_counts"].values()) == {2} and synthetic["generator_step"] == 2
    assert json.loads((out / "seed-0" / "baseline" / "config.json").read_text())["run"]["epochs"] == 1


@pytest.mark.parametrize("flags, message", [
    (["--set", "latent=8"], "expected KIND.KEY=VALUE"),
    (["--set", "ddpm.latent=8"], "ddpm is not in --kinds"),
    (["--set", "vae.no_such_field=1"], "vae: bad configuration"),
    (["--n-mels", "20"], "n_mels 20 must be divisible by"),
    (["--seeds", "0,x"], "--seeds '0,x': expected comma-separated integers"),
])
def test_bad_sizes_are_refused_before_any_training(sim_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   flags: list[str], message: str) -> None:
    from stethoedge.cli import main

    out = tmp_path / "exp"
    assert main(["experiment", "--data", str(sim_data), "--out", str(out), "--kinds", "vae", "--seeds", "0",
                 *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (out / "seed-0").exists()  # refused before the baseline started
