"""Build TensorRT engines ON the target from a bundle's ONNX (``stethoedge build-engine``).

TensorRT Python API first (INT8 through an IInt8EntropyCalibrator2 fed the bundle's
representative set, writing/reusing calibration.cache), ``trtexec`` as the fallback. The engine
is added to the bundle's manifest with the environment it was built in (TensorRT, CUDA,
JetPack/L4T, GPU) so another device refuses it with the rebuild command. Imports no torch.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.calibration.tensorrt_calibrator import CACHE_NAME, cache_usable, entropy_calibrator
from stethoedge.runtime.backends.tensorrt_backend import device_environment, gpu_name
from stethoedge.runtime.bundle import MANIFEST_NAME, load_bundle, sha256_file, write_manifest
from stethoedge.runtime.errors import BackendError, BundleError
from stethoedge.runtime.outputs import atomic_write_bytes

PRECISIONS = ("fp16", "int8")
TRTEXEC_PATHS = ("trtexec", "/usr/src/tensorrt/bin/trtexec")
ENGINE_TOLERANCE = {"fp16": 5e-2, "int8": 0.25}


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


def build_engine(bundle_path: str | os.PathLike, precision: str = "fp16", max_batch: int = 8,
                 use_trtexec: bool = False) -> dict[str, Any]:
    """Build ``tensorrt-<precision>`` from the bundle's ONNX fp32 on this device and add it to the manifest."""
    if precision not in PRECISIONS:
        raise BackendError(f"unknown TensorRT precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    bundle = load_bundle(bundle_path)
    env = device_environment(gpu=gpu_name())
    if not env["tensorrt"] and (not use_trtexec or find_trtexec() is None):
        raise BackendError("TensorRT is not installed here: engines are built on the target (a Jetson with JetPack "
                           "or a machine with an NVIDIA GPU); run this command there")
    onnx = bundle.path_of(bundle.artifact("onnx-fp32", allow_failed=True))
    name, file = f"tensorrt-{precision}", f"model.{precision}.engine"
    engine, cache = bundle.root / file, bundle.root / CACHE_NAME
    input_name, input_shape = bundle.manifest["input"]["name"], tuple(bundle.spec.input_shape)
    calib = bundle.manifest.get("calibration")
    features = None
    if precision == "int8" and calib and not (env["tensorrt"] and cache_usable(cache, env["tensorrt"])):
        with np.load(bundle.root / calib["file"], allow_pickle=False) as data:
            features = data["features"].astype(np.float32)
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
    entry = {"name": name, "file": file, "format": "tensorrt", "precision": precision,
             "sha256": sha256_file(engine), "size_bytes": engine.stat().st_size,
             "tolerance": ENGINE_TOLERANCE[precision], "status": "passed",
             "verification": {"note": "built on the target; verified by the start-up self-test"},
             "engine": {**env, "builder": builder, "max_batch": max_batch,
                        "build_seconds": round(time.perf_counter() - t0, 1),
                        "calibration_cache": CACHE_NAME if precision == "int8" else None}}
    add_artifact(bundle.root, entry)
    return entry


def add_artifact(bundle_root: Path, entry: dict[str, Any]) -> None:
    """Add or replace one artifact entry in a bundle's manifest (atomic; drops a stale signature)."""
    manifest = json.loads((bundle_root / MANIFEST_NAME).read_bytes().decode("utf-8-sig"))
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["name"] != entry["name"]] + [entry]
    cache = bundle_root / CACHE_NAME
    if cache.is_file():
        manifest["calibration_cache"] = {"file": CACHE_NAME, "sha256": sha256_file(cache)}
    write_manifest(bundle_root, manifest)
    sig = bundle_root / "manifest.sig"
    if sig.exists():
        sig.unlink()  # the manifest changed: the owner must re-sign (stethoedge sign)
    try:
        load_bundle(bundle_root)
    except BundleError as exc:  # pragma: no cover - write_manifest validated it
        raise BundleError(f"the manifest written for {entry['name']} does not load: {exc}") from None


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
