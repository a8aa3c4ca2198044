"""ONNX Runtime backend (CPU; CUDA / TensorRT execution providers when the installed build has them)."""
from __future__ import annotations

import numpy as np

from stethoedge.runtime.bundle import Artifact, Bundle
from stethoedge.runtime.errors import BackendError

#: Preferred order; only those the installed onnxruntime build offers are used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend:
    """One InferenceSession over an ONNX artifact."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, artifact: Artifact, threads: int | None = None,
                 providers: list[str] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError("onnxruntime is not installed: pip install 'stethoedge[runtime]'") from exc
        if artifact.format != "onnx":
            raise BackendError(f"artifact {artifact.name} is {artifact.format}, not onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = providers or [p for p in PROVIDER_PREFERENCE if p in available]
        self.artifact = artifact
        try:
            self.session = ort.InferenceSession(str(bundle.path_of(artifact)), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BackendError(f"onnxruntime could not load {artifact.file}: {str(exc).splitlines()[0]}") from None
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for features (batch, frames, mels)."""
        try:
            return self.session.run(None, {self.input_name: np.ascontiguousarray(features, dtype=np.float32)})[0]
        except Exception as exc:
            raise BackendError(f"onnxruntime failed on {self.artifact.file}: {str(exc).splitlines()[0]}") from None
