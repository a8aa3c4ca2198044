"""Ultralytics-style benchmark of every artifact in a bundle: features + inference per 8 s window.

One row per (artifact, thread count): format, status, size, p50/p95/p99 ms after warm-up,
windows/s, real-time factor, top-1 agreement (with labelled data: against the bundle's fp32
reference artifact, and the ICBHI Score through a caller-supplied scorer; without: on the
self-test vector). ``sustained_bench`` runs one artifact for S seconds and reports drift and
temperatures (/sys/class/thermal) to expose thermal throttling on a Pi. No torch here.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.bundle import Bundle, load_bundle
from stethoedge.runtime.errors import StethoedgeError
from stethoedge.runtime.features import compute_features
from stethoedge.runtime.outputs import atomic_write_bytes

THERMAL_ROOT = Path("/sys/class/thermal")
CSV_COLUMNS = ("artifact", "format", "precision", "status", "threads", "size_mb", "p50_ms", "p95_ms", "p99_ms",
               "windows_per_s", "rtf", "agreement", "score", "export_agreement")


def percentile_ms(samples_s: list[float], q: float) -> float:
    """The q-th percentile of durations given in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000.0, q))


def _status(art) -> str:
    return "passed" if art.status == "passed" else "exported-but-failed-verification"


def _predict(backend, bundle: Bundle, audio: np.ndarray) -> np.ndarray:
    return np.concatenate([backend.run(compute_features(a, bundle.spec)[None]) for a in audio])


def bench_bundle(bundle_path: str | os.PathLike, threads: int | list[int] | None = None, warmup: int = 3,
                 runs: int = 30, audio: np.ndarray | None = None, labels: np.ndarray | None = None,
                 scorer: Callable[[np.ndarray, np.ndarray], float] | None = None,
                 artifacts: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per artifact and thread count (see the module docstring).

    ``audio``: (n, window_samples) labelled windows to measure agreement/Score on; ``scorer(labels,
    predictions) -> Score``. Artifacts that fail to open (self-test, missing runtime) get a
    ``refused: ...`` status instead of numbers.
    """
    bundle = load_bundle(bundle_path)
    thread_list = threads if isinstance(threads, list) else [threads]
    timing_audio = bundle.selftest.audio if audio is None else audio
    manifest_failed = bundle.manifest.get("failed_artifacts", [])
    names = artifacts or list(bundle.artifacts)
    for name in names:  # an unknown name is one BundleError listing the bundle's artifacts, before any timing
        bundle.artifact(name, allow_failed=True)
    reference = None
    if audio is not None:
        ref_name = "onnx-fp32" if "onnx-fp32" in bundle.artifacts else next(iter(bundle.artifacts))
        reference = _predict(open_backend(bundle, ref_name, allow_failed=True), bundle, audio).argmax(1)
    rows = []
    for name in names:
        art = bundle.artifacts[name]
        for n_threads in thread_list:
            row: dict[str, Any] = {"artifact": art.name, "format": art.format, "precision": art.precision,
                                   "status": _status(art), "threads": n_threads, "size_mb": art.size_bytes / 1e6,
                                   "export_agreement": art.verification.get("top1_agreement"),
                                   "export_windows": art.verification.get("windows")}
            try:
                backend = open_backend(bundle, art.name, threads=n_threads, allow_failed=True)
            except StethoedgeError as exc:
                row.update(status=f"refused: {exc}")
                rows.append(row)
                continue
            times = []
            for i in range(warmup + runs):
                t0 = time.perf_counter()
                backend.run(compute_features(timing_audio[i % len(timing_audio)], bundle.spec)[None])
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
            logits = backend.run(bundle.selftest.features)
            p50 = percentile_ms(times, 50)
            row.update(
                p50_ms=p50, p95_ms=percentile_ms(times, 95), p99_ms=percentile_ms(times, 99),
                windows_per_s=1000.0 / float(np.mean(np.asarray(times) * 1000.0)),
                rtf=p50 / (bundle.spec.window_seconds * 1000.0),
                selftest_agreement=float(np.mean(logits.argmax(1) == bundle.selftest.logits.argmax(1))),
                selftest_max_diff=float(np.max(np.abs(logits - bundle.selftest.logits))),
            )
            row["agreement"] = row["selftest_agreement"]
            if audio is not None:
                predictions = _predict(backend, bundle, audio).argmax(1)
                row["agreement"] = float(np.mean(predictions == reference))
                row["agreement_windows"] = int(len(audio))
                if labels is not None and scorer is not None:
                    row["score"] = float(scorer(labels, predictions))
            rows.append(row)
    for f in manifest_failed:
        rows.append({"artifact": f["name"], "format": f.get("format"), "precision": f.get("precision"),
                     "status": f"failed: {f['reason']}", "threads": None, "size_mb": None})
    return rows


def format_bench_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table of ``bench_bundle`` rows."""
    head = (f"{'artifact':<20} {'status':<12} {'thr':>3} {'size MB':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
            f"{'win/s':>8} {'RTF':>8} {'agree':>7} {'Score':>6} {'agree (export)':>16}")
    lines = [head, "-" * len(head)]
    for r in rows:
        agree = (f"{100 * r['export_agreement']:.1f}% of {r['export_windows']}"
                 if r.get("export_agreement") is not None else "n/a")
        if "p50_ms" not in r:
            lines.append(f"{r['artifact']:<20} {r['status'][:100]}")
            continue
        status = "passed" if r["status"] == "passed" else "FAILED-VERIF"
        score = f"{r['score']:.3f}" if r.get("score") is not None else "n/a"
        lines.append(f"{r['artifact']:<20} {status:<12} {r['threads'] or '-':>3} {r['size_mb']:>8.2f} {r['p50_ms']:>8.2f} "
                     f"{r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['windows_per_s']:>8.1f} {r['rtf']:>8.4f} "
                     f"{100 * r['agreement']:>6.1f}% {score:>6} {agree:>16}")
    lines.append("latency = numpy log-mel features + inference for one 8 s window, after warm-up; "
                 "RTF = p50 / 8 s (lower is better); agree = top-1 agreement (self-test, or fp32 on --data)")
    return "\n".join(lines)


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with the columns of CSV_COLUMNS."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(rows: list[dict[str, Any]], json_path: str | os.PathLike | None = None,
                  csv_path: str | os.PathLike | None = None, png_path: str | os.PathLike | None = None,
                  sustained: dict[str, Any] | None = None) -> None:
    """Write the rows as JSON, CSV and/or a PNG bar chart of p50 latency (matplotlib), each atomically.

    Paths follow runtime/outputs.py (devices and FIFOs written through, links followed). With
    ``sustained`` the JSON is ``{"rows": ..., "sustained": ...}``.
    """
    if json_path:
        doc: Any = rows if sustained is None else {"rows": rows, "sustained": sustained}
        atomic_write_bytes(json_path, (json.dumps(doc, indent=2) + "\n").encode())
    if csv_path:
        atomic_write_bytes(csv_path, rows_to_csv(rows).encode())
    if png_path:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            raise StethoedgeError("the PNG chart needs matplotlib: pip install matplotlib") from None
        timed = [r for r in rows if "p50_ms" in r]
        labels = [f"{r['artifact']}" + (f" x{r['threads']}" if r["threads"] else "") for r in timed]
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(timed) + 1.2))
        colors = ["tab:green" if r["status"] == "passed" else "tab:red" for r in timed]
        ax.barh(labels, [r["p50_ms"] for r in timed], xerr=[[0] * len(timed), [r["p95_ms"] - r["p50_ms"] for r in timed]],
                color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("ms per 8 s window (features + inference), p50 with p95 whisker; red = failed verification")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(png_path, buf.getvalue())


def read_temperatures(root: Path = THERMAL_ROOT) -> dict[str, float]:
    """Thermal zone temperatures in degrees C ({type: temp}); empty where the kernel exposes none."""
    temps = {}
    for zone in sorted(root.glob("thermal_zone*")) if root.is_dir() else []:
        try:
            kind = (zone / "type").read_text().strip()
            temps[f"{zone.name}:{kind}"] = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
    return temps


def sustained_bench(bundle_path: str | os.PathLike, seconds: float, artifact: str | None = None,
                    threads: int | None = None, thermal_root: Path = THERMAL_ROOT) -> dict[str, Any]:
    """Run one artifact back to back for ``seconds``: latency in the first and last fifth, drift, temperatures."""
    bundle = load_bundle(bundle_path)
    backend = open_backend(bundle, artifact, threads=threads, allow_failed=True)
    audio = bundle.selftest.audio
    stamps, times, temps = [], [], [(0.0, read_temperatures(thermal_root))]
    start = last_temp = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or len(times) < 10:
        t0 = time.perf_counter()
        backend.run(compute_features(audio[i % len(audio)], bundle.spec)[None])
        t1 = time.perf_counter()
        stamps.append(t0 - start)
        times.append(t1 - t0)
        i += 1
        if t1 - last_temp >= 1.0:
            temps.append((t1 - start, read_temperatures(thermal_root)))
            last_temp = t1
    temps.append((time.perf_counter() - start, read_temperatures(thermal_root)))
    fifth = max(1, len(times) // 5)
    first, last = percentile_ms(times[:fifth], 50), percentile_ms(times[-fifth:], 50)
    all_temps = [max(t.values()) for _, t in temps if t]
    return {"artifact": backend.artifact.name, "threads": threads, "seconds": stamps[-1] + times[-1],
            "windows": len(times), "p50_ms": percentile_ms(times, 50), "p99_ms": percentile_ms(times, 99),
            "first_fifth_p50_ms": first, "last_fifth_p50_ms": last, "drift": last / first - 1.0,
            "temperature_c": {"start": all_temps[0], "end": all_temps[-1], "max": max(all_temps)} if all_temps else None,
            "thermal_zones": list(temps[0][1])}


def format_sustained(result: dict[str, Any]) -> str:
    """One paragraph summarising ``sustained_bench``."""
    t = result["temperature_c"]
    temp = (f"temperature {t['start']:.1f} -> {t['end']:.1f} C (max {t['max']:.1f})" if t
            else "no thermal zones readable (/sys/class/thermal)")
    return (f"sustained {result['artifact']}: {result['windows']} windows in {result['seconds']:.1f} s, "
            f"p50 {result['p50_ms']:.2f} ms, first fifth {result['first_fifth_p50_ms']:.2f} ms -> last fifth "
            f"{result['last_fifth_p50_ms']:.2f} ms (drift {100 * result['drift']:+.1f} %), {temp}")
