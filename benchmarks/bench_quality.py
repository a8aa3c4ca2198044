"""Per-window cost of the quality gate + calibration/abstention vs the model (features + inference), one core.

    python benchmarks/bench_quality.py [BUNDLE] [--audio FILE] [--windows N]

Measured in one run, interleaved, on the same windows (real audio when given, else noise);
prints the p50 ms of each part and their ratio. The issue's budget: <= 1 ms added per window.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def main() -> int:
    """Run the benchmark and print one table."""
    from stethoedge.models import default_bundle
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.features import compute_features
    from stethoedge.runtime.stream import decide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=None)
    ap.add_argument("--audio", default=None, help="a recording to cut windows from (default: noise)")
    ap.add_argument("--windows", type=int, default=40)
    args = ap.parse_args()
    clf = Classifier.open(args.bundle or default_bundle(), threads=1)
    n = clf.spec.window_samples
    if args.audio:
        from stethoedge.runtime.audio_io import load_audio
        from stethoedge.runtime.padding import cyclic_pad

        a = cyclic_pad(load_audio(args.audio, 16000).samples, n * 2)
        windows = [a[i * n // 8: i * n // 8 + n] for i in range(8)]
    else:
        rng = np.random.default_rng(0)
        windows = [(0.05 * rng.standard_normal(n)).astype(np.float32) for _ in range(8)]
    gate_ms, model_ms, decide_ms = [], [], []
    bundle = clf.bundle
    if bundle.quality is None:
        print("note: the bundle has no quality gate; only calibration is measured")
    for i in range(args.windows + 3):
        w = windows[i % len(windows)]
        t0 = time.perf_counter()
        logits = clf.backend.run(compute_features(w, clf.spec)[None])[0]
        t1 = time.perf_counter()
        decide(bundle, logits, w, n)  # right after inference, as in the stream: calibration + gate + abstention
        t2 = time.perf_counter()
        if bundle.quality is not None:
            bundle.quality.assess(w, n)  # again, caches warm: the gate's own compute
        t3 = time.perf_counter()
        if i >= 3:  # warm-up
            model_ms.append((t1 - t0) * 1e3)
            decide_ms.append((t2 - t1) * 1e3)
            gate_ms.append((t3 - t2) * 1e3)
    p50 = {k: float(np.median(v)) for k, v in (("model", model_ms), ("gate", gate_ms), ("decide", decide_ms))}
    print(f"bundle {bundle.root.name}, artifact {clf.backend.artifact.name} on {clf.backend.name}, 1 thread, "
          f"{args.windows} windows ({'real audio' if args.audio else 'noise'}); load average {os.getloadavg()[0]:.1f}")
    print(f"features + inference        p50 {p50['model']:8.3f} ms")
    print(f"quality gate, warm caches   p50 {p50['gate']:8.3f} ms")
    p90 = float(np.percentile(decide_ms, 90))
    print(f"decide (calib+gate+abstain) p50 {p50['decide']:8.3f} ms  = {100 * p50['decide'] / p50['model']:.2f} % "
          f"of the model (p90 {p90:.3f} ms); budget 1 ms: {'met' if p50['decide'] <= 1.0 else 'EXCEEDED'}")
    if bundle.quality is not None:
        print(f"quality gate features version {bundle.quality.features_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
