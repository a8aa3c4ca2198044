"""PyTorch -> LiteRT (.tflite) directly with litert-torch, in four precisions.

fp32: plain conversion. fp16: fp16 weights (ai-edge-quantizer float casting of the fp32 file,
float compute). int8-dynamic: PT2E dynamic-range (int8 weights, activations quantized on the
fly). int8: PT2E static int8 calibrated on the representative set; the PT2E quantizer annotates
only linear/conv/add/pool patterns, so the attention softmax and matmuls stay float (the
all-int8 ai-edge-quantizer recipe gave constant zeros on an AST here). The file then takes int8
input and gives int8 output; the LiteRT backend (de)quantizes with the tensors' parameters.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stethoedge.runtime.outputs import output_path

TFLITE_PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


def _quiet() -> None:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    logging.getLogger("absl").setLevel(logging.ERROR)


def _save(edge_model, path: Path) -> Path:
    with output_path(path) as tmp:
        edge_model.export(str(tmp))
    return path


def _pt2e(model: nn.Module, example: tuple[torch.Tensor], dynamic: bool, calibration: np.ndarray | None):
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    graph = torch.export.export(model, example).module()
    from torchao.quantization.pt2e.export_utils import _move_exported_model_to_eval

    graph = _move_exported_model_to_eval(graph)
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for window in (calibration if calibration is not None else example[0].numpy()):
            graph(torch.from_numpy(np.ascontiguousarray(window[None], dtype=np.float32)))
    graph = _move_exported_model_to_eval(quantize_pt2e.convert_pt2e(graph, fold_quantize=False))
    for module in graph.modules():  # exported GraphModules refuse .eval(); the ops already are eval-mode
        module.training = False
    return litert_torch.convert(graph, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer))


def export_tflite(model: nn.Module, path: Path, input_shape: tuple[int, int], precision: str = "fp32",
                  calibration: np.ndarray | None = None, fp32_file: Path | None = None) -> Path:
    """Write ``model`` as a batch-1 .tflite of ``precision`` (int8 needs ``calibration`` features;
    fp16 reuses ``fp32_file`` when given)."""
    _quiet()
    import litert_torch

    model = model.eval()
    example = (torch.zeros(1, *input_shape),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if precision == "fp32":
            return _save(litert_torch.convert(model, example), path)
        if precision == "fp16":
            src = fp32_file if fp32_file is not None and fp32_file.is_file() else export_tflite(
                model, path.with_name(path.stem + ".fp32-src.tflite"), input_shape)
            try:
                return _fp16_weights(src, path)
            finally:
                if src != fp32_file:
                    src.unlink(missing_ok=True)
        if precision == "int8-dynamic":
            return _save(_pt2e(model, example, True, None), path)
        if precision == "int8":
            if calibration is None or len(calibration) == 0:
                raise ValueError("static int8 TFLite needs the representative set's features")
            return _save(_pt2e(model, example, False, calibration), path)
    raise ValueError(f"unknown TFLite precision {precision!r}; choose from {', '.join(TFLITE_PRECISIONS)}")


def _fp16_weights(src: Path, dst: Path) -> Path:
    """fp16 weights with ai-edge-quantizer's float-casting algorithm (compute stays float32)."""
    from ai_edge_quantizer import qtyping, quantizer

    qz = quantizer.Quantizer(str(src))
    qz.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                              granularity=qtyping.QuantGranularity.CHANNELWISE, algorithm_key="float_casting")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = qz.quantize()  # prints a size summary and a progress bar
    with output_path(dst) as tmp:
        result.export_model(str(tmp), overwrite=True)
    return dst
