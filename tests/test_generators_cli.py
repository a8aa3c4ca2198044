"""``stethoedge generate fit|sample|eval|mixed`` on the simulator, tiny sizes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stethoedge.cli import main
from stethoedge.train.icbhi import list_recordings

TINY = ["--n-mels", "16", "--n-frames", "32", "--steps", "3", "--batch-size", "8"]


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see conftest)."""


@pytest.fixture(scope="module")
def fitted(sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gen")
    vae, voc = out / "vae.pt", out / "voc.pt"
    assert main(["generate", "fit", "--kind", "vae", "--data", str(sim_data), "--out", str(vae), *TINY,
                 "--width", "0.0625", "--set", "latent=8", "--classes", "crackle,both"]) == 0
    assert main(["generate", "fit", "--kind", "diffwave", "--data", str(sim_data), "--out", str(voc), *TINY,
                 "--set", "residual_channels=4", "--set", "layers=2", "--set", "dilation_cycle=2",
                 "--set", "timesteps=3"]) == 0
    return {"vae": vae, "voc": voc, "dir": out}


def test_fit_resumes_to_more_steps(fitted: dict[str, Path], sim_data: Path) -> None:
    from stethoedge.train.generators import load

    assert load(fitted["vae"]).step == 3 and load(fitted["vae"]).classes == [1, 3]
    more = fitted["dir"] / "vae_more.pt"
    more.write_bytes(fitted["vae"].read_bytes())
    assert main(["generate", "fit", "--kind", "vae", "--data", str(sim_data), "--out", str(more), *TINY[:4],
                 "--steps", "5", "--width", "0.0625", "--set", "latent=8", "--classes", "crackle,both"]) == 0
    assert load(more).step == 5


def test_sample_mels_and_waveforms(fitted: dict[str, Path], sim_data: Path, tmp_path: Path) -> None:
    assert main(["generate", "sample", "--model", str(fitted["vae"]), "--class", "crackle", "--n", "3",
                 "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["mels"].shape == (3, 32, 16) and z["labels"].tolist() == [1, 1, 1]
    assert main(["generate", "sample", "--model", str(fitted["vae"]), "--vocoder", str(fitted["voc"]), "--class",
                 "both", "--n", "2", "--out", str(tmp_path / "wav")]) == 0
    assert len(list_recordings(tmp_path / "wav")) == 2
    assert main(["generate", "sample", "--model", str(fitted["voc"]), "--data", str(sim_data), "--class", "crackle",
                 "--n", "2", "--out", str(tmp_path / "resyn")]) == 0
    assert len(list((tmp_path / "resyn" / "audio_and_txt_files").glob("*.wav"))) == 2


def test_eval_writes_table_and_grid(fitted: dict[str, Path], sim_data: Path, trained_run: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "eval", "--model", str(fitted["vae"]), "--data", str(sim_data), "--run", str(trained_run),
                 "--n", "4", "--tstr-epochs", "1", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "| crackle |" in out and "| both |" in out and "embedding space: classifier" in out
    assert (tmp_path / "ev" / "grid.png").stat().st_size > 1000
    assert (tmp_path / "ev" / "quality.json").is_file()


def test_mixed_and_typed_errors(fitted: dict[str, Path], sim_data: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    assert main(["generate", "mixed", "--model", str(fitted["vae"]), "--vocoder", str(fitted["voc"]), "--data",
                 str(sim_data), "--n", "2", "--mode", "per-class", "--out", str(tmp_path / "mx")]) == 0
    assert sorted(r.info.patient for r in list_recordings(tmp_path / "mx")) == [9001, 9001, 9003, 9003]
    capsys.readouterr()
    assert main(["generate", "sample", "--model", str(fitted["vae"]), "--class", "normal", "--n", "1",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert capsys.readouterr().err.strip() == "error: vae: trained on ['crackle', 'both'] only, cannot sample 'normal'"
    assert main(["generate", "sample", "--model", str(tmp_path / "missing.pt"), "--class", "normal",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "no generator checkpoint" in capsys.readouterr().err
    assert main(["generate", "mixed", "--model", str(fitted["vae"]), "--data", str(sim_data), "--n", "2",
                 "--out", str(tmp_path / "mx2")]) == 2
    assert "vocoder is needed" in capsys.readouterr().err
