"""Latency benchmark of every artifact in a bundle: features + inference per 8 s window."""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.errors import StethoedgeError
from stethoedge.runtime.features import compute_features


def percentile_ms(samples_s: list[float], q: float) -> float:
    """The q-th percentile of durations given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000.0, q))


def bench_bundle(bundle_path: str | os.PathLike, threads: int | None = None, warmup: int = 3,
                 runs: int = 30) -> list[dict[str, Any]]:
    """One row per artifact: status, size, p50/p95/p99 latency, real-time factor, agreement."""
    bundle = load_bundle(bundle_path)
    rows = []
    audio = bundle.selftest.audio
    for art in bundle.artifacts.values():
        row: dict[str, Any] = {"artifact": art.name, "status": art.status, "size_mb": art.size_bytes / 1e6,
                               "export_agreement": art.verification.get("top1_agreement"),
                               "export_windows": art.verification.get("windows")}
        try:
            backend = open_backend(bundle, art.name, threads=threads, allow_failed=True)
        except StethoedgeError as exc:
            row.update(status=f"refused: {exc}")
            rows.append(row)
            continue
        times = []
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            backend.run(compute_features(audio[i % len(audio)], bundle.spec)[None])
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        logits = backend.run(bundle.selftest.features)
        row.update(
            p50_ms=percentile_ms(times, 50), p95_ms=percentile_ms(times, 95), p99_ms=percentile_ms(times, 99),
            rtf=percentile_ms(times, 50) / (bundle.spec.window_seconds * 1000.0),
            selftest_agreement=float(np.mean(logits.argmax(1) == bundle.selftest.logits.argmax(1))),
            selftest_max_diff=float(np.max(np.abs(logits - bundle.selftest.logits))),
        )
        rows.append(row)
    return rows


def format_bench_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of ``bench_bundle`` rows."""
    head = f"{'artifact':<20} {'status':<20} {'size MB':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'RTF':>8} {'agree (export)':>16}"
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = (f"{100 * r['export_agreement']:.1f}% of {r['export_windows']}"
                 if r.get("export_agreement") is not None else "n/a")
        if "p50_ms" not in r:
            lines.append(f"{r['artifact']:<20} {r['status'][:60]}")
            continue
        lines.append(f"{r['artifact']:<20} {r['status']:<20} {r['size_mb']:>8.2f} {r['p50_ms']:>8.2f} {r['p95_ms']:>8.2f} "
                     f"{r['p99_ms']:>8.2f} {r['rtf']:>8.4f} {agree:>16}")
    lines.append("latency = numpy log-mel features + inference for one 8 s window, after warm-up; "
                 "RTF = p50 / 8 s (lower is better)")
    return "\n".join(lines)
