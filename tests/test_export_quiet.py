"""`stethoedge export` output: no third-party start-up noise (export/quiet.py), real errors still shown."""
from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from stethoedge.export.quiet import quiet_third_party

#: What `stethoedge export` printed before export/quiet.py (reproduced with a TFLite export of a tiny run).
NOISE = ("_C_mxfp8", "_C_cutlass", "Detected no triton", "absl::InitializeLog", "oneDNN custom operations",
         "torch/utils/_pytree.py", "is an Enum subclass", "XNNPACK delegate", "flatbuffer_export.cc",
         "Missing quantization parameter", "I0000 ")


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TQDM_DISABLE")}
    return subprocess.run([sys.executable, "-m", "stethoedge", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch (stethoedge[export]) "
                    "is not installed: the TFLite export that printed the noise cannot run")
def test_tflite_export_prints_no_third_party_noise(trained_run: Path, tmp_path: Path) -> None:
    done = _cli("export", str(trained_run), "--out", str(tmp_path / "bundle"), "--formats", "tflite-fp32",
                "--windows", "8", "--allow-degraded")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bundle" / "model.tflite").is_file() and "bundle written to" in done.stdout
    found = [n for n in NOISE if n in done.stderr]
    assert not found, f"noise on stderr: {found}\n{done.stderr}"


def test_export_errors_still_show(tmp_path: Path) -> None:
    done = _cli("export", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "bundle"), timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-run" in lines[0], done.stderr


def test_filter_drops_exactly_the_noise(capfd: pytest.CaptureFixture) -> None:
    noise = [b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
             b"I0000 00:00:1796164146.897796    2638 port.cc:153] oneDNN custom operations are on.\n",
             b"I0000 00:00:1796164168.584640    2638 status_scoped_diagnostic_handler.cc:61] /x/model.py:188:0: "
             b"warning: Missing quantization parameter on the output might introduce quantization error!\n", b"\n",
             b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"]
    real = [b"E0000 00:00:1796164168.6 2638 converter.cc:12] conversion failed: unsupported op\n",
            b"error: something real\n", b"fit vae:  50%|#####     | 1/2 [00:01<00:01]\r"]
    torchao = logging.getLogger("torchao")
    before = torchao.level
    with quiet_third_party():
        # sys.stderr on fd 2, as in a real process: under capfd pytest's sys.stderr writes to the capture file
        # through its own file offset, so its lines and the filter's could overwrite each other (a flaky test)
        pytest_stderr, sys.stderr = sys.stderr, open(2, "w", closefd=False, buffering=1)
        try:
            for line in (noise[0], real[0], *noise[1:], *real[1:]):
                os.write(2, line)
            assert not torchao.isEnabledFor(logging.WARNING) and torchao.isEnabledFor(logging.ERROR)
            assert not logging.getLogger("torch.utils._pytree").isEnabledFor(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.warn("representative set has only 16 windows", UserWarning)
        finally:
            sys.stderr.flush()
            sys.stderr = pytest_stderr
    err = capfd.readouterr().err
    expected = b"".join(real) + b"warning: representative set has only 16 windows\n"
    assert sorted(err.encode().splitlines(keepends=True)) == sorted(expected.splitlines(keepends=True))
    assert torchao.level == before  # restored
    with quiet_third_party(verbose=True):  # -v: everything shows
        for line in noise:
            os.write(2, line)
    assert capfd.readouterr().err.encode() == b"".join(noise)


def test_litert_banner_is_not_in_classify_output_but_shows_with_verbose(tmp_path):
    """LiteRT prints 'INFO: Created TensorFlow Lite XNNPACK delegate' on fd 2 when it opens: classify drops it
    (runtime/native_noise.py), ``-v`` keeps it, and real stderr lines around it still pass."""
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf

    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (extra [tflite])")
    wav = tmp_path / "tone.wav"
    t = np.arange(3 * 16000) / 16000
    sf.write(str(wav), 0.3 * np.sin(2 * np.pi * 300 * t) + 0.01 * np.random.default_rng(0).standard_normal(t.size), 16000)
    base = [sys.executable, "-m", "stethoedge"]
    quiet = subprocess.run([*base, "classify", str(wav), "--backend", "litert"], capture_output=True, text=True, timeout=300)
    loud = subprocess.run([*base, "-v", "classify", str(wav), "--backend", "litert"], capture_output=True, text=True,
                          timeout=300)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "XNNPACK" not in quiet.stderr and "XNNPACK" in loud.stderr
    assert quiet.stdout.strip() and "Traceback" not in quiet.stderr
