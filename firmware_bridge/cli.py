"""``stethoedge bridge ...``: the firmware bridge's command line.

The main CLI calls ``add_bridge_parser(subparsers)``; this module imports nothing beyond
argparse at load time (no numpy, no pyserial, never torch) and each command imports what it
needs when it runs. Commands return an exit status and raise ``StethoedgeError`` (``BridgeError``,
``AudioError``) for anything the user can fix.

    stethoedge bridge simulate --port /dev/pts/5 --wav lung.wav --format adpcm --realtime
    stethoedge bridge simulate --port pty --wav lung.wav --realtime --loop
    stethoedge bridge decode capture.bin
"""
from __future__ import annotations

import argparse
import sys

from stethoedge.cli_common import bounded_float, bounded_int  # standard library only, like this module

#: Most samples one PCM16 AUDIO frame carries (messages.Audio.max_samples; a test checks they agree).
MAX_FRAME_SAMPLES = 2042


def add_bridge_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bridge`` (with ``simulate`` and ``decode``) on the main CLI's subparsers.

    Every leaf parser sets ``func``: call ``args.func(args)``; it returns the exit status.
    """
    bridge = subparsers.add_parser(
        "bridge",
        help="firmware bridge: simulate a stethoscope on a serial port, decode captures",
        description="Tools for the serial protocol between stethoscope firmware and stethoedge "
        "(see firmware_bridge/PROTOCOL.md).",
    )
    bridge.set_defaults(func=_usage(bridge))
    sub = bridge.add_subparsers(dest="bridge_command", metavar="COMMAND")

    sim = sub.add_parser(
        "simulate",
        help="stream a WAV over a serial port as a stethoscope would",
        description="Act as stethoscope firmware: send HELLO and AUDIO frames of a WAV file over a serial "
        "port (or a pseudo-terminal), answer CONTROL frames and print the RESULT frames the host sends back.",
    )
    sim.add_argument("--port", required=True,
                     help="serial device or pty path the simulator writes to, a pyserial URL, or 'pty' to "
                     "create a pseudo-terminal pair and print the name the host should open")
    sim.add_argument("--wav", required=True, help="audio file to stream (resampled to --rate, mixed to mono)")
    sim.add_argument("--format", choices=("pcm16", "adpcm"), default="pcm16",
                     help="sample encoding: pcm16 (256 kbit/s) or adpcm (64 kbit/s, for slow UART/BLE links) "
                     "(default %(default)s)")
    sim.add_argument("--baud", type=bounded_int(1200, 16_000_000), default=921600, help="line speed of a real serial port (default 921600)")
    sim.add_argument("--throttle", action="store_true",
                     help="limit the byte rate to what a UART at --baud carries (8N1), e.g. on a pty "
                     "(default: off, as fast as the port takes)")
    sim.add_argument("--realtime", action="store_true", help="send each frame when a device would, on the audio clock (default: off, at once)")
    sim.add_argument("--rate", type=bounded_int(4000, 192_000), default=16000, help="device sample rate in Hz (default 16000)")
    sim.add_argument("--frame-samples", type=bounded_int(1, MAX_FRAME_SAMPLES), default=256, help="samples per AUDIO frame (default 256)")
    sim.add_argument("--heartbeat-ms", type=bounded_int(0, 60_000), default=1000, help="HEARTBEAT period in ms of audio, 0 = none (default 1000)")
    sim.add_argument("--wait-start", action="store_true", help="wait for the host's CONTROL START before streaming (default: off, stream at once)")
    sim.add_argument("--start-timeout", type=bounded_float(0.1, 3600.0), default=30.0, help="seconds to wait for START (default 30)")
    sim.add_argument("--linger", type=bounded_float(0.0, 3600.0), default=1.0,
                     help="seconds to keep listening for host frames after the last AUDIO frame (default 1)")
    sim.add_argument("--loop", action="store_true", help="repeat the file until interrupted (default: off, once)")
    sim.add_argument("--device-id", default="stethoedge-sim", help="device id announced in HELLO (default %(default)s)")
    sim.add_argument("--boot-id", type=bounded_int(0, 0xFFFFFFFF), default=None,
                     help="boot id announced in HELLO (default: random, as a real device after power-up)")
    sim.set_defaults(func=run_simulate)

    dec = sub.add_parser(
        "decode",
        help="list the frames in a capture of the serial line",
        description="Decode a raw byte capture of the device->host (or host->device) line: one line per "
        "frame, then the decoder's counters and the audio stream's gaps.",
    )
    dec.add_argument("file", help="raw capture (e.g. from `cat /dev/ttyACM0 > capture.bin`)")
    dec.add_argument("--limit", type=bounded_int(0, 1_000_000_000), default=None, help="list at most this many frames (default: all)")
    dec.add_argument("--quiet", action="store_true", help="print only the summary, no line per frame (default: off)")
    dec.set_defaults(func=run_decode)
    return bridge


def _usage(parser: argparse.ArgumentParser):
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def run_simulate(args: argparse.Namespace) -> int:
    """``bridge simulate``."""
    import os

    from stethoedge.firmware_bridge.device_simulator import DeviceSimulator, load_pcm16
    from stethoedge.firmware_bridge.errors import BridgeError
    from stethoedge.firmware_bridge.links import PtyPair, open_link
    from stethoedge.firmware_bridge.messages import Ack, Control, Result
    from stethoedge.firmware_bridge.protocol import AudioFormat

    if args.frame_samples < 1 or args.rate < 1000 or args.baud < 1:
        raise BridgeError("--frame-samples, --rate and --baud must be positive (rate at least 1000 Hz)")
    if args.boot_id is not None and not 0 <= args.boot_id <= 0xFFFFFFFF:
        raise BridgeError("--boot-id must fit 32 bits")
    pcm = load_pcm16(args.wav, args.rate)
    pty = None
    if args.port == "pty":
        pty = PtyPair()
        link = pty.link()
        print(f"simulated device on {pty.slave_name} (open it with the host; Ctrl-C stops)", flush=True)
    else:
        link = open_link(args.port, args.baud)

    def show(seq: int, msg) -> None:
        if isinstance(msg, Result):
            print(f"host RESULT seq={seq} label={msg.label_index} confidence={msg.confidence:.3f} "
                  f"window={msg.window_ms / 1000:.3f}s", flush=True)
        elif isinstance(msg, Control):
            print(f"host CONTROL seq={seq} {msg.command.name.lower()}", flush=True)
        elif isinstance(msg, Ack):
            print(f"host ACK seq={seq} of seq {msg.acked_seq}", flush=True)

    sim = DeviceSimulator(
        link, pcm, args.rate,
        fmt=AudioFormat.IMA_ADPCM if args.format == "adpcm" else AudioFormat.PCM16,
        frame_samples=args.frame_samples, heartbeat_ms=args.heartbeat_ms, realtime=args.realtime,
        line_rate=args.baud / 10.0 if args.throttle else None, wait_start=args.wait_start,
        start_timeout=args.start_timeout, linger=args.linger, loop=args.loop, device_id=args.device_id,
        boot_id=args.boot_id if args.boot_id is not None else int.from_bytes(os.urandom(4), "little"),
        on_host_message=show,
    )
    try:
        report = sim.run()
    except KeyboardInterrupt:
        report = sim.report
        print("interrupted", file=sys.stderr)
    finally:
        link.close()
        if pty is not None:
            pty.close()
    seconds = report.samples_sent / args.rate
    print(f"sent {report.frames_sent} frames, {report.bytes_sent} bytes, {seconds:.2f} s of audio"
          f"{' (stopped by host)' if report.stopped_by_host else ''}")
    return 0


def run_decode(args: argparse.Namespace) -> int:
    """``bridge decode``."""
    from pathlib import Path

    from stethoedge.firmware_bridge.errors import BridgeError, ProtocolError
    from stethoedge.firmware_bridge.framing import FrameDecoder
    from stethoedge.firmware_bridge.messages import Audio, decode_message
    from stethoedge.firmware_bridge.protocol import MsgType
    from stethoedge.firmware_bridge.sequencer import AudioSequencer

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BridgeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    decoder = FrameDecoder()
    sequencer = AudioSequencer()
    listed = 0
    bad = 0
    for frame in decoder.feed(data):
        sequencer.note_seq(frame.seq)
        try:
            msg = decode_message(frame)
        except ProtocolError as exc:
            bad += 1
            text = f"INVALID ({exc})"
        else:
            if isinstance(msg, Audio):
                sequencer.push(frame.seq, msg, 0.0)
                text = (f"index={msg.sample_index} rate={msg.sample_rate} format={msg.format.name.lower()} "
                        f"n={msg.n_samples}{' LAST' if msg.last else ''}")
            else:
                text = " ".join(f"{k}={v!r}" for k, v in vars(msg).items())
        if not args.quiet and (args.limit is None or listed < args.limit):
            try:
                name = MsgType(frame.type).name
            except ValueError:
                name = f"0x{frame.type:02x}"
            print(f"seq={frame.seq:<5d} t={frame.timestamp / 1e6:10.6f}s {name:<9s} {text}")
            listed += 1
    sequencer.flush()
    stats = {**decoder.stats.as_dict(), **sequencer.stats.as_dict(), "bad_messages": bad,
             "pending_bytes": decoder.pending}
    print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return 0
