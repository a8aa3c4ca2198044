"""Device-side subcommands: classify, listen, devices, doctor."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from stethoedge.cli_common import AddCommand
from stethoedge.cli_common import positive_float as _positive_float
from stethoedge.cli_common import positive_int as _positive_int

BACKEND_CHOICES = ["auto", "onnxruntime", "litert", "tensorrt"]


def _format_result(r) -> str:
    probs = " ".join(f"{k}={v:.2f}" for k, v in r.probabilities.items())
    flags = (" padded" if r.padded else "") + (" after-gap" if r.after_gap else "")
    flags += f" skipped={r.skipped_before}" if r.skipped_before else ""
    smoothed = f" [{r.smoothed_label}]" if r.smoothed_label and r.smoothed_label != r.label else ""
    return f"{r.start_s:8.2f}-{r.end_s:<8.2f} {r.label:<8} {r.confidence:5.2f}  {probs}{smoothed}{flags}"


def _smoothing(text: str):
    from stethoedge.runtime.smoothing import parse_smoothing

    try:
        return parse_smoothing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default_bundle_if_none(args: argparse.Namespace) -> None:
    """No bundle named: the model shipped with the package (stethoedge.models)."""
    if args.bundle is None:
        from stethoedge.models import default_bundle

        args.bundle = str(default_bundle())


def _bundle_and_target(args: argparse.Namespace, target: str) -> None:
    """``[BUNDLE] TARGET``: one path is the target (with the shipped bundle), two are bundle and target."""
    from stethoedge.runtime.errors import StethoedgeError

    if len(args.paths) > 2:
        raise StethoedgeError(f"expected [BUNDLE] {target.upper()}, got {len(args.paths)} paths: {' '.join(args.paths)}")
    args.bundle = args.paths[0] if len(args.paths) == 2 else None
    _default_bundle_if_none(args)
    setattr(args, target, args.paths[-1])


def _open_classifier(args: argparse.Namespace):
    from stethoedge.runtime.engine import Classifier

    return Classifier.open(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads,
                           allow_degraded=args.allow_degraded, require_signature=args.require_signature)


def _stop_on_sigterm() -> None:
    """systemd stops a service with SIGTERM: treat it like Ctrl-C (flush, close, print counters)."""

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the flush
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _engine(clf, args: argparse.Namespace, recorder=None, threaded: bool | None = None):
    from stethoedge.runtime.stream import StreamConfig, StreamEngine

    config = StreamConfig(hop_s=args.hop, min_s=args.min_seconds, smoothing=args.smooth, threaded=threaded)
    return StreamEngine(clf, config, recorder=recorder)


def _run_stream(engine, source, jsonl, on_result=None, quiet: bool = False, keep_going: bool = False) -> bool:
    """Drive the engine; return True if interrupted (Ctrl-C / SIGTERM). ``keep_going`` (listen): a JSON-lines
    write failure is a warning and the stream goes on; otherwise (classify) it is the error."""
    from stethoedge.runtime.errors import OutputError

    results = engine.run(source)
    try:
        for r in results:
            if on_result is not None:
                on_result(r)
            if not quiet:
                print(_format_result(r), flush=True)
            if jsonl is not None:
                try:
                    jsonl.write(r.to_json())
                except OutputError as exc:
                    if not keep_going:
                        raise
                    print(f"warning: {exc}; JSON lines stopped, classification goes on", file=sys.stderr, flush=True)
                    jsonl = None
    except KeyboardInterrupt:
        print("# stopped", file=sys.stderr, flush=True)
        return True
    finally:
        results.close()  # stop the capture thread and settle the counters now, not at garbage collection
    return False


def cmd_classify(args: argparse.Namespace) -> int:
    from stethoedge.runtime.jsonl import JsonlWriter
    from stethoedge.runtime.sources import FileSource

    _stop_on_sigterm()
    _bundle_and_target(args, "audio")
    source = FileSource(args.audio, realtime=args.realtime)  # header first: a bad file fails before the model loads
    clf = _open_classifier(args)
    recorder = _recorder(args)
    engine = _engine(clf, args, recorder)
    to_stdout = args.jsonl == "-"
    if not to_stdout:
        print(f"# {args.audio}: {source.duration_s:.2f} s, artifact {clf.backend.artifact.name} on {clf.backend.name}")
        print(f"# {'start-end s':<17} {'label':<8} {'conf':>5}  probabilities")
    jsonl = JsonlWriter(args.jsonl, atomic=True) if args.jsonl else None
    finished = False
    try:
        _run_stream(engine, source, jsonl, quiet=to_stdout)
        finished = True
    finally:
        source.close()
        if recorder is not None:
            recorder.close()
        if jsonl is not None:
            jsonl.close() if finished else jsonl.abort()  # a failed run publishes no half JSON-lines file
    for warning in source.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if recorder is not None and recorder.error:
        print(f"warning: {recorder.error}", file=sys.stderr)
    return 0


def cmd_classify_batch(args: argparse.Namespace) -> int:
    from stethoedge.runtime.batch import BatchOptions, classify_files, list_audio
    from stethoedge.runtime.jsonl import JsonlWriter

    _bundle_and_target(args, "directory")
    files = list_audio(args.directory)
    options = BatchOptions(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads or 1,
                           allow_degraded=args.allow_degraded, require_signature=args.require_signature,
                           hop_s=args.hop, min_s=args.min_seconds, smoothing=args.smooth)
    jsonl = JsonlWriter(args.jsonl, atomic=True) if args.jsonl else None
    failed = 0
    finished = False
    try:
        for res in classify_files(files, options, workers=args.workers):
            if res.error:
                failed += 1
                print(f"{res.file}: error: {res.error}", file=sys.stderr, flush=True)
            for w in res.windows:
                if jsonl is not None:
                    jsonl.write({"file": res.file, **w})
                if args.jsonl != "-":
                    print(f"{Path(res.file).name}: {w['start_s']:.2f}-{w['end_s']:.2f} {w['label']} {w['confidence']:.2f}")
            for warning in res.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        finished = True
    finally:
        if jsonl is not None:
            jsonl.close() if finished else jsonl.abort()
    print(f"# {len(files) - failed} of {len(files)} file(s) classified, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _recorder(args: argparse.Namespace):
    if not getattr(args, "record", None):
        return None
    from stethoedge.runtime.recorder import RotatingRecorder

    return RotatingRecorder(args.record, segment_seconds=args.segment_seconds, max_segments=args.max_segments)


def _live_source(args: argparse.Namespace):
    """The source named on the command line: --bridge, --replay, or a sound card (--device)."""
    if args.bridge:
        from stethoedge.firmware_bridge.serial_source import BridgeSource

        return BridgeSource(args.bridge, args.baud, start=True, idle_timeout=args.idle_timeout), f"{args.bridge} at {args.baud} baud"
    if args.replay:
        from stethoedge.runtime.sources import FileSource

        return FileSource(args.replay, realtime=not args.fast), f"replay of {args.replay}"
    from stethoedge.runtime.capture import SoundDeviceSource

    device: Any = int(args.device) if args.device is not None and args.device.isdigit() else args.device
    src = SoundDeviceSource(device, device_rate=args.device_rate, retry_s=args.retry_seconds)
    return src, f"input device {src.device} ({src.device_name}) at {src.device_rate} Hz -> 16000 Hz"


def cmd_listen(args: argparse.Namespace) -> int:
    from stethoedge.runtime.jsonl import JsonlWriter

    _stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="# %(name)s: %(message)s", stream=sys.stderr)
    _default_bundle_if_none(args)
    clf = _open_classifier(args)
    source, what = _live_source(args)
    recorder = _recorder(args)
    # Always a capture thread and ring, whatever the source (a --fast replay exercises the same path).
    engine = _engine(clf, args, recorder, threaded=True)
    jsonl = JsonlWriter(args.jsonl) if args.jsonl else None
    def send_back(r) -> None:  # the bridge shows each decision on the stethoscope (RESULT frame)
        source.send_result(clf.bundle.labels.index(r.label), r.confidence, r.end_s)

    on_result = send_back if args.bridge else None
    print(f"# listening on {what}; artifact {clf.backend.artifact.name} on {clf.backend.name}", flush=True)
    try:
        _run_stream(engine, source, jsonl, on_result, keep_going=True)
    finally:
        try:
            source.close()
        finally:
            if recorder is not None:
                recorder.close()
            if jsonl is not None:
                jsonl.close()
    s = engine.stats.as_dict()
    print("# stream: " + ", ".join(f"{k}={round(v, 2) if isinstance(v, float) else v}" for k, v in s.items()), flush=True)
    if args.bridge:
        b = source.stats
        print(f"# bridge: {b.audio_frames} audio frames, {b.crc_errors} CRC errors, {b.gaps} gaps "
              f"({b.samples_lost} samples lost, never filled)", flush=True)
    elif hasattr(source, "stats"):
        print("# capture: " + ", ".join(f"{k}={v}" for k, v in source.stats.as_dict().items()), flush=True)
    if recorder is not None:
        print(f"# recorded {len(recorder.segments)} segment(s) in {recorder.dir}", flush=True)
        if recorder.error:
            print(f"warning: {recorder.error} ({recorder.memory_samples} samples held)", file=sys.stderr, flush=True)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from stethoedge.runtime.capture import input_devices

    devices = input_devices()
    if args.json:
        print(json.dumps(devices, indent=1))
        return 0
    if not devices:
        print("# no input devices (no sound card, or no audio server running)")
        return 0
    print(f"# {'idx':>3} {'name':<32} {'host API':<12} {'ch':>3} {'default':>7}  accepted rates (Hz)")
    for d in devices:
        mark = "*" if d["default"] else " "
        rates = ",".join(str(r) for r in d["rates"]) or "none of the probed rates"
        print(f"{mark} {d['index']:>3} {d['name'][:32]:<32} {d['hostapi'][:12]:<12} {d['channels']:>3} "
              f"{d['default_rate']:>7}  {rates}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from stethoedge.runtime.doctor import format_report, run_doctor

    report = run_doctor(bundle=args.bundle)
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hop", type=_positive_float, default=2.0, help="seconds between decisions (default 2)")
    p.add_argument("--min-seconds", type=_positive_float, default=2.0,
                   help="first decision after this much audio, cyclically padded (default 2)")
    p.add_argument("--smooth", type=_smoothing, default="mean:3",
                   help="decision smoothing across windows: none, mean:K, ema:A or vote:K (default mean:3)")
    p.add_argument("--artifact", default=None, help="artifact name (default: the bundle's default)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend (default auto: by artifact format and what is installed)")
    p.add_argument("--threads", type=_positive_int, default=None, help="inference threads")
    p.add_argument("--allow-degraded", action="store_true", help="allow an artifact that failed export verification")
    p.add_argument("--require-signature", metavar="KEY", default=None,
                   help="refuse the bundle unless it is signed by this Ed25519 public key")


def _recording_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", metavar="DIR", default=None,
                   help="record the raw 16 kHz audio to rotating WAV files with an index in DIR")
    p.add_argument("--segment-seconds", type=_positive_float, default=300.0, help="length of one recording file (default 300)")
    p.add_argument("--max-segments", type=_positive_int, default=None, help="keep at most this many recording files")


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    p = add("classify", cmd_classify, "Classify a recording as a stream of 8 s windows.")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] AUDIO",
                   help="bundle directory from `stethoedge export` (default: the shipped model), then the recording "
                        "(WAV/FLAC/..., any rate 4-192 kHz, any bit depth, mono or multi-channel)")
    p.add_argument("--jsonl", default=None, help="write JSON lines to this file ('-' for stdout only)")
    p.add_argument("--realtime", action="store_true", help="replay at the recording's own pace (default: as fast as possible)")
    _common(p)
    _recording_options(p)

    p = add("classify-batch", cmd_classify_batch,
            "Classify every WAV/FLAC in a directory with N worker processes (output in file order).")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] DIRECTORY",
                   help="bundle directory (default: the shipped model), then the directory of recordings")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default 1)")
    p.add_argument("--jsonl", default=None, help="write JSON lines (with a 'file' field) here ('-' for stdout only)")
    _common(p)

    p = add("listen", cmd_listen, "Classify live audio (sound card, firmware bridge or a real-time replay) until stopped.")
    p.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: the shipped model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--device", default=None, help="input device index or name (default: the system default input)")
    src.add_argument("--bridge", default=None, help="serial port of a firmware-bridge stethoscope (e.g. /dev/ttyACM0, a pty)")
    src.add_argument("--replay", default=None, metavar="WAV", help="replay a file as if live (real time unless --fast)")
    p.add_argument("--device-rate", type=_positive_int, default=None,
                   help="open the device at this rate (default: 16000 if accepted, else its native rate)")
    p.add_argument("--retry-seconds", type=_positive_float, default=1.0, help="retry interval when the device is lost")
    p.add_argument("--fast", action="store_true", help="with --replay: as fast as possible")
    p.add_argument("--baud", type=_positive_int, default=921600, help="UART baud rate (default 921600)")
    p.add_argument("--idle-timeout", type=_positive_float, default=5.0,
                   help="bridge: give up when the device sends nothing for this many seconds")
    p.add_argument("--jsonl", default=None, help="append one JSON line per window to this file ('-' for stdout)")
    _common(p)
    _recording_options(p)

    p = add("devices", cmd_devices, "List audio input devices and the sample rates they accept.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add("doctor", cmd_doctor, "Report backends, execution providers, audio devices, versions, and what to install.")
    p.add_argument("--bundle", default=None, help="also open this bundle on every available backend (self-test)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
