"""Estimated per-window latency on a Raspberry Pi 5, on paper: ratios to AST-base measured here.

Usage: nice -n 10 .venv/bin/python benchmarks/pi5_estimate.py [--bundle DIR ...] [--runs 20] [--base-runs 5]

Emulated arm64 timings (benchmarks/arm64_smoke.sh) mean nothing, and no Pi is attached here. What can
be measured is how much faster each of our artifacts is than AST-base on the SAME cores, in the SAME
run; published AST-base figures on a Raspberry Pi 5 then scale that ratio to the device:

    AST-base (87 M, overlapping 16x16 patches, stride 10), ONNX fp32, one 10 s window (1024 x 128):
    about 2.1 s with 4 threads and 9.4 s on one core of a Pi 5 (Cortex-A76, 2.4 GHz).

    estimate(artifact, 1 core)   = 9.4 s x t(artifact, 1 thread) / t(AST-base, 1 thread)
    estimate(artifact, 4 threads) = 2.1 s x t(artifact, 2 threads) / t(AST-base, 2 threads)
    (this machine has 2 cores: the 4-thread figure is scaled with the 2-thread ratio)

AST-base here is a random-weight model of the paper's shape (latency does not depend on the weights),
exported the way `stethoedge export` exports (ONNX fp32, opset 17) and run by onnxruntime; our artifacts
are the bundles' own files on the runtime's backends. Model time only (the 8 s window's features are
timed apart and scaled with the same 1-core factor). Needs torch (the export) and the runtime.

What the ratio cannot carry: the ISA. x86 runs int8 with AVX2/VNNI and converts fp16 weights to fp32;
a Pi 5 runs int8 with NEON dot-product kernels, and onnxruntime may run fp16 in native fp16 there
(Cortex-A76 has it; XNNPACK does not by default). Treat int8 and fp16 estimates as the roughest. The
timings are minima of N runs (the least disturbed by other work on a shared machine); medians are
printed too.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

PI5_BASE_1CORE_S = 9.4
PI5_BASE_4THREADS_S = 2.1
BASE_FRAMES = 1024  # AST's 10.24 s input, the published figure's window


def timed(run, x: np.ndarray, runs: int, warmup: int = 2) -> tuple[float, float]:
    """(min, median) milliseconds of ``run(x)``."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times), 1000 * statistics.median(times)


def export_base(tmp: Path) -> Path:
    import torch

    from stethoedge.export.onnx_export import export_onnx
    from stethoedge.train.model import AST, count_parameters, preset_config

    torch.manual_seed(0)
    model = AST(preset_config("base", n_frames=BASE_FRAMES)).eval()
    print(f"AST-base: {count_parameters(model) / 1e6:.1f} M parameters, input {BASE_FRAMES} x 128", flush=True)
    return export_onnx(model, tmp / "ast-base.onnx", (BASE_FRAMES, 128))


def main() -> None:
    from stethoedge.models import default_bundle
    from stethoedge.runtime.backends import open_backend
    from stethoedge.runtime.backends.onnxruntime_backend import OnnxModel
    from stethoedge.runtime.bundle import load_bundle
    from stethoedge.runtime.errors import StethoedgeError
    from stethoedge.runtime.features import compute_features

    cache = Path(os.environ.get("STETHOEDGE_CACHE", Path.home() / ".cache" / "stethoedge"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", action="append", default=None,
                    help="bundle(s) to time (default: the shipped model and, when cached, the bundle with "
                         "every artifact kind, $STETHOEDGE_CACHE/bundle-all)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2; 2 stands in for the Pi's 4)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--base-runs", type=int, default=5)
    args = ap.parse_args()
    bundles = args.bundle or [str(default_bundle())] + ([str(cache / "bundle-all")]
                                                      if (cache / "bundle-all" / "manifest.json").exists() else [])
    threads = [int(t) for t in args.threads.split(",")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; minima of {args.runs} runs "
          f"(AST-base {args.base_runs})", flush=True)

    rows: list[tuple[str, str, int, float, float]] = []  # (bundle, artifact, threads, min ms, median ms)
    with tempfile.TemporaryDirectory() as tmp:
        base_path = export_base(Path(tmp))
        base_x = np.random.default_rng(0).standard_normal((1, BASE_FRAMES, 128)).astype(np.float32)
        base: dict[int, tuple[float, float]] = {}
        for n in threads:
            base[n] = timed(OnnxModel(base_path, threads=n).run, base_x, args.base_runs)
            print(f"AST-base onnx-fp32, {n} thread(s): min {base[n][0]:.0f} ms, median {base[n][1]:.0f} ms", flush=True)
        feature_ms = None
        for path in bundles:
            bundle = load_bundle(path)
            audio = bundle.selftest.audio[0]
            x = bundle.selftest.features[:1]
            if feature_ms is None:
                feature_ms = timed(lambda a: compute_features(a, bundle.spec), audio, args.runs)[0]
            for name in bundle.artifacts:
                for n in threads:
                    try:
                        backend = open_backend(bundle, name, threads=n, allow_failed=True, selftest=False)
                    except StethoedgeError as exc:
                        print(f"  {Path(path).name} {name}: not timed ({exc})")
                        break
                    lo, med = timed(backend.run, x, args.runs)
                    rows.append((Path(path).name, name, n, lo, med))
        # AST-base again at the end: the machine is shared, a drift in its load shows up here.
        for n in threads:
            again = timed(OnnxModel(base_path, threads=n).run, base_x, args.base_runs)
            print(f"AST-base again, {n} thread(s): min {again[0]:.0f} ms (first {base[n][0]:.0f} ms)", flush=True)
            base[n] = (min(base[n][0], again[0]), base[n][1])

    one, many = threads[0], threads[-1]
    factor = PI5_BASE_1CORE_S * 1000 / base[one][0]
    print(f"\nPi 5 / this machine, one core (AST-base ONNX fp32): x{factor:.1f}; features of one 8 s window here "
          f"{feature_ms:.1f} ms -> estimated {feature_ms * factor:.0f} ms on one Pi 5 core")
    print("\nESTIMATES, not measurements: Pi 5 latency per 8 s window = published AST-base Pi 5 time x "
          "(artifact / AST-base) measured here in this run")
    print(f"| bundle | artifact | here {one} thread (min / median ms) | AST-base / artifact ({one} thread) | "
          f"here {many} threads (min ms) | AST-base / artifact ({many} threads) | est. Pi 5 one core (ms) | "
          f"est. Pi 5 4 threads (ms) | est. Pi 5 one core incl. features (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    by = {(b, a, n): (lo, med) for b, a, n, lo, med in rows}
    for b, a in dict.fromkeys((b, a) for b, a, _, _, _ in rows):
        lo1, med1 = by[(b, a, one)]
        lon = by.get((b, a, many), (float("nan"), float("nan")))[0]
        r1, rn = base[one][0] / lo1, base[many][0] / lon
        est1 = PI5_BASE_1CORE_S * 1000 / r1
        estn = PI5_BASE_4THREADS_S * 1000 / rn
        print(f"| {b} | {a} | {lo1:.1f} / {med1:.1f} | x{r1:.0f} | {lon:.1f} | x{rn:.0f} | {est1:.0f} | {estn:.0f} | "
              f"{est1 + feature_ms * factor:.0f} |")
    print(f"\nmethod: ratios measured in this run on {os.cpu_count()} x86-64 cores; AST-base on a Pi 5 "
          f"(published, ONNX fp32, 10 s window): {PI5_BASE_1CORE_S} s one core, {PI5_BASE_4THREADS_S} s 4 threads. "
          "Small models gain less from threads than AST-base does, so the 4-thread estimates lean optimistic; "
          "the one-core column is the safe bound for a single-threaded service.")


if __name__ == "__main__":
    main()
