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


#: Op types quantized by default in static QDQ: the weight-bearing ones. Quantizing the attention
#: Softmax output (a fixed 0..1 int8 scale) with ~950 tokens rounds every probability to zero.
STATIC_OP_TYPES = ("MatMul", "Conv", "Gemm")


def convert_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and compute, float32 input/output (onnxruntime.transformers.float16)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    toposort(model.graph)  # the converter appends the input Casts last; checkers and TensorRT want order
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def toposort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs."""
    produced_by = {out: i for i, n in enumerate(graph.node) for out in n.output}
    order: list[int] = []
    state: dict[int, int] = {}  # 1 visiting, 2 done

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if expanded:
                state[j] = 2
                order.append(j)
                continue
            if state.get(j):
                continue
            state[j] = 1
            stack.append((j, True))
            for name in graph.node[j].input:
                k = produced_by.get(name)
                if k is not None and not state.get(k):
                    stack.append((k, False))

    for i in range(len(graph.node)):
        visit(i)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def weight_nodes(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names of the ``op_types`` nodes that multiply by a weight (an initializer input).

    The attention's activation x activation MatMuls (Q.K^T, P.V) are left in float: their inputs
    (softmax probabilities among them) lose too much in a per-tensor int8 scale.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    # weights reach a MatMul through a Transpose/Cast of an initializer in some exports
    weights |= {n.output[0] for n in graph.node if n.op_type in ("Transpose", "Cast") and n.input[0] in weights}
    return [n.name for n in graph.node if n.op_type in op_types and any(i in weights for i in n.input)]


def quantize_int8_static(src: Path, dst: Path, reader, op_types: tuple[str, ...] | None = STATIC_OP_TYPES,
                         per_channel: bool = True, weights_only_nodes: bool = True) -> Path:
    """Static INT8 (QDQ, int8 weights and activations) calibrated by ``reader`` (a CalibrationDataReader).

    By default only weight-bearing MatMul/Conv/Gemm nodes are quantized. ``op_types=None``
    quantizes every node and op type onnxruntime supports (its default), which collapses an AST's
    attention; it exists so that the verification gate can be shown to catch it.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from stethoedge.calibration.ort_reader import stride_for

    prepped = dst.with_name(dst.stem + ".prep.onnx")
    try:
        quant_pre_process(str(src), str(prepped), skip_symbolic_shape=True)
        nodes = weight_nodes(prepped, op_types) if op_types and weights_only_nodes else None
        quantize_static(str(prepped), str(dst), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types) if op_types else None, per_channel=per_channel,
                        nodes_to_quantize=nodes,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        # fold ranges every few batches instead of holding every activation in memory
                        extra_options={"CalibStridedMinMax": stride_for(len(reader))})
    finally:
        prepped.unlink(missing_ok=True)
    return dst
