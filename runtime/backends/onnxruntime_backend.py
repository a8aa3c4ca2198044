"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when the installed build has them).

On a Jetson the onnxruntime-gpu build puts the TensorRT execution provider first. Without an engine
cache it rebuilds a TensorRT engine on every start (minutes); ``tensorrt_provider_options`` turns
on the engine and timing caches under ``tensorrt_cache_dir`` (one folder per artifact sha256) and
FP16 when the artifact is an fp16 one or the manifest asks for it (``"ort_tensorrt": {"fp16": true}``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from stethoedge.runtime.bundle import Artifact, Bundle
from stethoedge.runtime.errors import BackendError

#: Preferred order; only those the installed onnxruntime build offers are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


INSTALL = ("pip install onnxruntime (aarch64 wheels on PyPI for Pi OS 64-bit); on a Jetson the "
           "onnxruntime-gpu wheel for your JetPack adds the CUDA and TensorRT execution providers")

log = logging.getLogger(__name__)
TENSORRT_EP = "TensorrtExecutionProvider"
#: Overrides the cache root (default ~/.cache/stethoedge, or $XDG_CACHE_HOME/stethoedge).
CACHE_ENV = "STETHOEDGE_CACHE"
#: An ONNX Runtime ``providers`` entry: a name, or (name, options).
ProviderEntry = Union[str, tuple[str, dict[str, str]]]


def tensorrt_cache_dir(artifact_sha256: str, environ: Mapping[str, str] | None = None,
                       home: Path | None = None) -> Path:
    """``$STETHOEDGE_CACHE/ort-trt/<sha prefix>`` (else ``~/.cache/stethoedge/ort-trt/<sha prefix>``).

    One folder per artifact (the first 16 hex digits of its sha256): a new bundle never picks up
    an engine built for another model, and the folder can be deleted to force a rebuild.
    """
    env = os.environ if environ is None else environ
    if env.get(CACHE_ENV):
        root = Path(env[CACHE_ENV]).expanduser()
    elif env.get("XDG_CACHE_HOME"):
        root = Path(env["XDG_CACHE_HOME"]).expanduser() / "stethoedge"
    else:
        root = (home if home is not None else Path.home()) / ".cache" / "stethoedge"
    return root / "ort-trt" / (artifact_sha256[:16] or "unknown")


def wants_fp16(precision: str, manifest: Mapping[str, Any] | None = None) -> bool:
    """TensorRT FP16 kernels: for an fp16 artifact, or when the manifest says ``"ort_tensorrt": {"fp16": true}``.

    Never silently for an fp32 artifact: FP16 changes its numbers (the start-up self-test would catch
    a drift beyond the artifact's tolerance, but it is the bundle author's call).
    """
    hint = (manifest or {}).get("ort_tensorrt")
    return precision == "fp16" or (isinstance(hint, Mapping) and hint.get("fp16") is True)


def tensorrt_provider_options(cache_dir: Path, fp16: bool) -> dict[str, str]:
    """TensorrtExecutionProvider options: engine + timing caches in ``cache_dir``, FP16 if asked.

    Values are the strings the onnxruntime Python binding parses ("True"/"False", a path).
    """
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_fp16_enable": "True" if fp16 else "False",
    }


def session_providers(chosen: Sequence[str], trt_options: dict[str, str] | None) -> list[ProviderEntry]:
    """``chosen`` with the TensorRT entry given its options (when TensorRT is chosen and options are set)."""
    return [(p, dict(trt_options)) if p == TENSORRT_EP and trt_options else p for p in chosen]


def _usable_cache(options: dict[str, str] | None) -> dict[str, str] | None:
    """``options`` once its cache folder exists; None (TensorRT without caches) if it cannot be made."""
    if not options:
        return None
    cache = Path(options["trt_engine_cache_path"])
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.warning("TensorRT engine cache %s unusable (%s); engines are rebuilt on every start", cache,
                    exc.strerror or exc)
        return {k: v for k, v in options.items() if not k.startswith(("trt_engine_cache", "trt_timing_cache"))}
    return options


class OnnxModel:
    """One InferenceSession over an ONNX file (CPU, or CUDA/TensorRT providers when the build has them)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 trt_options: dict[str, str] | None = None) -> None:
        """``trt_options``: TensorrtExecutionProvider options, used only when that provider is chosen."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"onnxruntime is not installed: {INSTALL}") from exc
        self.file = Path(path).name
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = providers or [p for p in PROVIDER_PREFERENCE if p in available]
        entries = session_providers(chosen, _usable_cache(trt_options) if TENSORRT_EP in chosen else None)
        try:
            try:
                self.session = ort.InferenceSession(str(path), options, providers=entries)
            except Exception as exc:
                if entries == list(chosen):
                    raise
                # an onnxruntime-gpu build that rejects one of the TensorRT options: start without them
                log.warning("TensorRT provider options refused (%s); starting without the engine cache",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.session = ort.InferenceSession(str(path), options, providers=list(chosen))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not load {self.file}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for features (batch, frames, mels)."""
        try:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(features, dtype=np.float32)})[0]
        except Exception as exc:
            raise BackendError(f"onnxruntime failed on {self.file}: {str(exc).splitlines()[0]}") from None


class OnnxRuntimeBackend(OnnxModel):
    """A bundle's ONNX artifact on ONNX Runtime."""

    def __init__(self, bundle: Bundle, artifact: Artifact, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        if artifact.format != "onnx":
            raise BackendError(f"artifact {artifact.name} is {artifact.format}, not onnx")
        trt = tensorrt_provider_options(tensorrt_cache_dir(artifact.sha256),
                                        wants_fp16(artifact.precision, bundle.manifest))
        super().__init__(bundle.path_of(artifact), threads, providers, trt_options=trt)
        self.artifact = artifact
