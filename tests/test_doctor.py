"""`stethoedge doctor`: backends, providers, audio, versions and install hints."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stethoedge.models import default_bundle
from stethoedge.runtime.doctor import bundle_error, detect_board, format_report, run_doctor


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


def _doctor(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("stethoedge")
    return subprocess.run([str(exe), "doctor", *args], check=False, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_doctor_with_a_missing_bundle_prints_the_report_and_exits_2(tmp_path: Path, as_json: bool):
    missing = tmp_path / "missing"
    proc = _doctor("--bundle", str(missing), *(["--json"] if as_json else []))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: not a bundle directory"]
    if as_json:
        report = json.loads(proc.stdout)
        assert report["bundle"] == {"error": f"{missing}: not a bundle directory"} and "onnxruntime" in report["backends"]
    else:
        assert "backends:" in proc.stdout and "onnxruntime" in proc.stdout and "audio:" in proc.stdout


def test_cli_doctor_with_the_shipped_bundle_exits_0():
    proc = _doctor("--bundle", str(default_bundle()))
    assert proc.returncode == 0, proc.stderr
    assert "onnx-fp32: self-test passed on onnxruntime" in proc.stdout and "error" not in proc.stderr


def test_bundle_error_when_no_artifact_passes_here():
    report = {"bundle": {"tensorrt-fp16": "not usable here: TensorRT is not installed"}}
    assert bundle_error(report) == ("no artifact of the bundle passed its self-test on this device "
                                    "(tensorrt-fp16: not usable here: TensorRT is not installed)")
    assert bundle_error({"bundle": {"onnx-fp32": "self-test passed on onnxruntime", "x": "not usable here"}}) is None
    assert bundle_error({}) is None
