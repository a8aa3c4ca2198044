"""The real-data recipe end to end on a few real windows: table, trunk cache, tail training, resume, export, runtime."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from stethoedge.runtime.errors import DataError
from stethoedge.train.efficientat import MNConfig, MobileNetV3Audio

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPR = SHARED / "data" / "sprsound"
ICBHI = SHARED / "data" / "icbhi_train16k"

pytestmark = pytest.mark.skipif(not (SPR.is_dir() and ICBHI.is_dir()),
                                reason=f"real data not found at {SPR} and {ICBHI} (../shared beside the repository)")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random AudioSet-shaped mn04 weights (the real file is not needed to test the recipe's mechanics)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "mn04.pt"
    torch.save(MobileNetV3Audio(MNConfig(n_classes=527)).state_dict(), path)
    return path


def _recipe(out: Path, weights: Path, cache: Path, **kw):
    from stethoedge.train.edge_learner import EdgeRecipe

    base = dict(out=str(out), weights=str(weights), sprsound=str(SPR), icbhi=str(ICBHI), cache_dir=str(cache),
                max_per_source=6, views=1, epochs=2, samples_per_epoch=32, batch_size=8, threads=1)
    return EdgeRecipe(**(base | kw))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> tuple[Path, dict]:
    from stethoedge.train.edge_learner import run_recipe

    root = tmp_path_factory.mktemp("edge")
    metrics = run_recipe(_recipe(root / "run", weights, root / "cache"))
    return root, metrics


def test_recipe_writes_a_loadable_run_with_baselines(run: tuple[Path, dict]) -> None:
    from stethoedge.train.checkpoint import load_checkpoint

    root, metrics = run
    ckpt = load_checkpoint(root / "run")
    assert isinstance(ckpt.model, MobileNetV3Audio) and ckpt.spec.kind == "efficientat-mel"
    assert ckpt.meta["trained_on"]["pretrained"].startswith("EfficientAT")
    assert 1 <= metrics["best_epoch"] <= 2 and len(metrics["history"]) == 2
    for key in ("val/sprsound", "test-inter/sprsound", "eval/icbhi"):
        rows = metrics["evaluation"][key]
        assert set(rows) == {"always-normal", "mn04 frozen + logistic probe", "mn04 fine-tuned tail"}
        normal = rows["always-normal"]["metrics"]
        assert normal["binary_sp"] == 1.0 or np.isnan(normal["binary_sp"])  # NaN: no normal windows
        assert normal["binary_se"] == 0.0 or np.isnan(normal["binary_se"])
    assert metrics["shipped"] in ("mn04 fine-tuned tail", "mn04 frozen + logistic probe")
    assert ckpt.model.cfg.head == ("mlp" if metrics["shipped"] == "mn04 fine-tuned tail" else "linear")
    splits = json.loads((root / "run" / "splits.json").read_text())
    assert splits["test"] and not set(splits["test"]) & set(splits["train"])


def test_roles_hold_patients_apart(run: tuple[Path, dict]) -> None:
    data = np.load(run[0] / "run" / "predictions.npz")
    patients = {role: set(data["patient"][data["role"] == role].tolist()) for role in set(data["role"].tolist())}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients.get("eval", set())
    assert not patients["train"] & patients["test-inter"]


def test_assembled_model_equals_tail_on_cached_trunk(run: tuple[Path, dict]) -> None:
    """The checkpoint (one network on features) gives the logits the recipe evaluated (trunk cache + tail)."""
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.sources import SourceConfig, build_table

    root, metrics = run
    r = metrics["recipe"]
    ckpt = load_checkpoint(root / "run")
    cfg = SourceConfig(sprsound=r["sprsound"], icbhi=r["icbhi"], max_per_source=6)
    table = build_table(cfg, ckpt.spec, r["cache_dir"])
    with torch.no_grad():
        logits = ckpt.model(torch.from_numpy(np.asarray(table.features[:8], dtype=np.float32))).numpy()
    saved = np.load(root / "run" / "predictions.npz")
    saved = saved["model_logits" if metrics["shipped"] == "mn04 fine-tuned tail" else "probe_logits"][:8]
    np.testing.assert_allclose(logits, saved, atol=1e-4)


def test_resume_continues_and_changed_settings_refuse(run: tuple[Path, dict], weights: Path) -> None:
    from stethoedge.train.edge_learner import run_recipe

    root, metrics = run
    state = torch.load(root / "run" / "state.pt", map_location="cpu", weights_only=False)
    assert list(state) == ["tail", "optimizer", "scheduler", "gen", "history", "best", "epoch", "recipe"], \
        "state.pt's keys are the on-disk format an interrupted run resumes from"
    assert state["epoch"] == 2 and state["history"] == metrics["history"]
    again = run_recipe(_recipe(root / "run", weights, root / "cache"))  # state.pt: nothing left to train
    assert json.dumps(again["history"]) == json.dumps(metrics["history"])  # NaN-safe comparison
    with pytest.raises(DataError, match="other settings"):
        run_recipe(_recipe(root / "run", weights, root / "cache", lr=0.5))


def test_export_and_runtime_agree_with_torch(run: tuple[Path, dict], tmp_path: Path) -> None:
    from stethoedge.export.exporter import export_run
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.padding import cyclic_pad
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.features_torch import compute_features_torch

    root, _ = run
    result = export_run(root / "run", tmp_path / "bundle", formats=["onnx-fp32"], max_windows=8,
                        allow_degraded=True)
    manifest = result.manifest
    assert manifest["model"]["architecture"] == "efficientat-mn"
    assert manifest["feature_spec"]["kind"] == "efficientat-mel"
    assert not manifest["source"]["run"].startswith("/"), "the manifest must not carry the build machine's paths"
    splits = json.loads((root / "run" / "splits.json").read_text())  # the gate: ICBHI validation patients only
    assert manifest["gate"]["gated_on"] == "val"
    assert set(manifest["source"]["verification_set"]["recordings"]) <= set(splits["val"])
    assert set(manifest["source"]["report_set"]["recordings"]) <= set(splits["test"])
    clf = Classifier.open(tmp_path / "bundle")
    rng = np.random.default_rng(0)
    audio = cyclic_pad((0.1 * rng.standard_normal(40000)).astype(np.float32), clf.spec.window_samples)
    ckpt = load_checkpoint(root / "run")
    with torch.no_grad():
        expected = ckpt.model(compute_features_torch(torch.from_numpy(audio)[None], ckpt.spec)).numpy()[0]
    np.testing.assert_allclose(clf.logits(audio), expected, atol=1e-3)


def test_probe_head_is_the_linear_probe_on_the_pooled_embedding() -> None:
    from stethoedge.train.edge_learner import assemble_probe

    torch.manual_seed(0)
    backbone = MobileNetV3Audio(MNConfig()).eval()
    probe = torch.nn.Linear(backbone.cfg.last_conv_channels, 4)
    model = assemble_probe(backbone, probe)
    x = torch.randn(2, 798, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(x), probe(backbone.embed(x)))


def test_unknown_recipe_key_is_a_clear_error() -> None:
    from stethoedge.train.edge_learner import EdgeRecipe

    with pytest.raises(DataError, match="unknown recipe option"):
        EdgeRecipe.from_dict({"out": "x", "weights": "y", "learning_rate": 1})


def test_random_init_baseline_trains_the_same_network_from_scratch(tmp_path: Path, weights: Path) -> None:
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.edge_learner import run_recipe

    metrics = run_recipe(_recipe(tmp_path / "run", weights, tmp_path / "cache", init="random", tune_from=14,
                                 views=0, epochs=1, l2sp=0.0))
    assert metrics["shipped"] == "mn04 from random init"
    assert metrics["pretrained"] == {"source": "random initialisation"}
    assert set(metrics["evaluation"]["test-inter/sprsound"]) == {"always-normal", "mn04 from random init"}
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.meta["trained_on"]["pretrained"] is None
    assert not any(p.name.startswith("trunk14-mn0.4-clean") for p in (tmp_path / "cache").rglob("*.npy")), \
        "a random trunk must not share the pretrained trunk's cache file"


def test_source_adversarial_head_trains_but_is_never_exported(tmp_path: Path, weights: Path) -> None:
    from stethoedge.train.checkpoint import load_checkpoint
    from stethoedge.train.edge_learner import run_recipe

    run_recipe(_recipe(tmp_path / "run", weights, tmp_path / "cache", aft_lambda=0.2, tune_from=14, views=0,
                       epochs=1))
    state = torch.load(tmp_path / "run" / "state.pt", map_location="cpu", weights_only=False)
    domain = [k for k in state["tail"] if k.startswith("domain.")]
    assert domain and state["tail"]["domain.net.2.weight"].shape[0] == 2  # one logit per source
    assert not any("domain" in k for k in load_checkpoint(tmp_path / "run").model.state_dict())
