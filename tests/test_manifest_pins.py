"""Issue 13.1: the manifest pins every file, is verified and parsed from the same bytes, engines
built on a device go to a signed-manifest-preserving overlay (engines.json), the engine
environment check really compares, build-engine runs the verification gate, and a fresh export
carries no absolute paths.

TensorRT cannot be installed here (x86 CPU machine, no NVIDIA driver): the overlay is tested with
hand-written entries and a dummy engine file (refused at backend open for lack of TensorRT), and
build_engine's path with the TensorRT build step and the engine runner replaced by fakes.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.backends.tensorrt_backend import _gpu_name_nvidia_smi, compare_engine_env
from stethoedge.runtime.bundle import (
    OVERLAY_NAME, dump, load_bundle, new_overlay, pinned_files, read_verified, sha256_file, write_overlay,
)
from stethoedge.runtime.errors import BackendError, BundleError
from stethoedge.runtime.signing import generate_keypair, sign_bundle

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "respiratory-mn04"
ENV = {"tensorrt": "10.3.0", "cuda": "12.6", "cuda_major": "12", "gpu": "Orin (nvgpu)", "l4t": "36.4.0",
       "jetpack": "6.1"}


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst)
    return dst


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    generate_keypair(priv, pub)
    return priv, pub


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def _write_manifest(root: Path, m: dict[str, Any]) -> None:
    (root / "manifest.json").write_text(json.dumps(m, indent=2))


def _add_calibration(root: Path) -> None:
    """Give the shipped bundle (which has none) a calibration set and cache, pinned in its manifest."""
    rng = np.random.default_rng(0)
    with open(root / "calibration.npz", "wb") as f:
        np.savez(f, features=rng.standard_normal((2, 798, 128)).astype(np.float16))
    (root / "calibration.cache").write_text("TRT-100300-EntropyCalibration2\n")
    m = _manifest(root)
    m["calibration"] = {"file": "calibration.npz", "sha256": sha256_file(root / "calibration.npz"), "windows": 2}
    m["calibration_cache"] = {"file": "calibration.cache", "sha256": sha256_file(root / "calibration.cache")}
    _write_manifest(root, m)


# ---- every pinned file is verified on load ---------------------------------------------------------

@pytest.mark.parametrize("name", ["calibration.npz", "calibration.cache"])
def test_tampered_calibration_files_are_refused_on_load(shipped: Path, name: str):
    _add_calibration(shipped)
    bundle = load_bundle(shipped)
    assert {"calibration.npz", "calibration.cache", "model.onnx", "selftest.npz", "quality.npz"} <= set(
        pinned_files(bundle.manifest))
    with open(shipped / name, "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match=f"{name} does not match its sha256 in the manifest"):
        load_bundle(shipped)


def test_missing_calibration_set_is_refused(shipped: Path):
    _add_calibration(shipped)
    (shipped / "calibration.npz").unlink()
    with pytest.raises(BundleError, match="'calibration.npz' named in the manifest is missing"):
        load_bundle(shipped)


def test_build_engine_reads_only_the_verified_calibration_bytes(shipped: Path):
    from stethoedge.export.tensorrt_build import _calibration_features

    _add_calibration(shipped)
    bundle = load_bundle(shipped)
    assert _calibration_features(bundle).shape == (2, 798, 128)
    with open(shipped / "calibration.npz", "wb") as f:  # swapped after load_bundle verified it
        np.savez(f, features=np.zeros((2, 798, 128), np.float16))
    with pytest.raises(BundleError, match="calibration.npz does not match its sha256"):
        _calibration_features(bundle)
    with pytest.raises(BundleError, match="does not match"):
        read_verified(shipped, "calibration.npz", bundle.manifest["calibration"]["sha256"])


# ---- the signature covers the bytes that are parsed ----------------------------------------------

def test_signature_and_parse_use_the_same_read(shipped: Path, keys: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch):
    """The manifest is swapped on disk right after its first read: the loader must parse the signed bytes."""
    priv, pub = keys
    sign_bundle(shipped, priv)
    signed = _manifest(shipped)
    evil = {**signed, "default_artifact": "tflite-fp16"}
    real_read = Path.read_bytes
    reads = []

    def read_then_swap(self: Path) -> bytes:
        data = real_read(self)
        if self.name == "manifest.json":
            reads.append(self)
            if len(reads) == 1:
                self.write_text(json.dumps(evil, indent=2))
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_swap)
    bundle = load_bundle(shipped, require_signature=pub)
    assert bundle.manifest["default_artifact"] == signed["default_artifact"] != "tflite-fp16"
    assert len(reads) == 1


# ---- engines.json: device-built engines without touching the signed manifest ---------------------

def _overlay_with_engine(root: Path, **entry_changes: Any) -> dict[str, Any]:
    engine = root / "model.fp16.engine"
    engine.write_bytes(b"dummy engine bytes (TensorRT cannot be installed here)")
    overlay = dump(new_overlay(_manifest(root)))
    overlay["engines"].append({
        "name": "tensorrt-fp16", "file": engine.name, "format": "tensorrt", "precision": "fp16",
        "sha256": sha256_file(engine), "size_bytes": engine.stat().st_size, "tolerance": 0.05, "status": "passed",
        "verification": {"passed": True}, "engine": dict(ENV), **entry_changes})
    return overlay


def test_overlay_engine_loads_with_a_valid_owner_signature(shipped: Path, keys: tuple[Path, Path]):
    priv, pub = keys
    sign_bundle(shipped, priv)
    signed_bytes = (shipped / "manifest.json").read_bytes()
    write_overlay(shipped, _overlay_with_engine(shipped))
    bundle = load_bundle(shipped, require_signature=pub)
    assert (shipped / "manifest.json").read_bytes() == signed_bytes and (shipped / "manifest.sig").is_file()
    art = bundle.artifacts["tensorrt-fp16"]
    assert art.format == "tensorrt" and art.engine["gpu"] == "Orin (nvgpu)"
    assert bundle.overlay.onnx.sha256 == bundle.artifacts["onnx-fp32"].sha256
    assert bundle.manifest["default_artifact"] != "tensorrt-fp16"  # the signed default is kept
    with pytest.raises(BackendError, match="TensorRT is not installed on this device"):
        open_backend(bundle, "tensorrt-fp16")


def test_tampered_overlay_engine_is_refused(shipped: Path):
    write_overlay(shipped, _overlay_with_engine(shipped))
    (shipped / "model.fp16.engine").write_bytes(b"another engine")
    with pytest.raises(BundleError, match="model.fp16.engine does not match its sha256 in engines.json"):
        load_bundle(shipped)


def test_overlay_from_another_model_is_refused(shipped: Path):
    overlay = _overlay_with_engine(shipped)
    overlay["onnx"]["sha256"] = "0" * 64
    (shipped / OVERLAY_NAME).write_text(json.dumps(overlay))
    with pytest.raises(BundleError, match="engines were built from another model"):
        load_bundle(shipped)


@pytest.mark.parametrize("change, message", [
    ({"name": "onnx-fp32"}, "would replace a signed artifact"),
    ({"format": "onnx"}, "an overlay holds TensorRT engines only"),
    ({"engine": {**ENV, "gpu": None}}, "does not record the gpu"),
    ({"file": "../model.onnx"}, "must be a plain file name"),
    ({"file": "model.onnx"}, "an overlay may not re-pin it"),
])
def test_overlay_entries_are_validated(shipped: Path, change: dict[str, Any], message: str):
    overlay = _overlay_with_engine(shipped, **change)
    if change.get("file") == "model.onnx":
        overlay["engines"][0]["sha256"] = "1" * 64
    (shipped / OVERLAY_NAME).write_text(json.dumps(overlay))
    with pytest.raises(BundleError, match=message):
        load_bundle(shipped)


def test_invalid_overlay_json_is_one_line(shipped: Path):
    (shipped / OVERLAY_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="engines.json: not valid JSON") as err:
        load_bundle(shipped)
    assert "\n" not in str(err.value)


# ---- build-engine: gate + overlay (TensorRT build and runner faked) ------------------------------

class _Runner:
    def __init__(self, logits: np.ndarray, calls: list[str]) -> None:
        self.logits, self.calls = logits, calls

    def run(self, features: np.ndarray) -> np.ndarray:
        self.calls.append("run")
        return self.logits[: features.shape[0]]


def _fake_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import stethoedge.export.tensorrt_build as tb

    monkeypatch.setattr(tb, "device_environment", lambda gpu=None: {**ENV, "gpu": gpu})
    monkeypatch.setattr(tb, "gpu_name", lambda: ENV["gpu"])

    def build(onnx, engine, *args, **kwargs):
        engine.write_bytes(b"fake engine from " + onnx.name.encode())

    monkeypatch.setattr(tb, "_build_python", build)


@pytest.mark.parametrize("good", [True, False])
def test_build_engine_gates_the_engine_and_keeps_the_signature(shipped: Path, keys: tuple[Path, Path],
                                                              monkeypatch: pytest.MonkeyPatch, good: bool):
    from stethoedge.export.tensorrt_build import build_engine

    _fake_build(monkeypatch)
    priv, pub = keys
    sign_bundle(shipped, priv)
    signed = (shipped / "manifest.json").read_bytes()
    selftest = load_bundle(shipped).selftest
    logits = selftest.logits if good else selftest.logits[:, ::-1].copy()  # wrong class order: disagrees
    calls: list[str] = []
    opened: list[str] = []

    def factory(bundle, artifact):
        opened.append(artifact.name)
        return _Runner(logits, calls)

    entry = build_engine(shipped, "fp16", runner_factory=factory)
    assert opened == ["tensorrt-fp16"] and calls, "the gate must run the built engine"
    assert entry["status"] == ("passed" if good else "failed-verification")
    assert entry["verification"]["passed"] is good and entry["verification"]["windows"] == len(selftest.logits)
    assert (shipped / "manifest.json").read_bytes() == signed and (shipped / "manifest.sig").is_file()
    bundle = load_bundle(shipped, require_signature=pub)
    assert bundle.artifacts["tensorrt-fp16"].status == entry["status"]
    assert bundle.artifacts["tensorrt-fp16"].engine["onnx_sha256"] == bundle.artifacts["onnx-fp32"].sha256
    if not good:
        with pytest.raises(BundleError, match="failed verification"):
            bundle.artifact("tensorrt-fp16")


def test_build_engine_gate_fails_an_engine_that_cannot_open(shipped: Path, monkeypatch: pytest.MonkeyPatch):
    from stethoedge.export.tensorrt_build import build_engine

    _fake_build(monkeypatch)

    def factory(bundle, artifact):
        raise BackendError("TensorRT could not load model.fp16.engine")

    entry = build_engine(shipped, "fp16", runner_factory=factory)
    assert entry["status"] == "failed-verification" and "could not load" in entry["verification"]["error"]


def test_build_engine_refuses_an_unknown_gpu(shipped: Path, monkeypatch: pytest.MonkeyPatch):
    import stethoedge.export.tensorrt_build as tb

    _fake_build(monkeypatch)
    monkeypatch.setattr(tb, "gpu_name", lambda: None)
    with pytest.raises(BackendError, match="cannot determine this device's GPU name"):
        tb.build_engine(shipped, "fp16")
    assert not (shipped / OVERLAY_NAME).exists()


# ---- the engine environment comparison ------------------------------------------------------------

def test_compare_engine_env_really_compares():
    assert compare_engine_env(ENV, dict(ENV)) == []
    assert compare_engine_env(ENV, {**ENV, "gpu": "NVIDIA H200"}) == [
        "gpu Orin (nvgpu) (engine) vs NVIDIA H200 (this device)"]
    assert compare_engine_env(ENV, {**ENV, "tensorrt": "10.4.0"}) == ["tensorrt 10.3.0 (engine) vs 10.4.0 (this device)"]
    assert compare_engine_env(ENV, {**ENV, "cuda": "12.2"}) == ["cuda 12.6 (engine) vs 12.2 (this device)"]
    assert "gpu Orin (nvgpu) (engine) vs unknown" in compare_engine_env(ENV, {**ENV, "gpu": None})[0]
    assert "gpu not recorded" in compare_engine_env({**ENV, "gpu": None}, ENV)[0]
    old = {k: v for k, v in ENV.items() if k != "cuda"}  # an entry that recorded only the CUDA major
    assert compare_engine_env(old, {**ENV, "cuda": "12.2"}) == []
    assert compare_engine_env(old, {**ENV, "cuda_major": "11"}) == ["cuda_major 12 (engine) vs 11 (this device)"]


def test_gpu_name_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "--query-gpu=name" ] && echo "NVIDIA H200" || exit 3\n')
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert _gpu_name_nvidia_smi() == "NVIDIA H200"
    smi.write_text("#!/bin/sh\nexit 9\n")
    assert _gpu_name_nvidia_smi() is None


# ---- no absolute paths in a shipped manifest -------------------------------------------------------

def _strings(value: Any):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_fresh_export_manifest_has_no_absolute_paths(bundle_dir: Path, trained_run: Path):
    text = (bundle_dir / "manifest.json").read_text()
    tmp_root = str(trained_run.parents[1])  # pytest's base temp dir: holds the run, data and bundle
    bad = [s for s in _strings(json.loads(text)) if s.startswith("/") or tmp_root in s or str(Path.home()) + "/" in s]
    assert not bad, bad
    assert tmp_root not in text


def test_shipped_manifest_has_no_absolute_paths():
    bad = [s for s in _strings(_manifest(SHIPPED)) if s.startswith("/")]
    assert not bad, bad


def test_portable_keeps_only_names_of_absolute_paths():
    """A calibration set saved elsewhere can carry its build machine's paths in its provenance."""
    from stethoedge.export.exporter import portable

    provenance = {"data": "/home/ci/datasets/icbhi_train16k", "run": "/tmp/pytest-7/run0/run/",
                  "windows": [3, "/abs/x.wav"], "note": "relative/ok", "win": "C:\\Users\\me\\set.npz"}
    assert portable(provenance) == {"data": "icbhi_train16k", "run": "run", "windows": [3, "x.wav"],
                                    "note": "relative/ok", "win": "set.npz"}


def test_manifest_typed_view_round_trips_and_lists_every_file(shipped: Path):
    from stethoedge.runtime.bundle import Manifest, write_manifest

    raw = (shipped / "manifest.json").read_bytes()
    m = Manifest.from_bytes(raw, shipped / "manifest.json")
    assert m.to_json().encode() == raw  # the one serializer writes what the exporter wrote
    assert [a.name for a in m.artifacts] == ["onnx-fp32", "tflite-fp16"]
    assert set(m.files) == {"model.onnx", "model.fp16.tflite", "selftest.npz", "quality.npz"}
    assert m.to_dict() == json.loads(raw) and m.to_dict() is not m.data
    write_manifest(shipped, m.to_dict())
    assert (shipped / "manifest.json").read_bytes() == raw
    with pytest.raises(BundleError, match="default_artifact 'nope' is not among the artifacts"):
        Manifest.from_dict({**m.to_dict(), "default_artifact": "nope"})
    write_overlay(shipped, _overlay_with_engine(shipped))
    assert set(load_bundle(shipped).files) == set(m.files) | {"model.fp16.engine"}


def test_engine_env_dataclass_uses_the_same_comparison():
    from stethoedge.runtime.backends.tensorrt_backend import EngineEnv

    here = EngineEnv.from_dict({**ENV, "builder": "trtexec"})
    assert here.to_dict() == ENV and here.mismatches(ENV) == []
    assert here.mismatches(EngineEnv.from_dict({**ENV, "gpu": "NVIDIA H200"})) == [
        "gpu NVIDIA H200 (engine) vs Orin (nvgpu) (this device)"]
    assert set(EngineEnv.current().to_dict()) == set(ENV)
