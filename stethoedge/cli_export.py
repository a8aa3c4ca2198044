"""Export-side subcommands: export, bundle-update, bench, keygen, sign, verify, build-engine."""
from __future__ import annotations

import argparse
import json
import sys

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import MAX_THREADS, bounded_float, bounded_int, bounded_int_list


def cmd_export(args: argparse.Namespace) -> int:
    from stethoedge.cli_runtime import _stop_on_sigterm
    from stethoedge.export.exporter import export_run
    from stethoedge.export.quiet import quiet_third_party
    from stethoedge.export.verify import Gate

    _stop_on_sigterm()  # SIGTERM unwinds like Ctrl-C: the temporary bundle directory is removed, nothing half-written stays
    with quiet_third_party(verbose=args.verbose):  # torchao/TF start-up chatter (export/quiet.py); -v shows it
        result = export_run(args.run, args.out, data=args.data, max_windows=args.windows,
                            gate=Gate(args.min_agreement, args.max_score_drop), allow_degraded=args.allow_degraded,
                            force=args.force, formats=args.formats, calibration_windows=args.calibration_windows,
                            bundle_calibration_windows=args.bundle_calibration_windows,
                            calibration_set=args.calibration_set, report_windows=args.report_windows)
    print(result.report)
    print(f"bundle written to {result.bundle} (default artifact: {result.manifest['default_artifact']})")
    return 0


def _labelled_windows(data: str, spec, labels: tuple[str, ...], max_windows: int):
    """Labelled windows of ``data`` for the bundle's label set: class folders named after ``labels``, or the ICBHI
    layout for the four ICBHI classes (another label set there is a one-line DataError)."""
    from stethoedge.calibration.window_set import build_window_set
    from stethoedge.data.folders import list_dataset

    ws = build_window_set(list_dataset(data, labels), spec, max_windows=max_windows, purpose="benchmark")
    return ws.audio, ws.labels


def cmd_bench(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bench import (
        bench_bundle, format_bench_table, format_sustained, sustained_bench, write_outputs,
    )
    from stethoedge.runtime.bundle import load_bundle
    from stethoedge.runtime.outputs import check_output, files_under

    inputs = [*files_under(args.bundle), *files_under(args.data)]
    for output in (args.json, args.csv, args.png):  # before minutes of benchmarking (runtime/outputs.py)
        check_output(output, inputs)
    audio = labels = scorer = None
    if args.data:
        from stethoedge.data.metrics import evaluate

        bundle = load_bundle(args.bundle)
        audio, labels = _labelled_windows(args.data, bundle.spec, bundle.labels, args.data_windows)
        scorer = lambda y, p: evaluate(y, p, labels=bundle.labels)["score"]  # noqa: E731
    rows = bench_bundle(args.bundle, threads=args.threads, runs=args.runs, audio=audio, labels=labels, scorer=scorer,
                        artifacts=args.artifact or None)
    print(format_bench_table(rows))
    result = None
    if args.sustained:
        threads = args.threads[0] if args.threads else None
        result = sustained_bench(args.bundle, args.sustained, artifact=(args.artifact or [None])[0], threads=threads)
        print(format_sustained(result))
    write_outputs(rows, args.json, args.csv, args.png, sustained=result)  # each written once (a FIFO gets one document)
    return 0


def cmd_bundle_update(args: argparse.Namespace) -> int:
    """Add/replace a bundle's calibrated-confidence and quality-gate sections (runtime/bundle_update.py)."""
    from stethoedge.runtime.bundle_update import read_confidence, update_bundle
    from stethoedge.runtime.errors import StethoedgeError

    if (args.out is None) == (not args.in_place):
        raise StethoedgeError("bundle-update needs exactly one of --out DIR or --in-place")
    if args.confidence is None and args.quality is None and not args.remove:
        raise StethoedgeError("nothing to do: give --confidence, --quality or --remove")
    confidence = read_confidence(args.confidence) if args.confidence else None
    dest = update_bundle(args.bundle, args.out, confidence=confidence, quality=args.quality,
                         remove=tuple(args.remove or ()), drop_signature=args.drop_signature, force=args.force)
    print(f"bundle updated: {dest} (verified, self-test passed)")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from stethoedge.runtime.signing import generate_keypair

    generate_keypair(args.private, args.public)
    print(f"private key {args.private} (keep it off the devices), public key {args.public} (install on devices)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bundle import load_bundle
    from stethoedge.runtime.signing import sign_bundle

    load_bundle(args.bundle)  # sign only a bundle that verifies
    print(f"signed: {sign_bundle(args.bundle, args.key)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bundle import load_bundle

    bundle = load_bundle(args.bundle, require_signature=args.key)
    print(f"{args.bundle}: signature by {args.key} valid; manifest and {len(bundle.artifacts)} artifact files verified")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    from stethoedge.export.tensorrt_build import build_engine

    entry = build_engine(args.bundle, args.precision, max_batch=args.max_batch, use_trtexec=args.trtexec)
    print(json.dumps(entry, indent=2))
    if entry["status"] != "passed":
        print(f"error: {entry['name']} failed the verification gate ({entry['verification'].get('error') or 'see above'});"
              " it is recorded as failed-verification in engines.json", file=sys.stderr)
        return 1
    return 0


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    p = add("export", cmd_export, "Export a run to a verified bundle: ONNX/TFLite in every precision, gate, manifest, self-test.")
    p.add_argument("run", help="training run directory")
    p.add_argument("--out", required=True,
                   help="bundle directory to create (its parent must exist; an existing one only with --force)")
    p.add_argument("--formats", default="all",
                   help="comma-separated artifacts (onnx-fp32, onnx-fp16, onnx-int8-dynamic, onnx-int8-static, "
                        "tflite-fp32, tflite-fp16, tflite-int8-dynamic, tflite-int8; aliases onnx, tflite) or all "
                        "(default: all this machine can build)")
    p.add_argument("--data", default=None,
                   help="dataset root, if it moved since training (default: the one in RUN/splits.json)")
    p.add_argument("--windows", type=bounded_int(1, 100_000), default=64,
                   help="validation-split windows the gate verifies every artifact on (default 64)")
    p.add_argument("--report-windows", type=bounded_int(0, 100_000), default=None,
                   help="test-split windows measured for the report only, never for choosing (0: none) "
                   "(default: as many as --windows)")
    p.add_argument("--calibration-windows", type=bounded_int(1, 100_000), default=300,
                   help="representative-set windows for static INT8 (default 300; fewer warns)")
    p.add_argument("--calibration-set", default=None,
                   help="use this saved representative set (.npz) instead (default: none, drawn from the data)")
    p.add_argument("--bundle-calibration-windows", type=bounded_int(0, 10_000), default=32,
                   help="representative windows shipped in the bundle for TensorRT INT8 on the target (0: none) "
                   "(default 32)")
    p.add_argument("--min-agreement", type=bounded_float(0.0, 1.0), default=0.98, help="gate: minimum top-1 agreement with PyTorch, a fraction (default 0.98)")
    p.add_argument("--max-score-drop", type=bounded_float(0.0, 1.0), default=0.01, help="gate: maximum ICBHI Score drop, 0.01 = 1 pt (default 0.01)")
    p.add_argument("--allow-degraded", action="store_true",
                   help="write the bundle even if every artifact fails the gate (default: refuse)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory (default: refuse)")

    p = add("bundle-update", cmd_bundle_update, "Add or replace a bundle's calibrated confidence / abstention "
            "and signal-quality gate; the result is verified and self-tested before it is installed.")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--confidence", default=None, metavar="REPORT.json",
                   help="report of `python -m stethoedge.train.confidence` (its manifest_section) or a bare "
                        "confidence section (default: keep the bundle's)")
    p.add_argument("--quality", default=None, metavar="GATE.npz",
                   help="quality gate from `python -m stethoedge.train.quality` (.npz or .json) (default: keep)")
    p.add_argument("--remove", action="append", choices=["confidence", "quality"], default=None,
                   help="drop a section (repeatable) (default: none)")
    p.add_argument("--out", default=None, help="write the updated bundle here (default: none; see --in-place)")
    p.add_argument("--in-place", action="store_true", help="replace BUNDLE itself, atomically, once verified")
    p.add_argument("--drop-signature", action="store_true",
                   help="allow updating a signed bundle; its manifest.sig is dropped (sign the result again)")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory (default: refuse)")

    p = add("bench", cmd_bench, "Benchmark every artifact of a bundle (features + inference per 8 s window).")
    p.add_argument("bundle", help="bundle directory from `stethoedge export`")
    p.add_argument("--threads", type=bounded_int_list(1, MAX_THREADS), default=None, metavar="N[,N...]",
                   help=f"inference thread counts to measure, e.g. 1,2,4 (default: the backend's own choice; "
                        f"each 1-{MAX_THREADS})")
    p.add_argument("--runs", type=bounded_int(1, 100_000), default=30,
                   help="timed windows per artifact, after 3 warm-up windows (default 30, 1-100000)")
    p.add_argument("--artifact", action="append", default=None,
                   help="measure only this artifact; repeatable (default: every artifact of the bundle)")
    p.add_argument("--data", default=None,
                   help="labelled data: an ICBHI-layout folder (4 classes) or class folders named after the bundle's labels; "
                        "also agreement with fp32 and the Score on its windows (default: none)")
    p.add_argument("--data-windows", type=bounded_int(1, 100_000), default=64,
                   help="windows taken from --data (default 64, 1-100000)")
    p.add_argument("--sustained", type=bounded_float(0.0, 86_400.0), default=0.0, metavar="SECONDS",
                   help="also run back to back for this many seconds: drift, temperature (default 0 = off, 0-86400)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON to FILE (default: none)")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the rows as CSV to FILE (default: none)")
    p.add_argument("--png", default=None, metavar="FILE",
                   help="also write a bar chart of p50/p95 latency to FILE (default: none)")

    p = add("keygen", cmd_keygen, "Create an Ed25519 key pair for signing bundles.")
    p.add_argument("private", help="private key file to create (PEM)")
    p.add_argument("public", help="public key file to create (PEM)")

    p = add("sign", cmd_sign, "Sign a bundle's manifest with an Ed25519 private key (writes manifest.sig).")
    p.add_argument("bundle", help="bundle directory to sign (it must verify first)")
    p.add_argument("--key", required=True, help="Ed25519 private key (PEM)")

    p = add("verify", cmd_verify, "Check a bundle's files and its signature by an Ed25519 public key.")
    p.add_argument("bundle", help="bundle directory to check")
    p.add_argument("--key", required=True, help="Ed25519 public key (PEM)")

    p = add("build-engine", cmd_build_engine, "On the target (Jetson): build a TensorRT engine from the bundle's ONNX.")
    p.add_argument("bundle", help="bundle directory from `stethoedge export`; the engine is added to it")
    p.add_argument("--precision", choices=["fp16", "int8"], default="fp16",
                   help="engine precision; int8 calibrates on the bundle's representative windows (default %(default)s)")
    p.add_argument("--max-batch", type=bounded_int(1, 1024), default=8,
                   help="largest batch of windows the engine accepts (default %(default)s)")
    p.add_argument("--trtexec", action="store_true",
                   help="build with trtexec instead of the TensorRT Python API (default: the Python API)")
