"""LiteRT (TFLite) backend: ai-edge-litert's interpreter, tflite-runtime as a fallback.

tflite-runtime 2.14 was measured returning WRONG logits for a dynamic-range model without any
error, so whichever interpreter loads, the bundle's self-test vector decides whether it may run.
With the artifacts litert-torch 0.10 writes (benchmarks/tflite_runtime_check.sh on x86-64 and
benchmarks/arm64_smoke.sh on emulated arm64; numpy < 2, which tflite-runtime needs), tflite-runtime
2.14 passes the self-test of fp32, fp16 and static int8 files and cannot load dynamic-range int8 ones
(FULLY_CONNECTED version 12 is newer than it); ai-edge-litert runs all of them.
Static INT8 models take int8 input and give int8 output; this backend quantizes and
dequantizes with the tensors' own scale and zero point, so callers always pass float32.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from stethoedge.runtime.bundle import Artifact, Bundle
from stethoedge.runtime.errors import BackendError

INSTALL = "pip install ai-edge-litert (aarch64 wheels on PyPI for Pi OS 64-bit; JetPack: same wheel)"


def load_interpreter_class() -> tuple[Any, str, str]:
    """(Interpreter class, module name, version): ai-edge-litert first, then tflite-runtime."""
    from importlib import metadata

    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert", metadata.version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "tflite-runtime", metadata.version("tflite-runtime")
    except ImportError:
        raise BackendError(f"no LiteRT interpreter is installed: {INSTALL}") from None


class TFLiteModel:
    """One interpreter over a .tflite file; batches run window by window (the file has batch 1)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        interpreter_cls, self.library, self.version = load_interpreter_class()
        try:
            self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads or None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            hint = ("; tflite-runtime (last release 2.14) predates this file's converter: "
                    "pip install ai-edge-litert" if self.library == "tflite-runtime" else "")
            raise BackendError(f"{self.library} could not load {path}: {str(exc).splitlines()[0]}{hint}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.path = str(path)

    def _one(self, window: np.ndarray) -> np.ndarray:
        x = window[None].astype(np.float32)
        if self.input["dtype"] != np.float32:
            scale, zero = self.input["quantization"]
            info = np.iinfo(self.input["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])[0]
        if self.output["dtype"] != np.float32:
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for features (batch, frames, mels)."""
        features = np.asarray(features, dtype=np.float32)
        expected = tuple(self.input["shape"][1:])
        if features.ndim != 3 or features.shape[1:] != expected:
            raise BackendError(f"{self.path}: features of shape {features.shape}, the model takes (batch, *{expected})")
        try:
            return np.stack([self._one(w) for w in features])
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{self.library} failed on {self.path}: {str(exc).splitlines()[0]}") from None


class LiteRTBackend(TFLiteModel):
    """A bundle's TFLite artifact on the LiteRT interpreter."""

    name = "litert"

    def __init__(self, bundle: Bundle, artifact: Artifact, threads: int | None = None) -> None:
        if artifact.format != "tflite":
            raise BackendError(f"artifact {artifact.name} is {artifact.format}, not tflite")
        super().__init__(bundle.path_of(artifact), threads)
        self.artifact = artifact
