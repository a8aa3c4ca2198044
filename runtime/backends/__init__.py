"""Inference backends behind one call: ``open_backend(bundle, artifact, backend)``."""
from __future__ import annotations

from stethoedge.runtime.backends.base import Backend, check_feature_parity, run_selftest
from stethoedge.runtime.bundle import Bundle
from stethoedge.runtime.errors import BackendError

BACKENDS_BY_FORMAT = {"onnx": "onnxruntime"}


def open_backend(bundle: Bundle, artifact: str | None = None, backend: str = "auto",
                 threads: int | None = None, allow_failed: bool = False, selftest: bool = True) -> Backend:
    """Open the artifact on a backend and run the start-up self-test (features and logits)."""
    art = bundle.artifact(artifact, allow_failed=allow_failed)
    name = BACKENDS_BY_FORMAT.get(art.format) if backend == "auto" else backend
    if name == "onnxruntime":
        from stethoedge.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        opened: Backend = OnnxRuntimeBackend(bundle, art, threads=threads)
    else:
        raise BackendError(f"no backend {backend!r} for {art.format} artifact {art.name}")
    if selftest:
        check_feature_parity(bundle)
        run_selftest(bundle, opened)
    return opened


__all__ = ["Backend", "open_backend", "run_selftest", "check_feature_parity"]
