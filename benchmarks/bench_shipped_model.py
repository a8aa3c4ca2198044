"""The shipped model (EfficientAT mn04 bundle) next to the tiny AST, measured in one run on the same cores (not a test).

Usage: python benchmarks/bench_shipped_model.py [--bundle models/respiratory-mn04] [--threads 1] [--runs 30]

Every artifact of the shipped bundle, and a seeded random-weight tiny AST (latency does not depend on
weights) exported as ONNX fp32 / dynamic INT8, are timed as numpy features + inference per 8 s window
after warm-up. Prints size, parameters, p50/p95 and the ratio to the tiny AST's fp32 ONNX.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def timings_ms(run, features, audio: np.ndarray, runs: int, warmup: int = 3) -> tuple[float, float]:
    """(p50, p95) ms of features + inference for one window."""
    for _ in range(warmup):
        run(features(audio)[None])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(features(audio)[None])
        times.append(1000.0 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    """Time every artifact of the shipped bundle and the tiny AST; print one table."""
    import torch

    from stethoedge.export.onnx_export import export_onnx, quantize_int8_dynamic
    from stethoedge.models import default_bundle
    from stethoedge.runtime.backends import open_backend
    from stethoedge.runtime.backends.onnxruntime_backend import OnnxModel
    from stethoedge.runtime.bundle import load_bundle
    from stethoedge.runtime.feature_spec import FeatureSpec
    from stethoedge.runtime.features import compute_features
    from stethoedge.train.model import AST, count_parameters, preset_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=None, help="bundle directory (default: the shipped model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle or default_bundle())
    audio = (0.1 * np.random.default_rng(0).standard_normal(bundle.spec.window_samples)).astype(np.float32)
    params = bundle.manifest["model"]["parameters"]
    rows = []
    p50, p95 = timings_ms(lambda x: x, lambda a: compute_features(a, bundle.spec), audio, args.runs)
    rows.append(("numpy features alone (efficientat-mel)", 0, 0.0, p50, p95))
    for art in bundle.artifacts.values():
        if art.status != "passed":
            continue
        backend = open_backend(bundle, art.name, "auto", threads=args.threads)
        p50, p95 = timings_ms(backend.run, lambda a: compute_features(a, bundle.spec), audio, args.runs)
        rows.append((f"shipped mn04 {art.name}", params, bundle.path_of(art).stat().st_size / 1e6, p50, p95))
    spec = FeatureSpec()
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = AST(preset_config("tiny")).eval()
        fp32 = export_onnx(model, Path(tmp) / "tiny.onnx", spec.input_shape)
        int8 = quantize_int8_dynamic(fp32, Path(tmp) / "tiny.int8.onnx")
        for name, path in (("tiny AST onnx-fp32", fp32), ("tiny AST onnx-int8-dynamic", int8)):
            p50, p95 = timings_ms(OnnxModel(path, threads=args.threads).run, lambda a: compute_features(a, spec), audio,
                                  args.runs)
            rows.append((name, count_parameters(model), path.stat().st_size / 1e6, p50, p95))
    ref = next(r[3] for r in rows if r[0] == "tiny AST onnx-fp32")
    print(f"features + inference per 8 s window, {args.threads} thread(s), {args.runs} runs, one process:")
    print(f"{'model / artifact':<40} {'params':>9} {'MB':>6} {'p50 ms':>8} {'p95 ms':>8} {'x faster than tiny AST fp32':>28}")
    for name, n, mb, p50, p95 in rows:
        print(f"{name:<40} {n / 1e6:>8.2f}M {mb:>6.2f} {p50:>8.1f} {p95:>8.1f} {ref / p50:>28.2f}")


if __name__ == "__main__":
    main()
