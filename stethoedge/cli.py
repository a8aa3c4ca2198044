"""The ``stethoedge`` command line: parses arguments and calls library functions, nothing else.

Every stage is imported only when its subcommand runs, so ``classify`` and ``bench`` work on a
device that installed only ``stethoedge[runtime]`` (no torch).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable

from stethoedge import __version__
from stethoedge.runtime.errors import StethoedgeError


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


# ---------------------------------------------------------------- simulate
def cmd_simulate(args: argparse.Namespace) -> int:
    from stethoedge.train.simulator import simulate_dataset

    t0 = time.perf_counter()
    summary = simulate_dataset(Path(args.out), n_patients=args.patients, recordings_per_patient=args.recordings,
                               duration_s=args.duration, seed=args.seed)
    print(json.dumps(summary.get("class_counts", summary), indent=None))
    print(f"simulated {args.patients} patients x {args.recordings} recordings into {args.out} "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from stethoedge.train.trainer import TrainConfig, train

    cfg = TrainConfig(data=args.data, out=args.out, preset=args.preset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, optimizer=args.optimizer, rho=args.rho, weighted_sampler=not args.no_weighted_sampler,
                      val_fraction=args.val_fraction, seed=args.seed, threads=args.threads)
    metrics = train(cfg)
    for split in ("val", "test"):
        m = metrics.get(split)
        if m:
            print(f"{split:>4}: Sp {m['specificity']:.3f}  Se {m['sensitivity']:.3f}  Score {m['score']:.3f}  "
                  f"macro-F1 {m['macro_f1']:.3f}  (n={m['n']})")
    print(f"best epoch {metrics['best_epoch']} (selected on validation); run written to {args.out}")
    return 0


# ---------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    from stethoedge.export.exporter import export_run
    from stethoedge.export.verify import Gate

    result = export_run(args.run, args.out, data=args.data, max_windows=args.windows,
                        gate=Gate(args.min_agreement, args.max_score_drop), allow_degraded=args.allow_degraded,
                        force=args.force)
    print(result.report)
    print(f"bundle written to {result.bundle} (default artifact: {result.manifest['default_artifact']})")
    return 0


# ---------------------------------------------------------------- classify
def _format_result(r) -> str:
    probs = " ".join(f"{k}={v:.2f}" for k, v in r.probabilities.items())
    flags = (" padded" if r.padded else "") + (" after-gap" if r.after_gap else "")
    return f"{r.start_s:8.2f}-{r.end_s:<8.2f} {r.label:<8} {r.confidence:5.2f}  {probs}{flags}"


def cmd_classify(args: argparse.Namespace) -> int:
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource

    source = FileSource(args.audio)  # decode first: a bad file is reported before the model loads
    for warning in source.audio.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    clf = Classifier.open(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads,
                          allow_degraded=args.allow_degraded)
    results = list(clf.classify(source, hop_s=args.hop, min_s=args.min_seconds))
    if args.jsonl:
        text = "".join(json.dumps(r.to_json()) + "\n" for r in results)
        if args.jsonl == "-":
            sys.stdout.write(text)
        else:
            from stethoedge.runtime.bundle import atomic_write_text

            atomic_write_text(Path(args.jsonl), text)
    if args.jsonl != "-":
        print(f"# {args.audio}: {source.audio.duration_s:.2f} s, {len(results)} windows, "
              f"artifact {clf.backend.artifact.name} on {clf.backend.name}")
        print(f"# {'start-end s':<17} {'label':<8} {'conf':>5}  probabilities")
        for r in results:
            print(_format_result(r))
    return 0


# ---------------------------------------------------------------- listen
def cmd_listen(args: argparse.Namespace) -> int:
    import signal

    from stethoedge.firmware_bridge.serial_source import BridgeSource
    from stethoedge.runtime.engine import Classifier

    clf = Classifier.open(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads,
                          allow_degraded=args.allow_degraded)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # systemd stops with SIGTERM: flush and close like Ctrl-C
    jsonl = open(args.jsonl, "a", encoding="utf-8") if args.jsonl else None
    source = BridgeSource(args.bridge, args.baud, start=True, idle_timeout=args.idle_timeout)
    print(f"# listening on {args.bridge} at {args.baud} baud; artifact {clf.backend.artifact.name}", flush=True)
    try:
        for r in clf.classify(source, hop_s=args.hop, min_s=args.min_seconds):
            source.send_result(clf.bundle.labels.index(r.label), r.confidence, r.end_s)
            print(_format_result(r), flush=True)
            if jsonl:
                jsonl.write(json.dumps(r.to_json()) + "\n")
                jsonl.flush()  # one complete record per line, so a crash never leaves half a record
    except KeyboardInterrupt:
        print("# stopped", file=sys.stderr)
    finally:
        source.close()
        if jsonl:
            jsonl.close()
    s = source.stats
    print(f"# bridge: {s.audio_frames} audio frames, {s.crc_errors} CRC errors, {s.gaps} gaps "
          f"({s.samples_lost} samples lost, never filled)", flush=True)
    return 0


# ---------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    from stethoedge.runtime.bench import bench_bundle, format_bench_table

    rows = bench_bundle(args.bundle, threads=args.threads, runs=args.runs)
    print(format_bench_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# ---------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from stethoedge.demo import run_demo

    run_demo(Path(args.out), real_audio=args.real, epochs=args.epochs, patients=args.patients, preset=args.preset)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by tests to check every --help)."""
    parser = argparse.ArgumentParser(prog="stethoedge", description="Respiratory-sound classification "
                                     "(normal / crackle / wheeze / both) from training to the stethoscope.")
    parser.add_argument("--version", action="version", version=f"stethoedge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    p = add("simulate", cmd_simulate, "Write a synthetic respiratory-sound dataset in the ICBHI 2017 layout.")
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--patients", type=_positive_int, default=16, help="number of simulated patients (default 16)")
    p.add_argument("--recordings", type=_positive_int, default=3, help="recordings per patient (default 3)")
    p.add_argument("--duration", type=_positive_float, default=20.0, help="seconds per recording (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")

    p = add("train", cmd_train, "Train the AST classifier on an ICBHI-layout directory; writes a run directory.")
    p.add_argument("--data", required=True, help="dataset root (ICBHI layout: <stem>.wav + <stem>.txt, split file)")
    p.add_argument("--out", required=True, help="run directory to write (checkpoint, metrics, config)")
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small", "base"],
                   help="model size (tiny: trains on a 2-core CPU in minutes)")
    p.add_argument("--epochs", type=_positive_int, default=8)
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="peak learning rate (cosine schedule, warm-up)")
    p.add_argument("--optimizer", choices=["sam", "adamw"], default="sam", help="SAM around AdamW, or plain AdamW")
    p.add_argument("--rho", type=_positive_float, default=0.05, help="SAM neighbourhood radius")
    p.add_argument("--no-weighted-sampler", action="store_true", help="shuffle instead of inverse-frequency sampling")
    p.add_argument("--val-fraction", type=_positive_float, default=0.25,
                   help="fraction of TRAIN patients held out for model selection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")

    p = add("export", cmd_export, "Export a run to a verified bundle: ONNX fp32 + dynamic INT8, manifest, self-test.")
    p.add_argument("run", help="training run directory")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--data", default=None, help="dataset root, if it moved since training")
    p.add_argument("--windows", type=_positive_int, default=64, help="held-out windows for verification (default 64)")
    p.add_argument("--min-agreement", type=float, default=0.98, help="gate: minimum top-1 agreement with PyTorch")
    p.add_argument("--max-score-drop", type=float, default=0.01, help="gate: maximum ICBHI Score drop (0.01 = 1 pt)")
    p.add_argument("--allow-degraded", action="store_true", help="write the bundle even if every artifact fails the gate")
    p.add_argument("--force", action="store_true", help="replace an existing bundle directory")

    p = add("classify", cmd_classify, "Classify a recording as a stream of 8 s windows.")
    p.add_argument("bundle", help="bundle directory from `stethoedge export`")
    p.add_argument("audio", help="WAV file (any rate 4-192 kHz, any bit depth, mono or multi-channel)")
    p.add_argument("--hop", type=_positive_float, default=2.0, help="seconds between decisions (default 2)")
    p.add_argument("--min-seconds", type=_positive_float, default=2.0,
                   help="first decision after this much audio, cyclically padded (default 2)")
    p.add_argument("--jsonl", default=None, help="write JSON lines to this file ('-' for stdout only)")
    p.add_argument("--artifact", default=None, help="artifact name (default: the bundle's default)")
    p.add_argument("--backend", default="auto", help="inference backend (default: by artifact format)")
    p.add_argument("--threads", type=_positive_int, default=None, help="inference threads")
    p.add_argument("--allow-degraded", action="store_true", help="allow an artifact that failed export verification")

    p = add("listen", cmd_listen, "Classify a live stream from a stethoscope on the firmware bridge; send RESULT frames back.")
    p.add_argument("bundle")
    p.add_argument("--bridge", required=True, help="serial port of the stethoscope (e.g. /dev/ttyACM0, a pty)")
    p.add_argument("--baud", type=_positive_int, default=921600, help="UART baud rate (default 921600)")
    p.add_argument("--hop", type=_positive_float, default=2.0, help="seconds between decisions (default 2)")
    p.add_argument("--min-seconds", type=_positive_float, default=2.0, help="first decision after this much audio")
    p.add_argument("--idle-timeout", type=_positive_float, default=5.0,
                   help="give up when the device sends nothing for this many seconds")
    p.add_argument("--jsonl", default=None, help="append one JSON line per window to this file")
    p.add_argument("--artifact", default=None)
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--allow-degraded", action="store_true")

    p = add("bench", cmd_bench, "Latency of every artifact in a bundle (features + inference per window).")
    p.add_argument("bundle")
    p.add_argument("--threads", type=_positive_int, default=None)
    p.add_argument("--runs", type=_positive_int, default=30, help="timed windows per artifact (after 3 warm-up)")
    p.add_argument("--json", default=None, help="also write the rows as JSON")

    p = add("demo", cmd_demo, "End to end on the embedded default: simulate -> train -> export -> classify -> bench.")
    p.add_argument("--out", default="out/demo", help="working directory (default out/demo)")
    p.add_argument("--real", default=None, help="also classify this real recording (e.g. an ICBHI WAV)")
    p.add_argument("--epochs", type=_positive_int, default=8)
    p.add_argument("--patients", type=_positive_int, default=20)
    p.add_argument("--preset", default="tiny", choices=["micro", "tiny", "small", "base"])

    try:
        from stethoedge.firmware_bridge.cli import add_bridge_parser
    except ImportError:  # pyserial missing: the bridge subcommand is simply not offered
        pass
    else:
        add_bridge_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; a StethoedgeError becomes one line on stderr and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except StethoedgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: {exc.name} is not installed; this command needs pip install 'stethoedge[{_extra_for(args.command)}]'",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _extra_for(command: str) -> str:
    return {"train": "train", "simulate": "train", "export": "export", "demo": "export"}.get(command, "runtime")


if __name__ == "__main__":
    raise SystemExit(main())
