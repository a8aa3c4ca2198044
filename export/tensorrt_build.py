"""Build TensorRT engines ON the target from a bundle's ONNX (``stethoedge build-engine``).

TensorRT Python API first (INT8 through an IInt8EntropyCalibrator2 fed the bundle's
representative set, writing/reusing calibration.cache), ``trtexec`` as the fallback. The engine
runs the same verification gate as every exported artifact (export/verify.py, on the bundle's
self-test windows) and is recorded, with the environment it was built in (TensorRT, CUDA,
JetPack/L4T, GPU), in the device-local overlay ``engines.json`` pinned to the signed ONNX's
sha256. The signed manifest.json is never rewritten, so the owner's manifest.sig stays valid
and ``--require-signature`` devices can use their own engines. Imports no torch.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stethoedge.calibration.tensorrt_calibrator import CACHE_NAME, cache_usable, entropy_calibrator
from stethoedge.runtime.backends.tensorrt_backend import device_environment, gpu_name
from stethoedge.runtime.bundle import (
    OVERLAY_NAME, Artifact, Bundle, EngineEntry, EngineEnv, FileRef, Overlay, load_bundle, new_overlay, read_verified,
    sha256_file, write_overlay,
)
from stethoedge.runtime.errors import BackendError, BundleError
from stethoedge.runtime.outputs import atomic_write_bytes

PRECISIONS = ("fp16", "int8")
TRTEXEC_PATHS = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
ENGINE_TOLERANCE = {"fp16": 5e-2, "int8": 0.25}
#: INT8 calibration cache written on the device when the signed manifest pins none usable here
#: (a cache the signed manifest pins is read, never overwritten).
DEVICE_CACHE_NAME = "engines.calibration.cache"
#: opens a runner (``.run(features) -> logits``) for an engine artifact; default: the TensorRT backend
RunnerFactory = Callable[[Bundle, Artifact], Any]


def find_trtexec() -> str | None:
    """Path of trtexec (PATH, then JetPack's /usr/src/tensorrt/bin), or None."""
    for candidate in TRTEXEC_PATHS:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def trtexec_command(onnx: Path, engine: Path, precision: str, input_name: str, input_shape: tuple[int, ...],
                    max_batch: int = 8, calib_cache: Path | None = None) -> list[str]:
    """The trtexec command line for an engine of ``precision`` with a dynamic batch profile."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown TensorRT precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    dims = "x".join(str(d) for d in input_shape)
    cmd = [find_trtexec() or "trtexec", f"--onnx={onnx}", f"--saveEngine={engine}",
           f"--minShapes={input_name}:1x{dims}", f"--optShapes={input_name}:1x{dims}",
           f"--maxShapes={input_name}:{max_batch}x{dims}", "--fp16"]
    if precision == "int8":
        if calib_cache is None or not calib_cache.is_file():
            raise BackendError("trtexec INT8 needs a calibration cache; build once with the TensorRT Python API "
                               f"(it writes {CACHE_NAME}) or copy one made by the same TensorRT version")
        cmd += ["--int8", f"--calib={calib_cache}"]
    return cmd


def _build_python(onnx: Path, engine: Path, precision: str, input_name: str, input_shape: tuple[int, ...],
                  max_batch: int, calib_features: np.ndarray | None, cache: Path) -> None:
    import tensorrt as trt  # type: ignore[import-not-found]

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT could not parse {onnx.name}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *input_shape), (1, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if calib_features is None and not cache.is_file():
            raise BackendError("INT8 needs the bundle's representative set (calibration.npz) or a calibration cache")
        config.int8_calibrator = entropy_calibrator(calib_features, cache, input_name)
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build the {precision} engine (see the log above)")
    atomic_write_bytes(engine, bytes(serialized))


def _calibration_features(bundle: Bundle) -> np.ndarray | None:
    """The representative set (calibration.npz), its bytes checked against the manifest's sha256
    before numpy reads them (read once: what is hashed is what is parsed)."""
    calib = bundle.typed_manifest.calibration
    if calib is None:
        return None
    data = read_verified(bundle.root, calib.file, calib.sha256)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return arrays["features"].astype(np.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{bundle.root / calib.file}: unreadable calibration set ({exc})") from None


def _calibration_cache(bundle: Bundle, trt_version: str | None) -> tuple[Path, bool]:
    """(cache path, usable as is). A cache the signed manifest pins (verified by load_bundle) is reused
    when this TensorRT wrote it; otherwise calibration writes the device's own cache."""
    signed = bundle.typed_manifest.calibration_cache
    if signed is not None:
        path = bundle.root / signed.file
        if trt_version and cache_usable(path, trt_version):
            return path, True
    own = bundle.root / DEVICE_CACHE_NAME
    if own.is_file() and (bundle.overlay is None or bundle.overlay.calibration_cache is None):
        own.unlink()  # not pinned by any overlay: never trust it
    return own, bool(trt_version) and cache_usable(own, trt_version)


def _tensorrt_runner(bundle: Bundle, artifact: Artifact) -> Any:
    from stethoedge.runtime.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(bundle, artifact)


def gate_engine(bundle: Bundle, artifact: Artifact, runner_factory: RunnerFactory | None = None) -> dict[str, Any]:
    """Run the export verification gate (export/verify.py) on an engine: the bundle's self-test windows
    against their PyTorch logits, plus the artifact's logit tolerance. Returns the verification dict
    (``passed`` included); an engine that cannot even be opened fails with the reason."""
    from stethoedge.export.verify import Gate, verify_artifact

    gate_cfg = bundle.typed_manifest.extra.get("gate") or {}
    gate = Gate(min_agreement=float(gate_cfg.get("min_agreement", Gate.min_agreement)),
                max_score_drop=float(gate_cfg.get("max_score_drop", Gate.max_score_drop)))
    try:
        runner = (runner_factory or _tensorrt_runner)(bundle, artifact)
        result = verify_artifact(runner.run, bundle.selftest.features, bundle.selftest.logits, gate=gate)
    except (BackendError, BundleError, RuntimeError, ValueError) as exc:
        return {"passed": False, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                "windows": int(bundle.selftest.features.shape[0]), "set": "selftest"}
    within = result["max_logit_diff"] <= artifact.tolerance
    result.update({"set": "selftest", "tolerance": artifact.tolerance, "within_tolerance": bool(within),
                   "passed": bool(result["passed"] and within)})
    return result


def build_engine(bundle_path: str | os.PathLike, precision: str = "fp16", max_batch: int = 8,
                 use_trtexec: bool = False, runner_factory: RunnerFactory | None = None) -> dict[str, Any]:
    """Build ``tensorrt-<precision>`` from the bundle's signed ONNX fp32 on this device, gate it, and
    record it in the engines.json overlay (the signed manifest is left untouched)."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown TensorRT precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    bundle = load_bundle(bundle_path)  # verifies every pinned file, calibration set and cache included
    env = device_environment(gpu=gpu_name())
    if not env["tensorrt"] and (not use_trtexec or find_trtexec() is None):
        raise BackendError("TensorRT is not installed here: engines are built on the target (a Jetson with JetPack "
                           "or a machine with an NVIDIA GPU); run this command there")
    if not env["gpu"]:
        raise BackendError("cannot determine this device's GPU name (nvidia-smi --query-gpu=name and libcudart "
                           "both failed); an engine must record the GPU it was built for. Check the NVIDIA driver")
    onnx_art = bundle.artifact("onnx-fp32", allow_failed=True)
    onnx = bundle.path_of(onnx_art)
    name, file = f"tensorrt-{precision}", f"model.{precision}.engine"
    engine = bundle.root / file
    input_name, input_shape = bundle.typed_manifest.input.name, tuple(bundle.spec.input_shape)
    cache, cache_ready = _calibration_cache(bundle, env["tensorrt"])
    features = _calibration_features(bundle) if precision == "int8" and not cache_ready else None
    t0 = time.perf_counter()
    if env["tensorrt"] and not use_trtexec:
        _build_python(onnx, engine, precision, input_name, input_shape, max_batch, features, cache)
        builder = "tensorrt-python"
    else:
        cmd = trtexec_command(onnx, engine, precision, input_name, input_shape, max_batch, cache)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BackendError(f"trtexec failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        builder = "trtexec"
        found = re.search(r"TensorRT version:\s*([\d.]+)", proc.stdout + proc.stderr)
        if found and not env["tensorrt"]:
            env["tensorrt"] = found.group(1)
    if not env["cuda"]:
        raise BackendError("cannot determine this device's CUDA version (/usr/local/cuda/version.json); an engine "
                           "must record the CUDA it was built with")
    built = EngineEntry(**EngineEnv.from_dict(env).to_dict(), builder=builder, max_batch=max_batch,
                        onnx_sha256=onnx_art.sha256, build_seconds=round(time.perf_counter() - t0, 1),
                        calibration_cache=cache.name if precision == "int8" else None)
    entry = Artifact(name, file, "tensorrt", precision, sha256_file(engine), engine.stat().st_size,
                     ENGINE_TOLERANCE[precision], "failed-verification", engine=built)
    result = gate_engine(bundle, entry, runner_factory)
    entry = replace(entry, verification=result, status="passed" if result["passed"] else "failed-verification")
    add_engine(bundle.root, entry, onnx_artifact=onnx_art.name, base=bundle)
    return entry.to_dict()


def add_engine(bundle_root: Path, entry: Artifact | dict[str, Any], onnx_artifact: str = "onnx-fp32",
               base: Bundle | None = None) -> Overlay:
    """Add or replace one engine entry in the bundle's engines.json overlay (atomic; manifest.json and
    manifest.sig are not touched). A device-written calibration cache is pinned there too.

    ``base``: the bundle as loaded before the build (its overlay is extended; the build may have
    rewritten the device's calibration cache, so the bundle is not re-verified before writing)."""
    bundle = base if base is not None else load_bundle(bundle_root)
    if not isinstance(entry, Artifact):
        entry = Artifact.from_json(entry, OVERLAY_NAME, "engine")
    overlay = bundle.overlay if bundle.overlay is not None else new_overlay(bundle.typed_manifest, onnx_artifact)
    overlay = overlay.with_engine(entry)
    own_cache = Path(bundle_root) / DEVICE_CACHE_NAME
    if own_cache.is_file():
        overlay = replace(overlay, calibration_cache=FileRef(DEVICE_CACHE_NAME, sha256_file(own_cache)))
    write_overlay(Path(bundle_root), overlay)
    try:
        load_bundle(bundle_root)
    except BundleError as exc:  # pragma: no cover - write_overlay validated it
        raise BundleError(f"the {OVERLAY_NAME} written for {entry.name} does not load: {exc}") from None
    return overlay


def lint_onnx(path: str | os.PathLike, timeout: float = 300) -> dict[str, Any]:
    """``polygraphy check lint`` of an ONNX file (ONNX checker + ONNX Runtime node by node, no TensorRT
    needed): {"passed": bool, "failing": [...], "entries": [...]}. Run before shipping ONNX to a Jetson."""
    import sys
    import tempfile

    exe = Path(sys.executable).with_name("polygraphy")
    cmd = [str(exe)] if exe.is_file() else [shutil.which("polygraphy") or "polygraphy"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "lint.json"
        try:
            proc = subprocess.run(cmd + ["check", "lint", str(path), "-o", str(report)], capture_output=True,
                                  text=True, timeout=timeout)
        except FileNotFoundError:
            raise BackendError("polygraphy is not installed: pip install polygraphy onnx-graphsurgeon") from None
        if not report.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise BackendError(f"polygraphy lint produced no report: {' | '.join(tail)}")
        data = json.loads(report.read_text())
    failing = data.get("summary", {}).get("failing", [])
    entries = data.get("lint_entries", [])
    return {"passed": proc.returncode == 0 and not failing and not any(e.get("level") == "exception" for e in entries),
            "failing": failing, "entries": entries}
