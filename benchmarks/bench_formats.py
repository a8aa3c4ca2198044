"""INT8 vs fp32 for each format of one bundle, measured in one run on the same cores (not a test).

Usage: python benchmarks/bench_formats.py BUNDLE [--threads 1] [--runs 30] [--json out.json]

Runs ``bench_bundle`` (numpy features + inference per 8 s window, after warm-up) for every
artifact, then prints for each format the p50 ratio fp32 / INT8 (> 1: INT8 faster), the size
ratio, and each INT8 artifact's top-1 agreement from the export gate (target >= 98 %).
"""
from __future__ import annotations

import argparse
import json
import os

from stethoedge.runtime.bench import bench_bundle, format_bench_table

PAIRS = {"onnx": ("onnx-fp32", ["onnx-fp16", "onnx-int8-dynamic", "onnx-int8-static"]),
         "tflite": ("tflite-fp32", ["tflite-fp16", "tflite-int8-dynamic", "tflite-int8"])}


def main() -> None:
    """Benchmark and print ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = bench_bundle(args.bundle, threads=args.threads, runs=args.runs)
    print(format_bench_table(rows))
    by_name = {r["artifact"]: r for r in rows if "p50_ms" in r}
    print(f"\nratios on {args.threads} thread(s), {os.cpu_count()} cores visible (one run):")
    ratios = {}
    for fmt, (base, others) in PAIRS.items():
        if base not in by_name:
            continue
        for name in others:
            if name in by_name:
                speed = by_name[base]["p50_ms"] / by_name[name]["p50_ms"]
                size = by_name[base]["size_mb"] / by_name[name]["size_mb"]
                agree = by_name[name].get("export_agreement")
                ratios[name] = {"speedup_vs_fp32": speed, "size_ratio": size, "export_agreement": agree}
                print(f"  {name:<20} vs {base:<12} speed x{speed:5.2f}  size /{size:4.2f}  "
                      f"gate agreement {100 * agree:.1f} %" if agree is not None else "")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
