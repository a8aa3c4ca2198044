"""The LiteRT backend's tflite-runtime fallback, for real on x86-64: benchmarks/tflite_runtime_check.sh.

tflite-runtime needs numpy < 2, so it gets its own venv ($STETHOEDGE_CACHE/tflite-runtime-venv, made
by the script from PyPI). The test runs the script (about 30 s once the venv exists) when that venv is
cached or STETHOEDGE_TFLITE_RUNTIME=1 allows creating it (network, ~1-2 min); otherwise it skips and
says how to build it. STETHOEDGE_TFLITE_RUNTIME=0 always skips.
"""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "tflite_runtime_check.sh"
CACHE = Path(os.environ.get("STETHOEDGE_CACHE", Path.home() / ".cache" / "stethoedge"))
SHARED = Path(os.environ.get("STETHOEDGE_SHARED", REPO.parent / "shared"))
VENV = CACHE / "tflite-runtime-venv"


def _why_not() -> str | None:
    mode = os.environ.get("STETHOEDGE_TFLITE_RUNTIME", "")
    if mode == "0":
        return "STETHOEDGE_TFLITE_RUNTIME=0"
    if platform.machine() != "x86_64":
        return f"this check is for x86-64 (this is {platform.machine()}; arm64: benchmarks/arm64_smoke.sh)"
    if not (SHARED / "data" / "icbhi_sample" / "audio_and_txt_files").is_dir():
        return f"no ICBHI sample under {SHARED}/data (set STETHOEDGE_SHARED)"
    if mode != "1" and not (VENV / "bin" / "python").exists():
        return (f"no cached tflite-runtime venv at {VENV}; create it with `{SCRIPT.relative_to(REPO)}` "
                "(PyPI, ~2 min) or set STETHOEDGE_TFLITE_RUNTIME=1 to let this test create it")
    return None


def test_tflite_runtime_fallback_is_proven_or_refused_by_the_selftest():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=1800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    assert "TFLITE-RUNTIME CHECK PASS" in out
    # The fallback really loaded (not ai-edge-litert) and the shipped model's TFLite artifact ran on it.
    assert "| default | tflite-fp16 | fp16 |" in out and "tflite-runtime 2." in out, out[-4000:]
    assert "| default | tflite-fp16 | all |" in out, out[-4000:]
