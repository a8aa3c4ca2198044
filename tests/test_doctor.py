"""`stethoedge doctor`: backends, providers, audio, versions and install hints."""
from __future__ import annotations

from pathlib import Path

from stethoedge.runtime.doctor import detect_board, format_report, run_doctor


def test_report_lists_backends_versions_and_install_hints():
    report = run_doctor()
    import onnxruntime

    ort = report["backends"]["onnxruntime"]
    assert ort["available"] and ort["version"] == onnxruntime.__version__
    assert "CPUExecutionProvider" in ort["detail"]
    assert report["libraries"]["numpy"] and report["board"] == detect_board()
    text = format_report(report)
    for name in ("onnxruntime", "litert", "tensorrt", "audio:"):
        assert name in text
    if not report["backends"]["tensorrt"]["available"]:
        assert "install (jetpack): TensorRT comes with JetPack" in text


def test_doctor_opens_the_bundle_on_available_backends(bundle_dir: Path):
    report = run_doctor(bundle=str(bundle_dir))
    assert report["bundle"]["onnx-fp32"] == "self-test passed on onnxruntime"


def test_doctor_reports_a_broken_bundle(tmp_path: Path):
    report = run_doctor(bundle=str(tmp_path))
    assert "error" in report["bundle"]
