"""The artifact catalogue: name -> format, precision, file name, self-test tolerance floor."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import util

from stethoedge.runtime.errors import StethoedgeError


@dataclass(frozen=True)
class ArtifactKind:
    """One exportable artifact."""

    name: str
    format: str  # onnx | tflite | tensorrt
    precision: str
    file: str
    tolerance: float  # floor of the self-test tolerance (max abs logit difference)
    calibrated: bool = False  # needs the representative set


KINDS = {k.name: k for k in (
    ArtifactKind("onnx-fp32", "onnx", "fp32", "model.onnx", 1e-3),
    ArtifactKind("onnx-fp16", "onnx", "fp16", "model.fp16.onnx", 2e-2),
    ArtifactKind("onnx-int8-dynamic", "onnx", "int8-dynamic", "model.int8.onnx", 5e-2),
    ArtifactKind("onnx-int8-static", "onnx", "int8-static", "model.int8-static.onnx", 1e-1, calibrated=True),
    ArtifactKind("tflite-fp32", "tflite", "fp32", "model.tflite", 1e-3),
    ArtifactKind("tflite-fp16", "tflite", "fp16", "model.fp16.tflite", 2e-2),
    ArtifactKind("tflite-int8-dynamic", "tflite", "int8-dynamic", "model.int8-dynamic.tflite", 5e-2),
    ArtifactKind("tflite-int8", "tflite", "int8", "model.int8.tflite", 1e-1, calibrated=True),
    ArtifactKind("tensorrt-fp16", "tensorrt", "fp16", "model.fp16.engine", 5e-2),
    ArtifactKind("tensorrt-int8", "tensorrt", "int8", "model.int8.engine", 0.25, calibrated=True),
)}
ALIASES = {"onnx": "onnx-fp32", "tflite": "tflite-fp32"}


def _importable(*modules: str) -> bool:
    return all(util.find_spec(m) is not None for m in modules)


def buildable_here() -> list[str]:
    """Artifact names this machine can build at export time (TensorRT engines are built on the target)."""
    names = [n for n, k in KINDS.items() if k.format == "onnx"] if _importable("onnxruntime", "onnx") else []
    if _importable("litert_torch", "ai_edge_litert", "ai_edge_quantizer"):
        names += [n for n, k in KINDS.items() if k.format == "tflite"]
    return names  # tensorrt-*: never at export; ``stethoedge build-engine`` on the target


def resolve_formats(formats: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``None``/"all" -> everything buildable here; else a validated list (aliases onnx, tflite) in catalogue order."""
    if formats is None or formats == "all" or formats == ["all"]:
        return buildable_here()
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    names = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name = ALIASES.get(item, item)
        if name not in KINDS:
            raise StethoedgeError(f"unknown format {item!r}; choose from all, onnx, tflite, {', '.join(KINDS)}")
        names.append(name)
    if not names:
        raise StethoedgeError("no formats given")
    return [n for n in KINDS if n in names]
