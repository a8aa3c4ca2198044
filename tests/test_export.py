"""Export: real ONNX and INT8 artifacts, verified against PyTorch; the gate can fail."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from stethoedge.export.verify import Gate, pick_selftest, verify_artifact
from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.errors import StethoedgeError
from stethoedge.train.checkpoint import load_checkpoint


def test_onnx_artifacts_agree_with_pytorch(bundle_dir: Path, trained_run: Path):
    bundle = load_bundle(bundle_dir)
    model = load_checkpoint(trained_run).model
    with torch.no_grad():
        reference = model(torch.from_numpy(bundle.selftest.features)).numpy()
    for name, tol in (("onnx-fp32", 1e-4), ("onnx-int8-dynamic", 0.5)):
        art = bundle.artifacts[name]
        session = ort.InferenceSession(str(bundle.path_of(art)), providers=["CPUExecutionProvider"])
        got = session.run(None, {"features": bundle.selftest.features})[0]
        assert np.max(np.abs(got - reference)) < tol, name
        v = art.verification
        assert v["windows"] > 0 and 0.0 <= v["top1_agreement"] <= 1.0
    fp32 = bundle.artifacts["onnx-fp32"].verification
    assert fp32["top1_agreement"] == 1.0 and fp32["max_logit_diff"] < 1e-4 and fp32["passed"]


def test_int8_is_really_quantized(bundle_dir: Path):
    bundle = load_bundle(bundle_dir)
    import onnx

    ops = {n.op_type for n in onnx.load(str(bundle_dir / "model.int8.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops
    assert bundle.artifacts["onnx-int8-dynamic"].size_bytes < bundle.artifacts["onnx-fp32"].size_bytes


def test_manifest_records_versions_spec_and_provenance(bundle_dir: Path):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert {"torch", "onnxruntime", "onnx", "numpy"} <= set(manifest["versions"])
    assert manifest["feature_spec"]["n_mels"] == 128
    assert manifest["source"]["verification_set"]["split"] == "val"
    assert (bundle_dir / "export_report.md").read_text().count("| onnx-") == 2


def test_gate_fails_a_broken_artifact():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((40, 5, 3)).astype(np.float32)
    reference = rng.standard_normal((40, 4))
    labels = reference.argmax(1)
    good = verify_artifact(lambda x: reference[: len(x)] if len(x) == 40 else None, feats, reference, labels, batch_size=40)
    assert good["passed"] and good["top1_agreement"] == 1.0
    constant = verify_artifact(lambda x: np.zeros((len(x), 4), np.float32), feats, reference, labels)
    assert not constant["passed"] and constant["top1_agreement"] < 0.98
    nan = verify_artifact(lambda x: np.full((len(x), 4), np.nan, np.float32), feats, reference, None)
    assert not nan["passed"]
    strict = verify_artifact(lambda x: reference[: len(x)], feats[:1], reference[:1], None, Gate(1.0, 0.0), batch_size=1)
    assert strict["passed"]


def test_selftest_windows_are_confident_ones():
    logits = np.array([[0.1, 0.0, 0, 0], [5, 0, 0, 0], [0, 3, 0, 0], [0, 0.05, 0, 0]], dtype=float)
    assert list(pick_selftest(logits, 2)) == [1, 2]


def test_export_refuses_to_overwrite_without_force(trained_run: Path, bundle_dir: Path):
    from stethoedge.export.exporter import export_run

    with pytest.raises(StethoedgeError, match="already exists"):
        export_run(trained_run, bundle_dir, max_windows=8, allow_degraded=True)
    assert load_bundle(bundle_dir), "the existing bundle must be left intact"
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".")], "no temporary directory left behind"


def _patients(stems) -> set[str]:
    return {str(s).split("_")[0] for s in stems}


def test_gate_runs_on_validation_patients_and_test_is_only_reported(bundle_dir: Path, trained_run: Path):
    """Selection on the test split would make the reported test figures optimistic (issue 13.5)."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    splits = json.loads((trained_run / "splits.json").read_text())
    gated, reported = manifest["source"]["verification_set"], manifest["source"]["report_set"]
    assert manifest["gate"]["gated_on"] == "val" and gated["split"] == "val" and reported["split"] == "test"
    assert gated["recordings"] and set(gated["recordings"]) <= set(splits["val"])
    assert reported["recordings"] and set(reported["recordings"]) <= set(splits["test"])
    assert not _patients(gated["recordings"]) & _patients(splits["test"]), "gate windows from test patients"
    assert not _patients(gated["recordings"]) & _patients(splits["train"]), "gate windows from trained-on patients"
    for art in manifest["artifacts"]:
        v = art["verification"]
        assert v["gated_on"] == "val" and v["windows"] > 0
        t = v["report_test"]
        assert t["split"] == "test" and t["gates"] is False and t["windows"] > 0 and "passed" not in t
        assert 0.0 <= t["top1_agreement"] <= 1.0 and "score_delta" in t
    assert "test agreement" in (bundle_dir / "export_report.md").read_text()


def test_test_split_figures_never_choose_the_default_artifact(trained_run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """Rigged measurements: int8 is hopeless on TEST only, fp32 on VALIDATION only. Gating on test
    (the old behaviour) would fail int8 and pass fp32; gating on validation does the opposite."""
    from stethoedge.export import exporter

    seen: dict[str, object] = {}
    real_split, real_verify = exporter.split_windows, exporter.verify_artifact

    def spy_split(run, spec, data, split, max_windows, seed):
        seen[split] = ws = real_split(run, spec, data, split, max_windows, seed)
        return ws

    def rigged(run_fn, features, reference, labels=None, gate=Gate(), batch_size=16):
        result = real_verify(run_fn, features, reference, labels, gate, batch_size)
        file = run_fn.__self__.file
        on = "val" if labels is seen["val"].labels else "test" if labels is seen["test"].labels else "?"
        if (file, on) in {("model.int8.onnx", "test"), ("model.onnx", "val")}:
            result.update(top1_agreement=0.0, score_delta=-1.0, passed=False)
        return result

    monkeypatch.setattr(exporter, "split_windows", spy_split)
    monkeypatch.setattr(exporter, "verify_artifact", rigged)
    result = exporter.export_run(trained_run, tmp_path / "b", max_windows=8, report_windows=8, allow_degraded=True,
                                 formats=["onnx-fp32", "onnx-int8-dynamic"])
    arts = {a["name"]: a for a in result.manifest["artifacts"]}
    assert arts["onnx-int8-dynamic"]["status"] == "passed"
    assert arts["onnx-int8-dynamic"]["verification"]["report_test"]["top1_agreement"] == 0.0  # reported, not used
    assert arts["onnx-fp32"]["status"] == "failed-verification"
    assert arts["onnx-fp32"]["verification"]["report_test"]["top1_agreement"] == 1.0
    assert result.manifest["default_artifact"] == "onnx-int8-dynamic"


def test_export_refuses_a_run_without_validation_recordings(trained_run: Path, tmp_path: Path):
    """No silent fallback to gating on the test split."""
    import shutil

    from stethoedge.export.exporter import export_run
    from stethoedge.runtime.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    splits = json.loads((run / "splits.json").read_text())
    (run / "splits.json").write_text(json.dumps({**splits, "val": []}))
    with pytest.raises(DataError, match="validation recordings") as info:
        export_run(run, tmp_path / "b", max_windows=8, allow_degraded=True, formats=["onnx-fp32"])
    assert "\n" not in str(info.value)
    assert not (tmp_path / "b").exists()
