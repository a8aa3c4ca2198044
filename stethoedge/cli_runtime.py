"""Device-side subcommands: classify, listen, devices, doctor."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

from stethoedge.cli_common import MAX_THREADS, AddCommand, bounded_float, bounded_int

BACKEND_CHOICES = ["auto", "onnxruntime", "litert", "tensorrt"]


def _format_result(r) -> str:
    probs = " ".join(f"{k}={v:.2f}" for k, v in r.probabilities.items())
    flags = (" padded" if r.padded else "") + (" after-gap" if r.after_gap else "")
    flags += f" skipped={r.skipped_before}" if r.skipped_before else ""
    smoothed = f" [{r.smoothed_label}]" if r.smoothed_label and r.smoothed_label != r.label else ""
    flags += "".join(f" ({w})" for w in getattr(r, "warnings", ()))
    if getattr(r, "abstained", False):  # the decision is an abstention: say what the model would have said, and why
        why = f"quality {r.quality}" if r.label == "poor_quality" else "low confidence"
        flags += f" (abstained: {why}; model {r.model_label})"
    return f"{r.start_s:8.2f}-{r.end_s:<8.2f} {r.label:<8} {r.confidence:5.2f}  {probs}{smoothed}{flags}"


def _abstention_summary(stats) -> str:
    """One line: windows, abstentions (poor quality / uncertain), for the classify and listen summaries."""
    return (f"# {stats.windows} window(s): {stats.windows - stats.abstained} decided, {stats.abstained} abstained "
            f"({stats.poor_quality} poor quality, {stats.uncertain} uncertain)")


def _record(r, source) -> dict[str, Any]:
    """A window's JSON-lines record; its ``warnings`` also carry what the source knew by then about the
    whole recording (a channel left out of the mix, a repaired header, digital silence of a multi-channel file)."""
    record = r.to_json()
    known = list(getattr(source, "warnings", ()))
    record["warnings"] = known + list(record.get("warnings", ()))
    return record


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


def _check_outputs(args: argparse.Namespace, *inputs: Any) -> None:
    """Before any work: refuse --jsonl / --record paths that cannot be written safely or are an input
    (the bundle's files, the recording, the key); runtime/outputs.py has the rules."""
    from stethoedge.runtime.outputs import check_output, check_output_dir, files_under

    sources = [*inputs, *files_under(args.bundle), getattr(args, "require_signature", None)]
    check_output(args.jsonl, sources)
    if getattr(args, "record", None):
        check_output_dir(args.record, sources)


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
                    jsonl.write(_record(r, source))
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
    _check_outputs(args, args.audio)
    # Header first: a bad file fails before the model loads. ``-``: standard input, read whole.
    source = FileSource(args.audio, realtime=args.realtime)
    clf = _open_classifier(args)
    recorder = _recorder(args)
    engine = _engine(clf, args, recorder)
    to_stdout = args.jsonl == "-"
    if not to_stdout:
        print(f"# {source.path}: {source.duration_s:.2f} s, artifact {clf.backend.artifact.name} on {clf.backend.name}")
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
    print(_abstention_summary(engine.stats), file=sys.stderr if to_stdout else sys.stdout, flush=True)
    for warning in source.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if recorder is not None and recorder.error:
        print(f"warning: {recorder.error}", file=sys.stderr)
    return 0


def cmd_classify_batch(args: argparse.Namespace) -> int:
    """Classify every recording of a directory. Exit 0: all classified; 1: some failed (each has an error
    record); 2: none found, or none could be classified."""
    import os

    from stethoedge.runtime.audio_io import AUDIO_SUFFIXES
    from stethoedge.runtime.batch import BatchOptions, classify_files, has_subfolders, list_audio
    from stethoedge.runtime.errors import AudioError
    from stethoedge.runtime.jsonl import JsonlWriter

    _bundle_and_target(args, "directory")
    files = list_audio(args.directory, recursive=args.recursive)
    if not files:
        hint = "; it has sub-folders: add --recursive" if not args.recursive and has_subfolders(args.directory) else ""
        raise AudioError(f"{args.directory}: no audio files to classify (looked for {' '.join(AUDIO_SUFFIXES)}){hint}")
    _check_outputs(args, *files)
    options = BatchOptions(args.bundle, artifact=args.artifact, backend=args.backend, threads=args.threads or 1,
                           allow_degraded=args.allow_degraded, require_signature=args.require_signature,
                           hop_s=args.hop, min_s=args.min_seconds, smoothing=args.smooth)
    jsonl = JsonlWriter(args.jsonl, atomic=True, inputs=files) if args.jsonl else None
    failed = warned = 0
    finished = False
    try:
        for res in classify_files(files, options, workers=args.workers):
            failed += res.error is not None
            warned += bool(res.warnings)
            if res.error:
                print(f"{res.file}: error: {res.error}", file=sys.stderr, flush=True)
            for record in res.records():  # one per window, or one error record
                if jsonl is not None:
                    jsonl.write(record)
            if args.jsonl != "-":
                name = os.path.relpath(res.file, args.directory)
                for w in res.windows:
                    flags = "".join(f" ({x})" for x in w.get("warnings", ()))
                    print(f"{name}: {w['start_s']:.2f}-{w['end_s']:.2f} {w['label']} {w['confidence']:.2f}{flags}",
                          flush=True)
            for warning in res.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        if jsonl is not None:  # the last line says what the run covered
            jsonl.write({"summary": {"files": len(files), "classified": len(files) - failed, "failed": failed,
                                     "with_warnings": warned}})
        finished = True
    finally:
        if jsonl is not None:
            jsonl.close() if finished else jsonl.abort()
    print(f"# {len(files) - failed} of {len(files)} file(s) classified, {failed} failed, {warned} with warnings",
          file=sys.stderr)
    if failed == len(files):
        raise AudioError(f"none of the {len(files)} file(s) in {args.directory} could be classified")
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
    _check_outputs(args, args.replay)
    clf = _open_classifier(args)
    source, what = _live_source(args)
    recorder = _recorder(args)
    # Always a capture thread and ring, whatever the source (a --fast replay exercises the same path).
    engine = _engine(clf, args, recorder, threaded=True)
    jsonl = JsonlWriter(args.jsonl) if args.jsonl else None
    def send_back(r) -> None:  # the bridge shows each decision on the stethoscope (RESULT frame)
        # An abstention ("uncertain", "poor_quality") is no class of the model: the frame carries the model's
        # class with confidence 0, which the device shows as "no decision".
        model = r.model_label or r.label
        source.send_result(clf.bundle.labels.index(model), 0.0 if r.abstained else r.confidence, r.end_s)

    from stethoedge.runtime.exam import quality_hint

    def on_result(r) -> None:  # the signal's state first, live, before the window's label (issue 14)
        hint = quality_hint(r)
        if hint is not None:
            print(f"! {hint}", file=sys.stderr if args.jsonl == "-" else sys.stdout, flush=True)
        if args.bridge:
            send_back(r)

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
    print(_abstention_summary(engine.stats), flush=True)
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
    from stethoedge.runtime.errors import StethoedgeError

    try:
        devices = input_devices()
    except StethoedgeError as exc:
        if not args.json:
            raise
        print(json.dumps({"error": str(exc)}))  # --json: the error is JSON too (stdout), exit 2 as any error
        return 2
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
    from stethoedge.runtime.doctor import bundle_error, format_report, run_doctor

    report = run_doctor(bundle=args.bundle)
    print(json.dumps(report, indent=1) if args.json else format_report(report), flush=True)
    problem = bundle_error(report)  # the rest of the report is printed first; a bad bundle is still an error
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


#: Ranges of the stream options (also in their help texts).
HOP_RANGE = (0.1, 60.0)  # s between decisions: 10 per second at most, one a minute at least
MIN_SECONDS_RANGE = (0.25, 60.0)  # s before the first decision (0.25 s: the shortest audio decided on)


def _common(p: argparse.ArgumentParser, threads_default: str = "the backend's own choice") -> None:
    p.add_argument("--hop", type=bounded_float(*HOP_RANGE), default=2.0, metavar="SECONDS",
                   help="seconds between decisions (default 2, 0.1-60)")
    p.add_argument("--min-seconds", type=bounded_float(*MIN_SECONDS_RANGE), default=2.0, metavar="SECONDS",
                   help="first decision after this much audio, cyclically padded to the model window; more than "
                        "the window (8 s) counts as the window (default 2, 0.25-60)")
    p.add_argument("--smooth", type=_smoothing, default="mean:3",
                   help="decision smoothing across windows: none, mean:K (average of the last K windows), ema:A "
                        "(exponential average, weight A for the newest) or vote:K (majority of the last K); "
                        "K 1-1000, A 0-1 (default mean:3)")
    p.add_argument("--artifact", default=None, help="artifact of the bundle to run (default: the bundle's default)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="inference backend (default auto: by artifact format and what is installed); a named "
                        "backend without --artifact runs the best artifact it can (litert: tflite-*)")
    p.add_argument("--threads", type=bounded_int(1, MAX_THREADS), default=None,
                   help=f"inference threads (default: {threads_default}, 1-{MAX_THREADS})")
    p.add_argument("--allow-degraded", action="store_true",
                   help="run an artifact that failed export verification (default: refuse it)")
    p.add_argument("--require-signature", metavar="KEY", default=None,
                   help="refuse the bundle unless it is signed by this Ed25519 public key (default: no check)")


def _recording_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--record", metavar="DIR", default=None,
                   help="record the raw 16 kHz audio to rotating WAV files with an index in DIR (default: no recording)")
    p.add_argument("--segment-seconds", type=bounded_float(1.0, 86400.0), default=300.0, metavar="SECONDS",
                   help="length of one recording file (default 300, 1-86400)")
    p.add_argument("--max-segments", type=bounded_int(1, 1_000_000), default=None, metavar="N",
                   help="keep only the newest N recording files (default: keep all, 1-1000000)")


def register(add: AddCommand) -> None:
    """Add this module's subcommands to the parser."""
    from stethoedge.runtime.audio_io import AUDIO_SUFFIXES, MAX_RATE_HZ, MIN_RATE_HZ, STDIN_MAX_BYTES

    formats = " ".join(s.lstrip(".") for s in AUDIO_SUFFIXES)
    p = add("classify", cmd_classify, "Classify a recording as a stream of 8 s windows.")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] AUDIO",
                   help="bundle directory from `stethoedge export` (default: the shipped model), then the recording: "
                        f"{formats}; any rate 4-192 kHz, any bit depth, mono or multi-channel; '-' reads it from "
                        f"standard input (at most {STDIN_MAX_BYTES // 2**20} MiB)")
    p.add_argument("--jsonl", default=None, metavar="FILE",
                   help="also write one JSON line per window to FILE, published only when the run succeeds "
                        "('-': to stdout, instead of the table) (default: none)")
    p.add_argument("--realtime", action="store_true",
                   help="replay at the recording's own pace (default: as fast as possible)")
    _common(p)
    _recording_options(p)

    p = add("classify-batch", cmd_classify_batch,
            f"Classify every recording ({formats}) in a directory with N worker processes (output in file order). "
            "Exit 0: all classified; 1: some failed; 2: none found or none classified.")
    p.add_argument("paths", nargs="+", metavar="[BUNDLE] DIRECTORY",
                   help="bundle directory (default: the shipped model), then the directory of recordings")
    p.add_argument("--recursive", action="store_true",
                   help="also classify the recordings in sub-folders (default: only those directly in DIRECTORY; "
                        "hidden files and folders are skipped, symlinked folders not followed)")
    p.add_argument("--workers", type=bounded_int(1, MAX_THREADS), default=1,
                   help=f"worker processes, each with its own copy of the model (default 1, 1-{MAX_THREADS})")
    p.add_argument("--jsonl", default=None, metavar="FILE",
                   help="write JSON lines to FILE ('-': stdout only): one per window with a 'file' field, one "
                        "{'file', 'error'} record per file that failed, a last {'summary'} record (default: none)")
    _common(p, threads_default="1 per worker")

    p = add("listen", cmd_listen, "Classify live audio (sound card, firmware bridge or a real-time replay) until stopped.")
    p.add_argument("bundle", nargs="?", default=None, help="bundle directory (default: the shipped model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--device", default=None,
                     help="input device index or name from `stethoedge devices` (default: the system default input)")
    src.add_argument("--bridge", default=None, metavar="PORT",
                     help="serial port of a firmware-bridge stethoscope, e.g. /dev/ttyACM0 or a pty (default: none)")
    src.add_argument("--replay", default=None, metavar="AUDIO",
                     help="replay a recording as if live, real time unless --fast (default: none)")
    p.add_argument("--device-rate", type=bounded_int(MIN_RATE_HZ, MAX_RATE_HZ), default=None, metavar="HZ",
                   help=f"open the device at this rate (default: 16000 if accepted, else its native rate; "
                        f"{MIN_RATE_HZ}-{MAX_RATE_HZ})")
    p.add_argument("--retry-seconds", type=bounded_float(0.1, 3600.0), default=1.0, metavar="SECONDS",
                   help="retry interval while the device is lost (default 1, 0.1-3600)")
    p.add_argument("--fast", action="store_true", help="with --replay: as fast as possible (default: real time)")
    p.add_argument("--baud", type=bounded_int(1200, 16_000_000), default=921600,
                   help="bridge: UART baud rate (default 921600, 1200-16000000)")
    p.add_argument("--idle-timeout", type=bounded_float(0.1, 3600.0), default=5.0, metavar="SECONDS",
                   help="bridge: give up when the device sends nothing for this many seconds (default 5, 0.1-3600)")
    p.add_argument("--jsonl", default=None, metavar="FILE",
                   help="append one JSON line per window to FILE ('-': stdout) (default: none)")
    _common(p)
    _recording_options(p)

    p = add("devices", cmd_devices, "List audio input devices and the sample rates they accept.")
    p.add_argument("--json", action="store_true", help="print the list as JSON (default: a table)")

    p = add("doctor", cmd_doctor, "Report backends, execution providers, audio devices, versions, and what to install.")
    p.add_argument("--bundle", default=None,
                   help="also open this bundle on every available backend and run its self-test (default: none)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (default: text)")
