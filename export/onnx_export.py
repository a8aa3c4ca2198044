"""PyTorch AST -> ONNX (fp32), and ONNX Runtime dynamic INT8 quantization."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

#: Legacy TorchScript exporter, opset 17: its graphs go through onnxruntime.quantization's shape
#: inference cleanly (the dynamo exporter's value_info made quantize_dynamic fail here).
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "features", "logits"


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, int]) -> Path:
    """Export ``model`` with a dynamic batch axis; input (batch, frames, mels) -> logits (batch, classes)."""
    model = model.eval()
    example = torch.zeros(1, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
    import onnx

    onnx.checker.check_model(str(path))
    return path


def quantize_int8_dynamic(src: Path, dst: Path) -> Path:
    """Dynamic-range INT8 (weights int8, activations quantized on the fly) with onnxruntime.quantization."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dst.with_name(dst.stem + ".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        quantize_dynamic(str(prepped), str(dst), weight_type=QuantType.QInt8)
    finally:
        prepped.unlink(missing_ok=True)
    return dst
