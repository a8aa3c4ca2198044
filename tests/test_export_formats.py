"""Every format this machine can build, exported ONCE from the micro model and run by its real runtime.

ONNX (ONNX Runtime) fp32 / fp16 / int8-dynamic / int8-static, TFLite (ai-edge-litert) fp32 / fp16
/ int8-dynamic / int8; the gate passes on the healthy model and fails a deliberately broken
artifact (onnxruntime's default static QDQ over every op, attention softmax included).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from stethoedge.export.formats import KINDS, buildable_here, resolve_formats
from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.errors import StethoedgeError
from stethoedge.train.checkpoint import load_checkpoint

pytest.importorskip("litert_torch", reason="litert-torch (pip install 'stethoedge[export]') builds the TFLite artifacts")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert runs the TFLite artifacts")

ALL = [n for n in KINDS if KINDS[n].format in ("onnx", "tflite")]


@pytest.fixture(scope="module")
def full_bundle(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stethoedge.export.exporter import export_run

    out = tmp_path_factory.mktemp("full") / "bundle"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_run(trained_run, out, max_windows=24, formats="all", calibration_windows=24,
                   bundle_calibration_windows=8, allow_degraded=True)
    assert any("representative set has only" in str(w.message) for w in caught), "no warning for a small set"
    return out


def test_every_buildable_format_is_exported(full_bundle: Path):
    assert buildable_here()[: len(ALL)] == ALL
    manifest = json.loads((full_bundle / "manifest.json").read_text())
    assert [a["name"] for a in manifest["artifacts"]] == ALL, manifest["failed_artifacts"]
    assert manifest["failed_artifacts"] == []
    for art in manifest["artifacts"]:
        assert {"file", "format", "precision", "sha256", "status", "tolerance", "verification"} <= set(art)
        assert (full_bundle / art["file"]).stat().st_size == art["size_bytes"]
    assert {p.name for p in full_bundle.iterdir()} == {a["file"] for a in manifest["artifacts"]} | {
        "manifest.json", "selftest.npz", "calibration.npz", "export_report.md"}


def test_each_artifact_runs_in_its_real_runtime_and_matches_pytorch(full_bundle: Path, trained_run: Path):
    bundle = load_bundle(full_bundle)
    model = load_checkpoint(trained_run).model
    with torch.no_grad():
        reference = model(torch.from_numpy(bundle.selftest.features)).numpy()
    bounds = {"fp32": 1e-4, "fp16": 2e-2, "int8-dynamic": 0.1, "int8-static": 0.2, "int8": 0.2}
    for name, art in bundle.artifacts.items():
        backend = open_backend(bundle, name, allow_failed=True)  # runs the start-up self-test too
        assert backend.name == {"onnx": "onnxruntime", "tflite": "litert"}[art.format]
        got = backend.run(bundle.selftest.features)
        assert got.dtype == np.float32 and got.shape == reference.shape
        assert np.max(np.abs(got - reference)) < bounds[art.precision], name
        v = art.verification
        # the gate's verdict follows its numbers (the micro test model is barely trained, so its
        # logits nearly tie and an INT8 rounding of 1e-3 can flip a window; float ones must pass)
        assert (art.status == "passed") == (v["top1_agreement"] >= 0.98 and v["score_delta"] >= -0.01
                                            and v["selftest_top1_ok"]), (name, v)
        if not art.precision.startswith("int8"):
            assert art.status == "passed" and v["top1_agreement"] == 1.0, (name, v)


def test_artifacts_are_really_of_their_precision(full_bundle: Path):
    from ai_edge_litert.interpreter import Interpreter

    ops = lambda f: {n.op_type for n in onnx.load(str(full_bundle / f)).graph.node}  # noqa: E731
    assert "QuantizeLinear" in ops("model.int8-static.onnx")
    assert ops("model.int8.onnx") & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}
    fp16 = onnx.load(str(full_bundle / "model.fp16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in fp16.graph.initializer)
    static = onnx.load(str(full_bundle / "model.int8-static.onnx"))
    softmax_fed_qdq = [n for n in static.graph.node if n.op_type == "QuantizeLinear"
                       and any(m.op_type == "Softmax" and m.output[0] == n.input[0] for m in static.graph.node)]
    assert not softmax_fed_qdq, "the attention softmax output must stay float"

    def tensor_types(f):
        it = Interpreter(model_path=str(full_bundle / f))
        return {d["dtype"] for d in it.get_tensor_details()}, it.get_input_details()[0]["dtype"]

    assert np.int8 in tensor_types("model.int8-dynamic.tflite")[0]
    assert np.float16 in tensor_types("model.fp16.tflite")[0]
    types, input_type = tensor_types("model.int8.tflite")
    assert input_type == np.int8 and np.int8 in types
    sizes = {a: load_bundle(full_bundle).artifacts[a].size_bytes for a in ALL}
    assert sizes["onnx-int8-dynamic"] < sizes["onnx-fp32"] and sizes["tflite-int8-dynamic"] < sizes["tflite-fp32"]


def test_report_and_manifest_carry_the_gate_and_calibration(full_bundle: Path):
    manifest = json.loads((full_bundle / "manifest.json").read_text())
    report = (full_bundle / "export_report.md").read_text()
    for art in manifest["artifacts"]:
        assert f"| {art['name']} | {art['status']} |" in report
    calib = manifest["calibration"]
    assert calib["windows"] == 8 and calib["representative_windows"] == 24
    assert calib["provenance"]["split"] == "train"
    held = set(manifest["source"]["verification_set"]["recordings"])
    assert held and not held & set(calib["provenance"]["recordings"]), "calibration must not see held-out audio"
    with np.load(full_bundle / "calibration.npz") as data:
        assert data["features"].shape == (8, 798, 128) and data["features"].dtype == np.float16
    assert manifest["gate"]["min_agreement"] == 0.98


def test_default_qdq_on_attention_fails_the_gate(full_bundle: Path, tmp_path: Path):
    """The known trap: onnxruntime's default static QDQ quantizes every op, the attention softmax
    output included (fixed 0..1 int8 scale; ~950 tokens -> probabilities round to 0). The gate must
    fail that artifact; the exporter's weight-only MatMul/Conv/Gemm QDQ of the same model passes.
    A seeded micro AST with a sharpened head is used so that its decisions differ across windows
    (the barely trained test run predicts nearly one class, where even a collapse could agree)."""
    from stethoedge.calibration.ort_reader import WindowSetReader
    from stethoedge.export.exporter import artifact_runner
    from stethoedge.export.onnx_export import export_onnx, quantize_int8_static
    from stethoedge.export.verify import verify_artifact
    from stethoedge.train.model import AST, preset_config

    torch.manual_seed(0)
    model = AST(preset_config("micro")).eval()
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            if name.endswith("weight"):
                param.mul_(30.0)
    fp32 = export_onnx(model, tmp_path / "m.onnx", (798, 128))
    with np.load(full_bundle / "calibration.npz") as data:
        calib = data["features"].astype(np.float32)
    feats = np.concatenate([load_bundle(full_bundle).selftest.features, calib])  # real windows
    with torch.no_grad():
        reference = model(torch.from_numpy(feats)).numpy().astype(np.float64)
    labels = reference.argmax(1)
    assert len(np.unique(labels)) > 1
    broken = quantize_int8_static(fp32, tmp_path / "broken.onnx", WindowSetReader(calib), op_types=None, per_channel=False)
    healthy = quantize_int8_static(fp32, tmp_path / "healthy.onnx", WindowSetReader(calib), per_channel=False)
    bad = verify_artifact(artifact_runner("onnx", broken), feats, reference, labels)
    good = verify_artifact(artifact_runner("onnx", healthy), feats, reference, labels)
    assert not bad["passed"] and bad["top1_agreement"] < 0.98, bad
    assert good["passed"] and good["top1_agreement"] == 1.0, good
    ops = {n.op_type for n in onnx.load(str(broken)).graph.node}
    assert "Softmax" in ops  # the softmax is wrapped in Q/DQ in the broken one


def test_format_names_are_validated():
    assert resolve_formats("onnx,tflite") == ["onnx-fp32", "tflite-fp32"]
    assert resolve_formats(["tflite-int8", "onnx-fp16"]) == ["onnx-fp16", "tflite-int8"]
    with pytest.raises(StethoedgeError, match="unknown format 'onnx-int4'"):
        resolve_formats("onnx-int4")


def test_tensorrt_requested_here_is_recorded_as_failed_with_the_target_command(trained_run: Path, tmp_path: Path):
    from stethoedge.export.exporter import export_run

    result = export_run(trained_run, tmp_path / "b", max_windows=8, formats="onnx-fp32,tensorrt-fp16",
                        allow_degraded=True)
    [failed] = result.manifest["failed_artifacts"]
    assert failed["name"] == "tensorrt-fp16" and failed["status"] == "failed"
    assert "stethoedge build-engine BUNDLE --precision fp16" in failed["reason"]
    assert "| tensorrt-fp16 | failed |" in result.report
    assert list(load_bundle(tmp_path / "b").artifacts) == ["onnx-fp32"]


def test_every_artifact_opens_on_a_device_without_torch(full_bundle: Path):
    """The device path (ONNX Runtime and the LiteRT interpreter) must not need torch."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['stethoedge.train'] = None; "
            "sys.modules['stethoedge.export'] = None\n"
            "from stethoedge.runtime.backends import open_backend\n"
            "from stethoedge.runtime.bundle import load_bundle\n"
            f"b = load_bundle({str(full_bundle)!r})\n"
            "for name in b.artifacts:\n"
            "    assert open_backend(b, name, allow_failed=True).run(b.selftest.features).shape == b.selftest.logits.shape\n"
            "print(len(b.artifacts))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(len(ALL))
