"""Edge student vs AST-base fp32 ONNX on the same cores, as ratios measured in one run (not a test).

Usage: python benchmarks/bench_edge_vs_base.py [--student tiny] [--threads 1] [--runs 10] [--base-runs 3]

Latency does not depend on the weights, so both models are seeded random-weight ASTs of their
presets (the student: ``tiny`` = DeiT-tiny shaped, non-overlapping patches; the base: the AST
paper's 87 M model, overlapping stride 10). Each is exported the way ``stethoedge export`` does
(ONNX fp32, ONNX dynamic INT8, TFLite fp32 / dynamic INT8 when litert-torch is installed) and
timed as features (numpy log-mel) + inference per 8 s window, after warm-up. Prints
base / student ratios (target: best student format >= 50x) and the student's share of the 2 s
8 s window budget on one core (target < 10 %) and of the stream's 2 s hop.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features


def p50_ms(run, audio: np.ndarray, spec: FeatureSpec, runs: int, warmup: int = 2) -> float:
    """Median ms of features + inference for one window."""
    for _ in range(warmup):
        run(compute_features(audio, spec)[None])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(compute_features(audio, spec)[None])
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def main() -> None:
    """Export both models, time them, print the ratios."""
    from stethoedge.export.onnx_export import export_onnx, quantize_int8_dynamic
    from stethoedge.runtime.backends.onnxruntime_backend import OnnxModel
    from stethoedge.train.model import AST, count_parameters, preset_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="tiny")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--base-runs", type=int, default=3)
    ap.add_argument("--hop", type=float, default=2.0, help="the stream's hop in seconds (also reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = FeatureSpec()
    audio = np.random.default_rng(0).standard_normal(spec.window_samples).astype(np.float32) * 0.1
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for preset in (args.student, "base"):
            torch.manual_seed(0)
            model = AST(preset_config(preset)).eval()
            print(f"{preset}: {count_parameters(model) / 1e6:.1f} M parameters", flush=True)
            fp32 = export_onnx(model, tmp_path / f"{preset}.onnx", spec.input_shape)
            runs = args.base_runs if preset == "base" else args.runs
            results[f"{preset} onnx-fp32"] = p50_ms(OnnxModel(fp32, threads=args.threads).run, audio, spec, runs)
            if preset != "base":
                int8 = quantize_int8_dynamic(fp32, tmp_path / f"{preset}.int8.onnx")
                results[f"{preset} onnx-int8-dynamic"] = p50_ms(OnnxModel(int8, threads=args.threads).run, audio, spec, runs)
                try:
                    from stethoedge.export.tflite_export import export_tflite
                    from stethoedge.runtime.backends.litert_backend import TFLiteModel
                except ImportError:
                    continue
                for precision in ("fp32", "int8-dynamic"):
                    path = export_tflite(model, tmp_path / f"{preset}.{precision}.tflite", spec.input_shape, precision)
                    results[f"{preset} tflite-{precision}"] = p50_ms(TFLiteModel(path, threads=args.threads).run,
                                                                    audio, spec, runs)
            del model
    base = results["base onnx-fp32"]
    print(f"\nfeatures + inference per 8 s window, p50, {args.threads} thread(s), one run:")
    for name, ms in results.items():
        ratio = "" if name.startswith("base") else f"  base/student x{base / ms:6.1f}"
        print(f"  {name:<28} {ms:10.2f} ms{ratio}")
    student = {k: v for k, v in results.items() if not k.startswith("base")}
    best = min(student, key=student.get)
    print(f"best student format: {best}: x{base / student[best]:.1f} faster than AST-base fp32 ONNX "
          f"(target >= 50x); {100 * student[best] / 8000:.2f} % of the 8 s window budget (target < 10 %), "
          f"{100 * student[best] / (args.hop * 1000):.2f} % of a {args.hop:g} s hop")


if __name__ == "__main__":
    main()
