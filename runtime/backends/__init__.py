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
    """Open the artifact on a backend and run the start-up self-test (features and logits).

    With a named ``backend`` and no ``artifact``, the artifact is the best one that backend can run
    (``artifact_for_backend``).
    """
    if backend != "auto" and backend not in FORMATS_BY_BACKEND:
        raise BackendError(f"no backend {backend!r}; choose from auto, {', '.join(FORMATS_BY_BACKEND)}")
    if artifact is None and backend != "auto":
        artifact = artifact_for_backend(bundle, backend, allow_failed=allow_failed)
    art = bundle.artifact(artifact, allow_failed=allow_failed)
    name = BACKENDS_BY_FORMAT[art.format] if backend == "auto" else backend
    if FORMATS_BY_BACKEND[name] != art.format:
        raise BackendError(f"backend {name} cannot run {art.format} artifact {art.name}; "
                           f"{_suggest(bundle, name)}")
    opened: Backend
    if name == "onnxruntime":
        from stethoedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        opened = OnnxRuntimeBackend(bundle, art, threads=threads)
    elif name == "litert":
        from stethoedge.runtime.backends.litert_backend import LiteRTBackend
        from stethoedge.runtime.native_noise import quiet_native_stderr

        with quiet_native_stderr():  # LiteRT prints an XNNPACK banner on fd 2 as it opens
            opened = LiteRTBackend(bundle, art, threads=threads)
    else:
        from stethoedge.runtime.backends.tensorrt_backend import TensorRTBackend

        opened = TensorRTBackend(bundle, art, threads=threads)
    if selftest:
        check_feature_parity(bundle)
        run_selftest(bundle, opened)
    return opened


def artifact_for_backend(bundle: Bundle, backend: str, allow_failed: bool = False) -> str:
    """The artifact ``backend`` runs when none is named: the bundle's default if the backend can run
    it, else the first passed artifact of the backend's format (with ``allow_failed``, then the
    first failed-verification one); BackendError listing the artifacts and the flags when none fits."""
    wanted = FORMATS_BY_BACKEND[backend]
    default = bundle.artifacts[bundle.typed_manifest.default_artifact]
    if default.format == wanted and (default.status == "passed" or allow_failed):
        return default.name
    matching = [a for a in bundle.artifacts.values() if a.format == wanted]
    for art in matching:
        if art.status == "passed":
            return art.name
    if matching and allow_failed:
        return matching[0].name
    raise BackendError(f"backend {backend} runs {wanted} artifacts and bundle {bundle.root} has no usable one; "
                       f"{_suggest(bundle, backend)}")


def _suggest(bundle: Bundle, backend: str) -> str:
    """Which artifacts exist, and the flags that select one this backend (or another) can run."""
    wanted = FORMATS_BY_BACKEND[backend]
    listed = ", ".join(f"{a.name} ({a.format}{'' if a.status == 'passed' else ', failed verification'})"
                       for a in bundle.artifacts.values())
    passed = [a.name for a in bundle.artifacts.values() if a.format == wanted and a.status == "passed"]
    failed = [a.name for a in bundle.artifacts.values() if a.format == wanted and a.status != "passed"]
    if passed:
        hint = f"add --artifact {passed[0]}"
    elif failed:
        hint = f"add --artifact {failed[0]} --allow-degraded"
    elif backend == "tensorrt":
        hint = "build an engine on the target first (stethoedge build-engine BUNDLE) or use --backend auto"
    else:
        hint = "use --backend auto (or the backend of one of these formats)"
    return f"the bundle has {listed}; {hint}"


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


__all__ = ["Backend", "open_backend", "artifact_for_backend", "run_selftest", "check_feature_parity",
           "available_backends"]
