"""Runtime vs PyTorch eager on the same model, measured in one run (not a test).

Usage: python benchmarks/bench_runtime_vs_torch.py RUN BUNDLE [--threads 1] [--runs 50]

Prints per-window latency (median, ms) of: torch eager forward, ONNX Runtime fp32 and INT8
inference on the same features, and the numpy vs torch front ends, with ratios.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.features import compute_features
from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.features_torch import compute_features_torch


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    model = load_checkpoint(args.run).model.eval()
    x = bundle.selftest.features[:1]
    audio = bundle.selftest.audio[0]
    rows = {}
    with torch.inference_mode():
        xt = torch.from_numpy(x)
        rows["torch eager fp32"] = median_ms(lambda: model(xt), args.runs)
    for name in bundle.artifacts:
        backend = open_backend(bundle, name, threads=args.threads, allow_failed=True)
        rows[f"onnxruntime {name}"] = median_ms(lambda b=backend: b.run(x), args.runs)
    rows["features numpy (runtime)"] = median_ms(lambda: compute_features(audio, bundle.spec), args.runs)
    at = torch.from_numpy(audio)[None]
    rows["features torch (training)"] = median_ms(lambda: compute_features_torch(at, bundle.spec), args.runs)
    base = rows["torch eager fp32"]
    print(f"threads={args.threads}, runs={args.runs}, one 8 s window (batch 1)")
    print(f"{'what':<34} {'median ms':>10} {'torch eager / this':>20}")
    for name, ms in rows.items():
        ratio = f"{base / ms:.2f}x" if not name.startswith("features") else ""
        print(f"{name:<34} {ms:>10.2f} {ratio:>20}")


if __name__ == "__main__":
    main()
