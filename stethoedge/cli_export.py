"""Export-side subcommands: export, bench."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import positive_float as _positive_float
from stethoedge.cli_common import positive_int as _positive_int


def cmd_export(args: argparse.Namespace) -> int:
    from stethoedge.export.exporter import export_run
    from stethoedge.export.verify import Gate

    result = export_run(args.run, args.out, data=args.data, max_windows=args.windows,
                        gate=Gate(args.min_agreement, args.max_score_drop), allow_degraded=args.allow_degraded,
                        force=args.force)
    print(result.report)
    print(f"bundle written to {result.bundle} (default artifact: {result.manifest['default_artifact']})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bench import bench_bundle, format_bench_table

    rows = bench_bundle(args.bundle, threads=args.threads, runs=args.runs)
    print(format_bench_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    p = add("export", cmd_export, "Export a run to a verified bundle: ONNX fp32 + dynamic INT8, manifest, self-test.")
    p.add_argument("run", help="training run directory")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--data", default=None, help="dataset root, if it moved since training")
    p.add_argument("--windows", type=_positive_int, default=64, help="held-out windows for verification (default 64)")
    p.add_argument("--min-agreement", type=float, default=0.98, help="gate: minimum top-1 agreement with PyTorch")
    p.add_argument("--max-score-drop", type=float, default=0.01, help="gate: maximum ICBHI Score drop (0.01 = 1 pt)")
    p.add_argument("--allow-degraded", action="store_true", help="write the bundle even if every artifact fails the gate")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")

    p = add("bench", cmd_bench, "Latency of every artifact in a bundle (features + inference per window).")
    p.add_argument("bundle")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--runs", type=_positive_int, default=30, help="timed windows per artifact (after 3 warm-up)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
