"""Incremental fbank vs recomputing every 8 s window, at a 1 s hop (and 2 s).

Prints the per-window cost of each, the speed-up, and the max difference between them.
Usage: python benchmarks/bench_incremental_features.py [--seconds 120] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import time

# One BLAS thread, as the device's feature worker runs: on a shared 2-core machine OpenBLAS's
# spinning threads made the mel matmul vary from 0.05 to 14 ms and drowned the comparison.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np

from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.incremental_features import IncrementalFeatures


def run(seconds: float, hop_s: float, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` time per window for full and incremental features over one stream."""
    spec = FeatureSpec()
    x = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * spec.sample_rate))).astype(np.float32)
    hop = int(hop_s * spec.sample_rate)
    ends = list(range(spec.window_samples, x.size + 1, hop))
    full_t, inc_t, worst = [], [], 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        full = [compute_features(x[e - spec.window_samples : e], spec) for e in ends]
        full_t.append((time.perf_counter() - t0) / len(ends))
        inc = IncrementalFeatures(spec)
        t0 = time.perf_counter()
        got = [inc.compute(x[e - spec.window_samples : e], e) for e in ends]
        inc_t.append((time.perf_counter() - t0) / len(ends))
        worst = max(worst, max(float(np.abs(a - b).max()) for a, b in zip(full, got)))
    return {"windows": len(ends), "full_ms": 1000 * min(full_t), "incremental_ms": 1000 * min(inc_t),
            "speedup": min(full_t) / min(inc_t), "max_abs_diff": worst}


def main() -> None:
    """Print one row per hop."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{'hop':>5} {'windows':>7} {'full ms/win':>11} {'incr ms/win':>11} {'speed-up':>8} {'max diff':>9}")
    for hop in (1.0, 2.0):
        r = run(args.seconds, hop, args.repeats)
        print(f"{hop:5.1f} {r['windows']:7d} {r['full_ms']:11.2f} {r['incremental_ms']:11.2f} "
              f"{r['speedup']:7.1f}x {r['max_abs_diff']:9.1e}")


if __name__ == "__main__":
    main()
