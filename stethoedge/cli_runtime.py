"""Device-side subcommands: classify, listen."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import positive_float as _positive_float
from stethoedge.cli_common import positive_int as _positive_int


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


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
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
