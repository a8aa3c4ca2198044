"""Whole training runs on simulated data (micro AST): resume equality, adapters + AFT + distillation
in one run, ensembles exported to ONNX, seeds summary."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.model import AST
from stethoedge.train.trainer import TrainConfig, train, train_seeds


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One feature cache for the module: every run after the first skips the fbank computation."""
    return str(tmp_path_factory.mktemp("fbank-cache"))


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stethoedge.train.simulator import simulate_dataset

    out = tmp_path_factory.mktemp("synthetic") / "data"
    simulate_dataset(out, n_patients=3, recordings_per_patient=1, duration_s=10.0, seed=99)
    return out


def _common(sim_data: Path, cache: str, **kw) -> dict:
    return dict(data=str(sim_data), preset="micro", epochs=2, batch_size=8, seed=0, cache_dir=cache, **kw)


def test_interrupted_run_resumes_to_identical_weights(sim_data: Path, cache: str, tmp_path: Path):
    common = _common(sim_data, cache, optimizer="sam", ema_decay=0.9)
    full = train(TrainConfig(out=str(tmp_path / "full"), **common))
    stopped = train(TrainConfig(out=str(tmp_path / "cut"), stop_after_steps=3, **common))
    assert stopped == {"stopped_at_step": 3} and not (tmp_path / "cut" / "metrics.json").exists()
    resumed = train(TrainConfig(out=str(tmp_path / "cut"), **common))
    a = torch.load(tmp_path / "full" / "checkpoint.pt")["state_dict"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resume must give the same weights"
    assert full["history"] == resumed["history"]
    with pytest.raises(DataError, match="other settings"):
        train(TrainConfig(out=str(tmp_path / "cut"), **{**common, "lr": 0.5}))


def test_lora_aft_synthetic_distillation_bf16_run(sim_data: Path, synthetic_data: Path, trained_run: Path, cache: str,
                                                  tmp_path: Path):
    out = tmp_path / "student"
    metrics = train(TrainConfig(out=str(out), **{**_common(sim_data, cache), "epochs": 1}, adapter="lora", lora_rank=2,
                                aft=True, synthetic=[str(synthetic_data)], distill_from=str(trained_run), amp="bf16",
                                optimizer="adamw", augment="specaugment"))
    splits = json.loads((out / "splits.json").read_text())
    teacher_splits = json.loads((trained_run / "splits.json").read_text())
    # synthetic cycles joined training only: validation and test are exactly the real ones
    assert splits["class_counts"]["val"] == teacher_splits["class_counts"]["val"]
    assert splits["class_counts"]["test"] == teacher_splits["class_counts"]["test"]
    assert sum(splits["class_counts"]["synthetic (train only)"]) > 0
    ckpt = load_checkpoint(out)
    assert type(ckpt.model) is AST and not any("lora" in k for k in ckpt.model.state_dict())
    delta = torch.load(out / "adapter_delta.pt")
    assert delta["adapter"]["kind"] == "lora" and all("lora_" in k or k.startswith("head.") for k in delta["state_dict"])
    assert metrics["trainable_parameters"] < metrics["parameters"]
    dist = metrics["distillation"]
    for role in ("teacher", "student"):
        assert dist[role]["parameters"] > 0 and dist[role]["gflops_per_window"] > 0 and 0 <= dist[role]["val_score"] <= 1
    for name in ("curves.csv", "curves.png", "confusion_val.png", "confusion_test.png", "config.json", "state.pt"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert "auroc" in metrics["val"] and set(metrics["val"]["auroc"]["per_class"]) == {"normal", "crackle", "wheeze", "both"}


def test_ensemble_run_averages_probabilities_and_exports_to_onnx(trained_run: Path, sim_data: Path, cache: str,
                                                                  tmp_path: Path):
    from stethoedge.train.ensemble import save_ensemble_run

    other = tmp_path / "other"
    train(TrainConfig(out=str(other), **{**_common(sim_data, cache), "epochs": 1, "seed": 5}))
    ens_dir = save_ensemble_run([trained_run, other], tmp_path / "ensemble")
    ens = load_checkpoint(ens_dir)
    members = [load_checkpoint(r) for r in (trained_run, other)]
    x = torch.randn(3, 798, 128)
    with torch.no_grad():
        got = torch.softmax(ens.model(x), -1)
        raw = x * 2 * members[0].spec.norm_std + members[0].spec.norm_mean  # back to log-mel
        want = torch.stack([torch.softmax(m.model((raw - m.spec.norm_mean) / (2 * m.spec.norm_std)), -1)
                            for m in members]).mean(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert ens.meta["ensemble"] == 2 and (ens_dir / "splits.json").is_file()
    ort = pytest.importorskip("onnxruntime")
    from stethoedge.export.onnx_export import export_onnx

    path = export_onnx(ens.model, tmp_path / "ens.onnx", (798, 128))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(np.exp(onnx_out), want.numpy(), atol=1e-4)


def test_seeds_report_mean_and_sd(sim_data: Path, cache: str, tmp_path: Path):
    summary = train_seeds(TrainConfig(out=str(tmp_path / "seeds"), **{**_common(sim_data, cache), "epochs": 1}), [1, 2])
    scores = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "metrics.json").read_text())["val"]["score"] for s in (1, 2)]
    assert summary["val"]["score"]["mean"] == pytest.approx(np.mean(scores))
    assert summary["val"]["score"]["sd"] == pytest.approx(np.std(scores, ddof=1))
    assert json.loads((tmp_path / "seeds" / "summary.json").read_text())["seeds"] == [1, 2]


def test_killed_subprocess_resumes_to_the_uninterrupted_result(sim_data: Path, cache: str, tmp_path: Path):
    """SIGKILL a real `stethoedge train` process mid-run, run it again: same weights as a run never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    common = {**_common(sim_data, cache, optimizer="sam", threads=1, checkpoint_every=1), "batch_size": 2}
    threads = torch.get_num_threads()
    try:
        reference = train(TrainConfig(out=str(tmp_path / "ref"), **common))
    finally:
        torch.set_num_threads(threads)
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "stethoedge", "train", "--data", str(sim_data), "--out", str(run), "--preset", "micro",
            "--epochs", "2", "--batch-size", "2", "--seed", "0", "--cache", cache, "--optimizer", "sam", "--threads", "1",
            "--checkpoint-every", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        state = run / "state.pt"
        if state.is_file():
            try:
                s = torch.load(state, weights_only=False)
            except Exception:  # renamed in between: read the next one
                continue
            if s["global_step"] >= 4 and s["step_in_epoch"] > 0:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = s["global_step"]
                break
        time.sleep(0.01)
    if proc.poll() is None:
        proc.kill()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert not (run / "metrics.json").exists()
    try:
        resumed = train(TrainConfig(out=str(run), **common))
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "ref" / "checkpoint.pt")["state_dict"]
    b = torch.load(run / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {killed_at}; resumed weights differ"
    assert resumed["history"] == reference["history"]


def test_real_icbhi_sample_follows_the_official_split(icbhi_dir: Path, cache: str, tmp_path: Path):
    from stethoedge.train.icbhi import list_recordings

    metrics = train(TrainConfig(data=str(icbhi_dir), out=str(tmp_path / "run"), preset="micro", epochs=1, batch_size=8,
                                cache_dir=cache, optimizer="adamw"))
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    official = {r.stem: r.split for r in list_recordings(icbhi_dir)}
    assert set(splits["test"]) == {s for s, sp in official.items() if sp == "test"}
    assert all(official[s] == "train" for s in splits["train"] + splits["val"]), "validation comes from TRAIN only"
    patient = lambda stem: stem.split("_")[0]  # noqa: E731
    assert not {patient(s) for s in splits["val"]} & {patient(s) for s in splits["train"]}
    assert metrics["test"]["n"] == sum(splits["class_counts"]["test"])
