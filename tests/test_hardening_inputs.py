"""Hardening: the bad-input matrix through the CLI (in-process ``main``) and the Python API.

Every bad input must give exactly one ``error: ...`` line and exit code 2 from the CLI, a
``StethoedgeError`` subclass from the API, no traceback, and no output file (classify writes its
JSON lines by write-then-rename). Usable-but-odd audio (every bit depth, 4-192 kHz, 1-6
channels, clipping, DC offset, a header that claims more data than the file holds) is classified,
with a warning where the user should know. Cases already covered elsewhere are listed in
docs/RELIABILITY.md and not repeated here.
"""
from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf

from stethoedge.cli import main
from stethoedge.runtime.bundle import sha256_file
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import AudioError, BackendError, BundleError, StethoedgeError
from stethoedge.runtime.sources import FileSource


def _tone(seconds: float, rate: int, channels: int = 1, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = level * np.sin(2 * np.pi * 440 * t) * (1 + 0.3 * np.sin(2 * np.pi * 0.3 * t)) / 1.3
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _wav(path: Path, data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), data, rate, subtype=subtype, format="WAV")
    return path


def _header_claims_more(tmp: Path) -> Path:
    """A WAV whose header claims 3 s but whose data stops after 1.5 s (a copy cut short)."""
    full = _wav(tmp / "full.wav", _tone(3.0, 16000))
    data = full.read_bytes()
    path = tmp / "claims-more.wav"
    path.write_bytes(data[: 44 + 2 * 24000])
    return path


def _bad(tmp: Path, case: str) -> Path:
    """Write the file for one bad-input case and return its path."""
    p = tmp / f"{case}.wav"
    if case == "empty":
        p.write_bytes(b"")
    elif case == "not-a-wav":
        p.write_text("patient notes, not audio\n" * 40)
    elif case == "random-bytes":
        p.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "truncated-header":
        p.write_bytes(_wav(tmp / "src.wav", _tone(1.0, 16000)).read_bytes()[:30])
    elif case == "riff-only":
        p.write_bytes(b"RIFF\xff\xff\xff\x7fWAVE")
    elif case == "zero-samples":
        _wav(p, np.zeros(0))
    elif case == "one-sample":
        _wav(p, np.zeros(1))
    elif case == "100-samples":
        _wav(p, _tone(100 / 16000, 16000))
    elif case == "nan":
        x = _tone(3.0, 16000)
        x[20000] = np.nan
        _wav(p, x, subtype="FLOAT")
    elif case == "inf-double":
        x = _tone(3.0, 16000)
        x[100] = np.inf
        _wav(p, x, subtype="DOUBLE")
    elif case == "rate-2k":
        _wav(p, _tone(3.0, 2000), rate=2000)
    elif case == "rate-384k":
        _wav(p, _tone(0.5, 384000), rate=384000)
    elif case == "missing":
        p = tmp / "no-such-file.wav"
    elif case == "directory":
        p = tmp / "a-directory.wav"
        p.mkdir()
    elif case == "dangling-symlink":
        p.symlink_to(tmp / "gone.wav")
    else:  # pragma: no cover
        raise AssertionError(case)
    return p


BAD_CASES = ["empty", "not-a-wav", "random-bytes", "truncated-header", "riff-only", "zero-samples", "one-sample",
             "100-samples", "nan", "inf-double", "rate-2k", "rate-384k", "missing", "directory", "dangling-symlink"]


@pytest.fixture(scope="module")
def clf(bundle_dir: Path) -> Classifier:
    return Classifier.open(bundle_dir, allow_degraded=True, threads=1)


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_audio_cli_one_line_exit_2_no_output(bundle_dir: Path, tmp_path: Path, capsys, case: str):
    path = _bad(tmp_path, case)
    out = tmp_path / "out" / "result.jsonl"
    code, _, err = _cli(capsys, "classify", str(bundle_dir), str(path), "--jsonl", str(out), "--allow-degraded")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not out.exists(), "a failed classify must not publish a JSON-lines file"
    assert not list(out.parent.glob(".*tmp*")) if out.parent.exists() else True, "temporary file left behind"


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_audio_api_typed_error(clf: Classifier, tmp_path: Path, case: str):
    path = _bad(tmp_path, case)
    with pytest.raises(AudioError) as info:
        list(clf.classify(FileSource(path)))
    message = str(info.value)
    assert "\n" not in message and message.strip(), message


@pytest.mark.parametrize("subtype, rate, channels", [
    ("PCM_U8", 8000, 1), ("PCM_24", 44100, 2), ("PCM_32", 4000, 1), ("FLOAT", 192000, 1), ("DOUBLE", 22050, 6),
    ("PCM_16", 96000, 2),
])
def test_every_usable_format_streams_and_classifies(clf: Classifier, tmp_path: Path, subtype, rate, channels):
    path = _wav(tmp_path / "ok.wav", _tone(3.0, rate, channels), rate, subtype)
    src = FileSource(path)
    results = list(clf.classify(src, hop_s=2.0, min_s=2.0))
    assert [r.end_s for r in results] == pytest.approx([2.0, 3.0], abs=2e-3)
    assert src.samples_out == pytest.approx(48000, abs=2)
    assert all(abs(sum(r.probabilities.values()) - 1) < 1e-5 for r in results)
    assert src.warnings == []


@pytest.mark.parametrize("case, expect", [
    ("clipped", "full scale"), ("dc", "DC offset"), ("claims-more", "truncated file"),
])
def test_odd_audio_warns_and_still_classifies(bundle_dir: Path, tmp_path: Path, capsys, case, expect):
    if case == "clipped":
        path = _wav(tmp_path / "clip.wav", np.clip(_tone(3.0, 16000, level=3.0), -1, 1))
    elif case == "dc":
        path = _wav(tmp_path / "dc.wav", _tone(3.0, 16000, level=0.2) + 0.3)
    else:
        path = _header_claims_more(tmp_path)
    out = tmp_path / "r.jsonl"
    code, _, err = _cli(capsys, "classify", str(bundle_dir), str(path), "--jsonl", str(out), "--allow-degraded")
    assert code == 0, err
    assert expect in err and err.count("warning: ") == 1 and "Traceback" not in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and records[-1]["end_s"] == pytest.approx(1.5 if case == "claims-more" else 3.0, abs=2e-3)


def test_hours_long_file_is_streamed_in_constant_memory(tmp_path: Path):
    """30 min at 4 kHz (the Littmann 3200 rate): streaming and resampling to 16 kHz holds a few blocks,
    not the 115 MB a whole-file decode would take."""
    path = tmp_path / "long.wav"
    rate, minutes = 4000, 30
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        block = _tone(60.0, rate).astype(np.float32)
        for _ in range(minutes):
            f.write(block)
    src = FileSource(path)
    tracemalloc.start()
    total = 0
    try:
        for chunk in src.chunks():
            total += chunk.samples.shape[0]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == pytest.approx(minutes * 60 * 16000, abs=16)
    assert peak < 2 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB while streaming"


# ------------------------------------------------------------------ bad bundles, through the CLI
def _bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    return dst


def _rewrite_artifact(bundle: Path, name: str, model: onnx.ModelProto) -> None:
    """Replace an artifact file and re-seal its sha256/size so only the shape check can catch it."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    art = _artifact_entry(manifest, name)
    onnx.save(model, str(bundle / art["file"]))
    art["sha256"] = sha256_file(bundle / art["file"])
    art["size_bytes"] = (bundle / art["file"]).stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _artifact_entry(manifest: dict, name: str) -> dict:
    return next(a for a in manifest["artifacts"] if a["name"] == name)


def _wrong_shape_model(frames: int, mels: int, classes: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", frames, mels])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    w = helper.make_tensor("w", TensorProto.FLOAT, [mels, classes], np.ones((mels, classes), np.float32).ravel())
    graph = helper.make_graph([helper.make_node("ReduceMean", ["features", "axes"], ["m"], keepdims=0),
                               helper.make_node("MatMul", ["m", "w"], ["logits"])], "wrong", [x], [y], [axes, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _default_artifact(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["default_artifact"]


@pytest.mark.parametrize("case", ["missing-file", "tampered", "schema-99", "model-input-shape", "not-a-bundle"])
def test_bad_bundle_cli_one_line(bundle_dir: Path, tmp_path: Path, capsys, case: str):
    bundle = _bundle_copy(bundle_dir, tmp_path)
    art = _default_artifact(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    file = bundle / _artifact_entry(manifest, art)["file"]
    if case == "missing-file":
        file.unlink()
    elif case == "tampered":
        data = bytearray(file.read_bytes())
        data[-100] ^= 0x10
        file.write_bytes(bytes(data))
    elif case == "schema-99":
        manifest["schema_version"] = 99
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    elif case == "model-input-shape":
        _rewrite_artifact(bundle, art, _wrong_shape_model(400, 128, 4))
    else:
        (bundle / "manifest.json").write_text("{not json")
    wav = _wav(tmp_path / "ok.wav", _tone(3.0, 16000))
    code, _, err = _cli(capsys, "classify", str(bundle), str(wav), "--artifact", art, "--allow-degraded")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err


def test_model_whose_input_disagrees_with_manifest_is_a_typed_error(bundle_dir: Path, tmp_path: Path):
    bundle = _bundle_copy(bundle_dir, tmp_path)
    art = _default_artifact(bundle)
    _rewrite_artifact(bundle, art, _wrong_shape_model(400, 128, 4))
    with pytest.raises((BundleError, BackendError)):
        Classifier.open(bundle, artifact=art, allow_degraded=True)


def test_every_failure_is_a_stethoedge_error():
    """The typed errors the matrix relies on share one base the CLI turns into a line."""
    for cls in (AudioError, BundleError, BackendError):
        assert issubclass(cls, StethoedgeError)


@pytest.mark.parametrize("field, value", [("frame_shift_ms", 0.0), ("frame_length_ms", 0.01), ("norm_mean", float("nan")),
                                          ("window_seconds", 0.001)])
def test_fuzz_regression_degenerate_feature_spec_is_a_bundle_error(bundle_dir: Path, tmp_path: Path, field, value):
    """Found by benchmarks/fuzz_manifest.py: frame_shift_ms 0 raised ZeroDivisionError from the loader."""
    from stethoedge.runtime.bundle import load_bundle

    bundle = _bundle_copy(bundle_dir, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["feature_spec"][field] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        load_bundle(bundle)
