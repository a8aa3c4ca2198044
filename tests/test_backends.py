"""Backends: discovery for ``doctor``, dispatch, and the TensorRT path as far as this machine allows
(ONNX lint with polygraphy, engine entries, version-mismatch refusal with the rebuild command)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stethoedge.runtime.backends import available_backends, open_backend
from stethoedge.runtime.backends.tensorrt_backend import (
    check_engine_compatible, device_environment, rebuild_command,
)
from stethoedge.runtime.bundle import load_bundle, sha256_file
from stethoedge.runtime.errors import BackendError, BundleError

NO_TRT = "TensorRT is not installable here (x86 CPU machine, no NVIDIA driver; its wheels fetch from an unreachable host)"


def _has_tensorrt() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorrt") is not None


def test_available_backends_reports_every_backend():
    info = available_backends()
    assert set(info) == {"onnxruntime", "litert", "tensorrt"}
    for name, entry in info.items():
        assert set(entry) == {"available", "version", "detail", "install"}, name
        assert isinstance(entry["available"], bool) and entry["install"]
    assert info["onnxruntime"]["available"] and "CPUExecutionProvider" in info["onnxruntime"]["detail"]
    import onnxruntime

    assert info["onnxruntime"]["version"] == onnxruntime.__version__
    if not _has_tensorrt():
        assert not info["tensorrt"]["available"] and "not importable" in info["tensorrt"]["detail"]


def test_backend_must_match_the_artifact_format(bundle_dir: Path):
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BackendError, match="cannot run onnx"):
        open_backend(bundle, "onnx-fp32", backend="litert")
    with pytest.raises(BackendError, match="no backend 'coreml'"):
        open_backend(bundle, "onnx-fp32", backend="coreml")


ENTRY = {"tensorrt": "8.6.2", "cuda": "12.2", "cuda_major": "12", "gpu": "Orin", "l4t": "36.3.0", "jetpack": "6.0"}


def test_engine_version_mismatch_is_refused_with_the_rebuild_command():
    same = dict(ENTRY)
    check_engine_compatible(ENTRY, same, "/opt/b", "fp16")  # identical environment: accepted
    with pytest.raises(BundleError, match="gpu Orin .engine. vs unknown"):  # an unknown GPU proves nothing
        check_engine_compatible(ENTRY, {**same, "gpu": None}, "/opt/b", "fp16")
    with pytest.raises(BundleError) as err:
        check_engine_compatible(ENTRY, {**same, "tensorrt": "10.3.0"}, "/opt/b", "int8")
    msg = str(err.value)
    assert "tensorrt 8.6.2 (engine) vs 10.3.0 (this device)" in msg
    assert rebuild_command("/opt/b", "int8") == "stethoedge build-engine /opt/b --precision int8"
    assert "Rebuild it here with: stethoedge build-engine /opt/b --precision int8" in msg
    with pytest.raises(BundleError, match="cuda_major 12 .* vs 11"):
        check_engine_compatible(ENTRY, {**same, "cuda_major": "11"}, "/opt/b", "fp16")
    with pytest.raises(BackendError, match="TensorRT is not installed"):
        check_engine_compatible(ENTRY, {**same, "tensorrt": None}, "/opt/b", "fp16")


@pytest.fixture
def bundle_with_engine(bundle_dir: Path, tmp_path: Path) -> Path:
    """A bundle whose manifest lists an engine built on some other device (entry written by the test)."""
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    (dst / "model.fp16.engine").write_bytes(b"not a real engine: built on a Jetson")
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["artifacts"].append({
        "name": "tensorrt-fp16", "file": "model.fp16.engine", "format": "tensorrt", "precision": "fp16",
        "sha256": sha256_file(dst / "model.fp16.engine"), "size_bytes": (dst / "model.fp16.engine").stat().st_size,
        "tolerance": 0.05, "status": "passed", "verification": {}, "engine": {**ENTRY, "tensorrt": "1.0.0"}})
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_engine_from_another_device_is_refused_on_open(bundle_with_engine: Path):
    bundle = load_bundle(bundle_with_engine)
    assert bundle.artifacts["tensorrt-fp16"].engine["tensorrt"] == "1.0.0"
    if _has_tensorrt():
        with pytest.raises(BundleError, match="Rebuild it here with: stethoedge build-engine"):
            open_backend(bundle, "tensorrt-fp16")
    else:
        with pytest.raises(BackendError, match="TensorRT is not installed on this device"):
            open_backend(bundle, "tensorrt-fp16")


def test_engine_entry_without_versions_is_a_schema_error(bundle_with_engine: Path):
    manifest = json.loads((bundle_with_engine / "manifest.json").read_text())
    del manifest["artifacts"][-1]["engine"]
    (bundle_with_engine / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="without its 'engine' versions"):
        load_bundle(bundle_with_engine)


def test_device_environment_has_the_recorded_keys():
    env = device_environment()
    assert {"tensorrt", "cuda", "cuda_major", "gpu", "l4t", "jetpack"} <= set(env)
    if not Path("/etc/nv_tegra_release").exists():
        assert env["l4t"] is None


def test_exported_onnx_passes_polygraphy_lint(bundle_dir: Path):
    """What the Jetson's TensorRT parser will read: the fp32 ONNX, linted node by node."""
    pytest.importorskip("polygraphy")
    pytest.importorskip("onnx_graphsurgeon", reason="polygraphy lint needs onnx-graphsurgeon (pip install onnx-graphsurgeon)")
    from stethoedge.export.tensorrt_build import lint_onnx

    result = lint_onnx(bundle_dir / "model.onnx")
    assert result["passed"], result["entries"]
    broken = bundle_dir.parent / "lint-broken.onnx"
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    broken.write_bytes(bytes(data[: len(data) // 3]))
    try:
        with pytest.raises(Exception):
            assert lint_onnx(broken)["passed"]
    finally:
        broken.unlink()


def test_trtexec_command_and_build_refusal_here(bundle_dir: Path, tmp_path: Path):
    from stethoedge.export.tensorrt_build import build_engine, trtexec_command

    onnx_path, engine = bundle_dir / "model.onnx", tmp_path / "m.engine"
    cmd = trtexec_command(onnx_path, engine, "fp16", "features", (798, 128), max_batch=4)
    assert f"--onnx={onnx_path}" in cmd and f"--saveEngine={engine}" in cmd and "--fp16" in cmd
    assert "--maxShapes=features:4x798x128" in cmd and "--minShapes=features:1x798x128" in cmd
    with pytest.raises(BackendError, match="needs a calibration cache"):
        trtexec_command(onnx_path, engine, "int8", "features", (798, 128))
    cache = tmp_path / "calibration.cache"
    cache.write_text("TRT-8601-EntropyCalibration2\n")
    assert f"--calib={cache}" in trtexec_command(onnx_path, engine, "int8", "features", (798, 128), calib_cache=cache)
    if _has_tensorrt():
        pytest.skip("TensorRT present: build_engine would really build")
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    with pytest.raises(BackendError, match="engines are built on the target"):
        build_engine(copy, "fp16")
    assert not list(copy.glob("*.engine"))


def test_build_engine_on_a_gpu(bundle_dir: Path, tmp_path: Path):
    if not _has_tensorrt():
        pytest.skip(NO_TRT + "; build-engine runs on the Jetson (see docs/EXPORT.md)")
    from stethoedge.export.tensorrt_build import build_engine

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    entry = build_engine(copy, "fp16")
    backend = open_backend(load_bundle(copy), entry["name"])
    assert backend.run(load_bundle(copy).selftest.features).shape[1] == 4
    assert np.isfinite(backend.run(load_bundle(copy).selftest.features)).all()


def test_cli_build_engine_and_bad_formats_are_one_line_errors(bundle_dir: Path, trained_run: Path, tmp_path: Path):
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "stethoedge", *map(str, args)], capture_output=True, text=True,
                              timeout=180)

    bad = cli("export", trained_run, "--out", tmp_path / "b", "--formats", "onnx,tflite-int4")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: unknown format 'tflite-int4'; choose from all, onnx, tflite, " + ", ".join(
            __import__("stethoedge.export.formats", fromlist=["KINDS"]).KINDS))
    if _has_tensorrt():
        return
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    proc = cli("build-engine", copy, "--precision", "int8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: TensorRT is not installed here") and proc.stderr.count("\n") == 1


# ---- ONNX Runtime's TensorRT execution provider: engine + timing caches, FP16 when the artifact allows.
# The provider-option construction and its wiring into InferenceSession are tested here; a real
# TensorRT session needs a Jetson / NVIDIA GPU (untested on this CPU machine).
SHA = "0123456789abcdef" + "f" * 48


def test_tensorrt_cache_dir_follows_env_then_home(tmp_path: Path):
    from stethoedge.runtime.backends.onnxruntime_backend import tensorrt_cache_dir

    assert tensorrt_cache_dir(SHA, {"STETHOEDGE_CACHE": str(tmp_path / "c")}) == tmp_path / "c" / "ort-trt" / SHA[:16]
    assert tensorrt_cache_dir(SHA, {"XDG_CACHE_HOME": str(tmp_path / "x")}) == tmp_path / "x" / "stethoedge" / "ort-trt" / SHA[:16]
    assert tensorrt_cache_dir(SHA, {}, home=tmp_path) == tmp_path / ".cache" / "stethoedge" / "ort-trt" / SHA[:16]
    assert tensorrt_cache_dir("f" * 64, {}, home=tmp_path) != tensorrt_cache_dir(SHA, {}, home=tmp_path)


def test_tensorrt_provider_options_enable_both_caches_and_fp16_only_when_allowed(tmp_path: Path):
    from stethoedge.runtime.backends.onnxruntime_backend import tensorrt_provider_options, wants_fp16

    opts = tensorrt_provider_options(tmp_path, fp16=False)
    assert opts == {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(tmp_path),
                    "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(tmp_path),
                    "trt_fp16_enable": "False"}
    assert tensorrt_provider_options(tmp_path, fp16=True)["trt_fp16_enable"] == "True"
    assert all(isinstance(v, str) for v in opts.values()), "the onnxruntime binding parses strings"
    assert wants_fp16("fp16") and not wants_fp16("fp32") and not wants_fp16("int8-dynamic")
    assert wants_fp16("fp32", {"ort_tensorrt": {"fp16": True}})
    assert not wants_fp16("fp32", {"ort_tensorrt": {"fp16": "yes"}}) and not wants_fp16("fp32", {"ort_tensorrt": 1})


class _FakeOrt:
    """Just enough of the onnxruntime module to see what InferenceSession is given."""

    def __init__(self, available: list[str], refuse_options: bool = False) -> None:
        self.available, self.refuse_options, self.calls = available, refuse_options, []
        fake = self

        class SessionOptions:
            pass

        class InferenceSession:
            def __init__(self, path: str, options: object, providers: list) -> None:
                fake.calls.append(providers)
                if fake.refuse_options and any(isinstance(p, tuple) for p in providers):
                    raise RuntimeError("[ERROR] [TensorRT] Invalid TensorRT EP option: trt_timing_cache_path")
                self.providers = [p if isinstance(p, str) else p[0] for p in providers]

            def get_providers(self) -> list[str]:
                return self.providers

            def get_inputs(self) -> list:
                return [type("Input", (), {"name": "features"})()]

        self.SessionOptions, self.InferenceSession = SessionOptions, InferenceSession

    def get_available_providers(self) -> list[str]:
        return self.available


def test_backend_hands_the_tensorrt_options_to_onnxruntime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import sys

    from stethoedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from stethoedge.models import default_bundle

    bundle = load_bundle(default_bundle())
    art = bundle.artifacts["onnx-fp32"]
    monkeypatch.setenv("STETHOEDGE_CACHE", str(tmp_path / "cache"))
    fake = _FakeOrt(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    backend = OnnxRuntimeBackend(bundle, art)
    trt, *rest = fake.calls[-1]
    cache = tmp_path / "cache" / "ort-trt" / art.sha256[:16]
    assert trt == ("TensorrtExecutionProvider", {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache), "trt_fp16_enable": "False"})  # fp32 artifact, no manifest hint
    assert rest == ["CUDAExecutionProvider", "CPUExecutionProvider"] and cache.is_dir()
    assert backend.providers[0] == "TensorrtExecutionProvider"

    cpu = _FakeOrt(["CPUExecutionProvider"])  # no TensorRT: plain names, no cache folder
    monkeypatch.setitem(sys.modules, "onnxruntime", cpu)
    monkeypatch.setenv("STETHOEDGE_CACHE", str(tmp_path / "unused"))
    OnnxRuntimeBackend(bundle, art)
    assert cpu.calls == [["CPUExecutionProvider"]] and not (tmp_path / "unused").exists()

    old = _FakeOrt(["TensorrtExecutionProvider", "CPUExecutionProvider"], refuse_options=True)
    monkeypatch.setitem(sys.modules, "onnxruntime", old)  # a build that rejects an option still starts
    OnnxRuntimeBackend(bundle, art)
    assert old.calls[-1] == ["TensorrtExecutionProvider", "CPUExecutionProvider"] and len(old.calls) == 2
