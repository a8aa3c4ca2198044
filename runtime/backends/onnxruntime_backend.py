"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when the installed build has them)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stethoedge.runtime.bundle import Artifact, Bundle
from stethoedge.runtime.errors import BackendError

#: Preferred order; only those the installed onnxruntime build offers are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


INSTALL = ("pip install onnxruntime (aarch64 wheels on PyPI for Pi OS 64-bit); on a Jetson the "
           "onnxruntime-gpu wheel for your JetPack adds the CUDA and TensorRT execution providers")


class OnnxModel:
    """One InferenceSession over an ONNX file (CPU, or CUDA/TensorRT providers when the build has them)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> None:
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
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not load {self.file}: {str(exc).splitlines()[0]}") from None
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
        super().__init__(bundle.path_of(artifact), threads, providers)
        self.artifact = artifact
