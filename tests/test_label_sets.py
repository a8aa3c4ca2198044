"""The label set travels with the model (issue 13.4): a 2-class and a 7-class micro model each train from
class folders, export to an ONNX bundle that verifies, and the torch-free runtime classifies real audio
with labels from that set. Checkpoints, config.json, splits.json, metrics.json and the bundle manifest all
carry the run's ``RunConfig.data.labels``; nothing assumes the ICBHI four."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.data.metrics import evaluate
from stethoedge.runtime.audio_io import write_wav
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES
from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.run_config import RunConfig

BINARY = ("normal", "abnormal")
#: SPRSound's seven event types.
SPRSOUND_EVENTS = ("Normal", "Rhonchi", "Wheeze", "Stridor", "Coarse Crackle", "Fine Crackle", "Wheeze & Crackle")
SR = 16000


def _folders(root: Path, labels: tuple[str, ...], train_per_class: int = 3, seconds: float = 1.5) -> Path:
    """``root/{train,test}/<label>/*.wav``: class k is a tone at 150 (k + 1) Hz in noise."""
    rng = np.random.default_rng(len(labels))
    t = np.arange(int(seconds * SR)) / SR
    for split, n in (("train", train_per_class), ("test", 1)):
        for k, name in enumerate(labels):
            for i in range(n):
                audio = 0.3 * np.sin(2 * np.pi * 150 * (k + 1) * t) + 0.05 * rng.standard_normal(t.size)
                (root / split / name).mkdir(parents=True, exist_ok=True)
                write_wav(root / split / name / f"{split}-{i}.wav", audio.astype(np.float32), SR)
    return root


def _run_config(data: Path, out: Path, labels: tuple[str, ...], cache: Path) -> RunConfig:
    return RunConfig.from_dict({"out": str(out), "epochs": 1, "seed": 0, "threads": 1,
                                "data": {"root": str(data), "labels": list(labels), "cache_dir": str(cache)},
                                "model": {"preset": "micro"}, "optim": {"batch_size": 8, "optimizer": "adamw"}})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fbank-cache")


@pytest.mark.parametrize("labels", [BINARY, SPRSOUND_EVENTS], ids=["2-class", "7-class"])
def test_label_set_trains_exports_verifies_and_runs(labels: tuple[str, ...], tmp_path: Path, cache: Path,
                                                    sim_data: Path, one_torch_thread, capsys: pytest.CaptureFixture):
    from stethoedge.export.exporter import export_run
    from stethoedge.runtime.bundle import load_bundle
    from stethoedge.train.trainer import train

    n = len(labels)
    data = _folders(tmp_path / "data", labels)
    run = tmp_path / "run"
    metrics = train(_run_config(data, run, labels, cache))

    # metrics over the run's classes
    assert metrics["labels"] == list(labels)
    for split in ("val", "test"):
        m = metrics[split]
        assert np.array(m["confusion_matrix"]).shape == (n, n)
        assert list(m["per_class_recall"]) == list(labels) and list(m["auroc"]["per_class"]) == list(labels)
    assert metrics["test"]["n"] == n and metrics["val"]["n"] == n  # one test file, one validation file per class
    # config.json, splits.json and the checkpoint carry the label set; the head has one output per label
    config = json.loads((run / "config.json").read_text())
    assert config["labels"] == config["run"]["data"]["labels"] == list(labels)
    splits = json.loads((run / "splits.json").read_text())
    assert splits["labels"] == list(labels) and len(splits["class_counts"]["train"]) == n
    assert not set(splits["val"]) & set(splits["train"]) and all(s.startswith("test/") for s in splits["test"])
    ckpt = load_checkpoint(run)
    assert ckpt.labels == labels and ckpt.meta["run_config"]["data"]["labels"] == list(labels)
    assert ckpt.model(torch.zeros(1, *ckpt.spec.input_shape)).shape == (1, n)

    # export (ONNX fp32 only: fast) -> a bundle the runtime loads and self-tests
    bundle_dir = tmp_path / "bundle"
    result = export_run(run, bundle_dir, max_windows=2 * n, allow_degraded=True, formats=["onnx-fp32"])
    assert result.manifest["labels"] == list(labels) and result.manifest["output"]["shape"] == [None, n]
    art = result.manifest["artifacts"][0]
    assert art["verification"]["top1_agreement"] == 1.0 and art["status"] == "passed"
    bundle = load_bundle(bundle_dir)
    assert tuple(bundle.labels) == labels
    # the bundle records the whole RunConfig it was trained with, with no path of this machine in it
    assert bundle.manifest["source"]["run_config"]["data"]["labels"] == list(labels)
    assert RunConfig.from_dict(bundle.manifest["source"]["run_config"]).data.labels == labels
    assert str(tmp_path) not in (bundle_dir / "manifest.json").read_text()

    _bench_on_class_folders(bundle_dir, data, labels, tmp_path)
    # ICBHI annotations give the four ICBHI classes only: one line, exit 2, nothing written
    from stethoedge.cli import main

    capsys.readouterr()
    assert main(["bench", str(bundle_dir), "--data", str(sim_data), "--runs", "1",
                 "--json", str(tmp_path / "no.json")]) == 2
    err = capsys.readouterr().err
    assert "needs class folders named after it" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no.json").exists()
    _classify_real_audio(bundle_dir, labels)


def _bench_on_class_folders(bundle_dir: Path, data: Path, labels: tuple[str, ...], tmp_path: Path) -> None:
    """``stethoedge bench --data`` scores the bundle's own label set on class folders named after it."""
    from stethoedge.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", str(bundle_dir), "--data", str(data), "--data-windows", str(2 * len(labels)), "--runs", "1",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())[0]
    assert row["agreement"] == 1.0 and 0.0 <= row["score"] <= 1.0  # fp32 against itself; a Score over these labels


def _classify_real_audio(bundle_dir: Path, labels: tuple[str, ...]) -> None:
    from conftest import icbhi_sample_dir

    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource

    sample = icbhi_sample_dir()
    if sample is None:
        pytest.skip("real ICBHI sample not present: set STETHOEDGE_ICBHI_SAMPLE or place it at "
                    "../shared/data/icbhi_sample (training and export above passed)")
    wav = sample / "audio_and_txt_files" / "103_2b2_Ar_mc_LittC2SE.wav"
    clf = Classifier.open(bundle_dir)  # verifies the bundle and passes its self-test
    results = list(clf.classify(FileSource(str(wav))))
    assert results
    for r in results:
        assert r.model_label in labels and set(r.probabilities) == set(labels)
        assert abs(sum(r.probabilities.values()) - 1.0) < 1e-4


def test_icbhi_layout_with_another_label_set_is_a_clear_error(sim_data: Path, tmp_path: Path):
    from stethoedge.train.trainer import train

    with pytest.raises(DataError, match="needs class folders named after it"):
        train(_run_config(sim_data, tmp_path / "run", BINARY, tmp_path / "cache"))


def test_unknown_class_folder_names_the_label_set(tmp_path: Path, cache: Path):
    from stethoedge.train.trainer import train

    data = _folders(tmp_path / "data", BINARY, train_per_class=2, seconds=0.5)
    (data / "train" / "wheeze").mkdir()
    with pytest.raises(DataError, match="unknown class folder 'wheeze'; valid names are normal, abnormal"):
        train(_run_config(data, tmp_path / "run", BINARY, cache))


def test_metrics_default_to_the_icbhi_classes_and_take_any_label_set():
    y = np.array([0, 1, 2, 3, 0])
    four = evaluate(y, y)
    assert list(four["per_class_recall"]) == list(CLASSES) and four["specificity"] == 1.0
    seven = evaluate(np.arange(7), np.array([0, 1, 2, 3, 4, 5, 0]), labels=SPRSOUND_EVENTS)
    assert np.array(seven["confusion_matrix"]).shape == (7, 7)
    assert seven["per_class_recall"]["Wheeze & Crackle"] == 0.0 and seven["sensitivity"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="outside the 4 classes"):
        evaluate(np.arange(7), np.arange(7))


def test_checkpoint_without_run_config_loads_and_a_label_mismatch_is_named(trained_run: Path, tmp_path: Path):
    payload = torch.load(trained_run / "checkpoint.pt", weights_only=False)
    old = {**payload, "meta": {k: v for k, v in payload["meta"].items() if k != "run_config"}}
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").labels == CLASSES  # a checkpoint of the first version
    torch.save({**payload, "labels": list(BINARY)}, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="does not match its 4 model outputs"):
        load_checkpoint(tmp_path / "bad.pt")
