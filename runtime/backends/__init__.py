"""Inference backends behind one call: ``open_backend(bundle, artifact, backend)``.

Backends: "onnxruntime" (onnx artifacts), "litert" (tflite; ai-edge-litert, fallback
tflite-runtime) and "tensorrt" (engines built on the target). Every backend runs the bundle's
self-test vector at start-up and refuses to run on disagreement.
"""
from __future__ import annotations

from importlib import metadata
from typing import Any

from stethoedge.runtime.backends.base import Backend, check_feature_parity, run_selftest
from stethoedge.runtime.bundle import Bundle
from stethoedge.runtime.errors import BackendError

BACKENDS_BY_FORMAT = {"onnx": "onnxruntime", "tflite": "litert", "tensorrt": "tensorrt"}
FORMATS_BY_BACKEND = {v: k for k, v in BACKENDS_BY_FORMAT.items()}


def open_backend(bundle: Bundle, artifact: str | None = None, backend: str = "auto",
                 threads: int | None = None, allow_failed: bool = False, selftest: bool = True) -> Backend:
    """Open the artifact on a backend and run the start-up self-test (features and logits)."""
    art = bundle.artifact(artifact, allow_failed=allow_failed)
    name = BACKENDS_BY_FORMAT.get(art.format) if backend == "auto" else backend
    if name not in FORMATS_BY_BACKEND:
        raise BackendError(f"no backend {backend!r}; choose from auto, {', '.join(FORMATS_BY_BACKEND)}")
    if FORMATS_BY_BACKEND[name] != art.format:
        raise BackendError(f"backend {name} cannot run {art.format} artifact {art.name}")
    opened: Backend
    if name == "onnxruntime":
        from stethoedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        opened = OnnxRuntimeBackend(bundle, art, threads=threads)
    elif name == "litert":
        from stethoedge.runtime.backends.litert_backend import LiteRTBackend

        opened = LiteRTBackend(bundle, art, threads=threads)
    else:
        from stethoedge.runtime.backends.tensorrt_backend import TensorRTBackend

        opened = TensorRTBackend(bundle, art, threads=threads)
    if selftest:
        check_feature_parity(bundle)
        run_selftest(bundle, opened)
    return opened


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def available_backends() -> dict[str, dict[str, Any]]:
    """name -> {"available", "version", "detail", "install"} for every backend (for ``doctor``)."""
    from stethoedge.runtime.backends import litert_backend, onnxruntime_backend, tensorrt_backend

    out: dict[str, dict[str, Any]] = {}
    try:
        import onnxruntime as ort

        out["onnxruntime"] = {"available": True, "version": ort.__version__,
                              "detail": "providers: " + ", ".join(ort.get_available_providers()),
                              "install": onnxruntime_backend.INSTALL}
    except ImportError as exc:
        out["onnxruntime"] = {"available": False, "version": None, "detail": f"not importable ({exc})",
                              "install": onnxruntime_backend.INSTALL}
    try:
        _, lib, version = litert_backend.load_interpreter_class()
        detail = f"interpreter from {lib}" + (
            " (tflite-runtime: trusted only after the bundle self-test passes)" if lib == "tflite-runtime" else "")
        out["litert"] = {"available": True, "version": version, "detail": detail, "install": litert_backend.INSTALL}
    except BackendError as exc:
        out["litert"] = {"available": False, "version": None, "detail": str(exc), "install": litert_backend.INSTALL}
    trt = tensorrt_backend.tensorrt_version()
    if trt is None:
        detail = "tensorrt Python module not importable (engines are built and run on a Jetson / NVIDIA GPU)"
    elif _version("polygraphy") is None:
        detail = "tensorrt importable but polygraphy (used to run engines) is missing"
    else:
        env = tensorrt_backend.device_environment(gpu=tensorrt_backend.gpu_name())
        detail = f"CUDA {env['cuda']}, L4T {env['l4t']}, JetPack {env['jetpack']}, GPU {env['gpu']}"
    out["tensorrt"] = {"available": trt is not None and _version("polygraphy") is not None, "version": trt,
                       "detail": detail, "install": tensorrt_backend.INSTALL}
    return out


__all__ = ["Backend", "open_backend", "run_selftest", "check_feature_parity", "available_backends"]
