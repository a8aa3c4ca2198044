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
    assert manifest["source"]["verification_set"]["split"] == "test"
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
