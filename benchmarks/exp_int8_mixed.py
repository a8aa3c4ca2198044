"""Experiment: which INT8 variant of the shipped mn04 could pass the export gate, and is any faster?

ONNX Runtime static QDQ quantization (per-channel int8 weights) of (a) every weight layer, (b) the
pointwise convolutions + head (depthwise convolutions stay fp32), (c) the same without the first
convolution; MinMax and percentile calibration on 200 training windows; top-1 agreement with the fp32
model on every validation window of the cached example table (train/sources.py), and model-only
latency on one thread. Usage (TABLE: a train-edge cache folder holding features.npy + meta.json)::

    python benchmarks/exp_int8_mixed.py --table runs/cache/<key> [--bundle models/respiratory-mn04]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--table", required=True)
ap.add_argument("--bundle", default="models/respiratory-mn04")
args = ap.parse_args()
C = Path(args.table)
meta = json.load(open(C/"meta.json")); feats = np.load(C/"features.npy", mmap_mode="r")
role = np.array(meta["role"])
rng = np.random.default_rng(0)
tr = rng.choice(np.flatnonzero(role=="train"), 200, replace=False)
va = np.flatnonzero(role=="val")
src = Path(args.bundle) / "model.onnx"
name = onnx.load(src).graph.input[0].name
class R(CalibrationDataReader):
    """One training window at a time, for ORT's calibrator."""

    def __init__(self) -> None:
        self.it = iter(tr)

    def get_next(self) -> dict | None:
        """The next calibration input (None at the end)."""
        i = next(self.it, None)
        return None if i is None else {name: np.asarray(feats[i:i+1], np.float32)}
import tempfile
pre = Path(tempfile.mkdtemp()) / "pre.onnx"
quant_pre_process(str(src), str(pre))
g = onnx.load(pre).graph
inits = {i.name for i in g.initializer}
def group(n):
    """The Conv node's ``group`` attribute (1: not depthwise)."""
    return next((a.i for a in n.attribute if a.name == "group"), 1)
convs = [n for n in g.node if n.op_type=="Conv"]
pw = [n.name for n in convs if group(n)==1]
allq = [n.name for n in g.node if n.op_type in ("Conv","Gemm","MatMul") and any(i in inits for i in n.input)]
first = convs[0].name
variants = {"all (shipped attempt)": allq, "pointwise+gemm (no depthwise)": [x for x in allq if x in pw or x not in [c.name for c in convs]],
            "pointwise+gemm, no first conv": [x for x in allq if (x in pw or x not in [c.name for c in convs]) and x != first]}
ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
X = np.asarray(feats[va], np.float32)
ref_out = np.concatenate([ref.run(None, {name: X[i:i+64]})[0] for i in range(0, len(X), 64)])
for vname, nodes in variants.items():
    for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
        dst = pre.with_name(f"int8_{len(nodes)}_{method.name}.onnx")
        t0=time.time()
        quantize_static(str(pre), str(dst), R(), quant_format=QuantFormat.QDQ, per_channel=True, nodes_to_quantize=nodes,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        so = ort.SessionOptions(); so.intra_op_num_threads=1
        s = ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
        out = np.concatenate([s.run(None, {name: X[i:i+64]})[0] for i in range(0, len(X), 64)])
        agree = float((out.argmax(1)==ref_out.argmax(1)).mean())
        x1 = X[:1]; [s.run(None,{name:x1}) for _ in range(3)]
        ts=[]; 
        for _ in range(20): t=time.perf_counter(); s.run(None,{name:x1}); ts.append(time.perf_counter()-t)
        print(f"{vname:35s} {method.name:10s} nodes {len(nodes):3d} val agreement {agree:.3f} p50 {np.median(ts)*1e3:.1f} ms ({time.time()-t0:.0f} s)", flush=True)
so = ort.SessionOptions(); so.intra_op_num_threads=1
s = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]); ts=[]
for _ in range(20): t=time.perf_counter(); s.run(None,{name:X[:1]}); ts.append(time.perf_counter()-t)
print("fp32 p50", np.median(ts)*1e3)
