"""Per-window cost of the quality gate + calibration/abstention vs the model (features + inference), one core.

The gate runs where the streaming core runs it: on the freshly assembled window, before the front end
and inference (its samples are still in the CPU cache); calibration and abstention after inference.

    python benchmarks/bench_quality.py [BUNDLE] [--audio FILE] [--windows N]

Measured in one run, interleaved, on the same windows (real audio when given, else noise); prints the
p50 ms of each part and their ratio, and the gate's cost in the old order (after inference) for
comparison. The issue's budget: <= 1 ms added per window.
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
    bundle, gate = clf.bundle, clf.bundle.quality
    if gate is None:
        print("note: the bundle has no quality gate; only calibration is measured")
    added_ms, model_ms, gate_ms, after_ms, cold_ms = [], [], [], [], []
    for i in range(2 * (args.windows + 3)):
        w = np.array(windows[i % len(windows)])  # a fresh copy, as the windower hands over each window
        cold = i % 2 == 1  # odd iterations: the gate after inference instead (the old order), for comparison
        t0 = time.perf_counter()
        verdict = gate.assess(w, n) if gate is not None and not cold else None  # the stream's order: gate first
        t1 = time.perf_counter()
        logits = clf.backend.run(compute_features(w, clf.spec)[None])[0]
        t2 = time.perf_counter()
        if cold and gate is not None:
            verdict = gate.assess(w, n)
        t3 = time.perf_counter()
        decide(bundle, logits, w, n, verdict)  # calibration + abstention (+ the gate's verdict)
        t4 = time.perf_counter()
        if i < 6:  # warm-up
            continue
        if cold:
            cold_ms.append((t3 - t2) * 1e3)
        else:
            model_ms.append((t2 - t1) * 1e3)
            gate_ms.append((t1 - t0) * 1e3)
            after_ms.append((t4 - t3) * 1e3)
            added_ms.append((t1 - t0 + t4 - t3) * 1e3)
    p50 = {k: float(np.median(v)) if v else float("nan") for k, v in
           (("model", model_ms), ("gate", gate_ms), ("after", after_ms), ("added", added_ms), ("cold", cold_ms))}
    p90 = float(np.percentile(added_ms, 90))
    print(f"bundle {bundle.root.name}, artifact {clf.backend.artifact.name} on {clf.backend.name}, 1 thread, "
          f"{args.windows} windows ({'real audio' if args.audio else 'noise'}); load average {os.getloadavg()[0]:.1f}")
    print(f"features + inference                      p50 {p50['model']:8.3f} ms")
    print(f"quality gate, before inference (stream)   p50 {p50['gate']:8.3f} ms")
    print(f"calibration + abstention, after inference p50 {p50['after']:8.3f} ms")
    print(f"added per window (gate + decide)          p50 {p50['added']:8.3f} ms = {100 * p50['added'] / p50['model']:.2f} % "
          f"of the model (p90 {p90:.3f} ms); budget 1 ms: {'met' if p50['added'] <= 1.0 else 'EXCEEDED'}")
    print(f"(for comparison: the gate right after inference, caches cold: p50 {p50['cold']:.3f} ms)")
    if gate is not None:
        print(f"quality gate features version {gate.features_version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
