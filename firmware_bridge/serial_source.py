"""``BridgeSource``: a stethoscope on a serial line as a runtime ``AudioSource``.

Reads frames from a pyserial port (UART, USB CDC, a BLE serial bridge, a pty), checks and
decodes them, and yields 16 kHz mono ``AudioChunk``s. Lost frames become ``gap_before`` on the
next chunk (from the device's sample counter), duplicated and late frames are dropped, and
every irregularity is counted in ``stats``. ``send_result`` / ``send_control`` write frames
back to the device.

    with BridgeSource("/dev/ttyACM0", 921600, start=True) as src:
        for chunk in src.chunks():
            ...
            src.send_result(label, confidence, window_time)
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from stethoedge.firmware_bridge.errors import BridgeError, ProtocolError
from stethoedge.firmware_bridge.framing import Frame, FrameDecoder
from stethoedge.firmware_bridge.messages import (
    Ack,
    Audio,
    Control,
    Error,
    Heartbeat,
    Hello,
    Message,
    Result,
    decode_message,
    encode_message,
)
from stethoedge.firmware_bridge.protocol import AudioFormat, Command, FilterMode, MsgType
from stethoedge.firmware_bridge.sequencer import LATE_WINDOW_S, AudioSequencer
from stethoedge.runtime.audio_io import MAX_RATE_HZ, MIN_RATE_HZ
from stethoedge.runtime.sources import AudioChunk

log = logging.getLogger("stethoedge.bridge")

OUTPUT_RATE = 16000


@dataclass
class BridgeStats:
    """Everything a BridgeSource has counted (a snapshot)."""

    # bytes and frames (FrameDecoder)
    bytes_in: int = 0
    frames: int = 0
    crc_errors: int = 0
    malformed: int = 0
    oversize: int = 0
    bad_version: int = 0
    garbage_bytes: int = 0
    resyncs: int = 0
    # audio stream (AudioSequencer); sample counts at 16 kHz
    audio_frames: int = 0
    samples: int = 0
    gaps: int = 0
    samples_lost: int = 0
    frames_lost: int = 0
    duplicates: int = 0
    late_frames: int = 0
    overlap_samples: int = 0
    restarts: int = 0
    # messages
    hellos: int = 0
    heartbeats: int = 0
    device_errors: int = 0
    acks: int = 0
    bad_messages: int = 0  # valid frames whose payload did not parse
    unknown_messages: int = 0  # valid frames of a type this host does not know or expect
    device_dropped_samples: int = 0  # as last reported by the device's HEARTBEAT
    # host -> device
    results_sent: int = 0
    controls_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class BridgeSource:
    """Audio from stethoscope firmware speaking the bridge protocol over a serial port.

    ``port``: a device path (``/dev/ttyACM0``, ``COM3``, a pty slave), a pyserial URL
    (``socket://host:port``, ``loop://``), or an already open port object — a ``serial.Serial``
    or anything with pyserial's ``read(n)`` (returning within a timeout), ``write``,
    ``in_waiting`` and ``close`` — which this object then owns and closes. ``baud`` is ignored by
    USB CDC and ptys.

    ``request_hello``: ask for the device's HELLO on open (``device`` then describes it).
    ``start``: send CONTROL START (with ``stream_format`` / ``frame_samples`` / ``device_rate``,
    0 or None meaning the device's default) when ``chunks()`` begins, and STOP on ``close()``.
    ``until_end``: ``chunks()`` returns after an AUDIO frame flagged LAST; otherwise it waits for
    the next stream. ``idle_timeout``: seconds without any valid frame (audio, heartbeat...)
    after which ``chunks()`` raises BridgeError; None waits forever. ``read_timeout`` bounds
    each blocking read, so the idle check and a concurrent ``close()`` take effect promptly.
    """

    sample_rate: int = OUTPUT_RATE

    def __init__(self, port, baud: int = 921600, *, start: bool = False,
                 stream_format: AudioFormat | str | None = None, frame_samples: int = 0, device_rate: int = 0,
                 until_end: bool = True, idle_timeout: float | None = 5.0, read_timeout: float = 0.02,
                 late_window_s: float = LATE_WINDOW_S, request_hello: bool = True, ack_hello: bool = True,
                 exclusive: bool = True) -> None:
        import serial

        self._serial_mod = serial
        self.sample_rate = OUTPUT_RATE
        self.baud = baud
        self.start = start
        self.stream_format = _parse_format(stream_format)
        self.frame_samples = frame_samples
        self.device_rate = device_rate
        self.until_end = until_end
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.ack_hello = ack_hello
        self.exclusive = exclusive
        self.device: Hello | None = None  # the last HELLO received
        self.last_heartbeat: Heartbeat | None = None
        self.last_device_error: Error | None = None
        self.last_ack: Ack | None = None
        self.ended = False  # the device flagged the end of its stream
        self._decoder = FrameDecoder()
        self._sequencer = AudioSequencer(OUTPUT_RATE, late_window_s)
        self._counts = BridgeStats()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._t0 = time.monotonic()
        self._started_stream = False
        self._closed = False
        if isinstance(port, (str, os.PathLike)):
            self.port = os.fspath(port)
            self._ser = self._open(self.port)
        else:  # an open port: a serial.Serial, or anything with read/write/in_waiting/close
            self._ser = port
            self.port = str(getattr(port, "port", None) or type(port).__name__)
            if isinstance(port, serial.SerialBase) and (port.timeout is None or port.timeout > read_timeout):
                port.timeout = read_timeout
        # One delimiter so the device's receiver drops whatever partial frame it holds; then ask
        # for a HELLO, because opening a port discards what the device sent before (its
        # power-up HELLO included).
        self._write(b"\x00")
        if request_hello:
            self.send_control(Command.REQUEST_HELLO)

    def _open(self, port: str):
        serial = self._serial_mod
        try:
            if "://" in port:
                ser = serial.serial_for_url(port, baudrate=self.baud, timeout=self.read_timeout, write_timeout=2.0)
            else:
                ser = serial.Serial(port, baudrate=self.baud, timeout=self.read_timeout, write_timeout=2.0,
                                    exclusive=self.exclusive)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise BridgeError(f"cannot open serial port {port}: {exc}") from None
        return ser

    # -- statistics ----------------------------------------------------------------------
    @property
    def stats(self) -> BridgeStats:
        """A snapshot of all counters."""
        merged = BridgeStats(**self._counts.as_dict())
        for key, value in self._decoder.stats.as_dict().items():
            setattr(merged, key, value)
        for key, value in self._sequencer.stats.as_dict().items():
            setattr(merged, key, value)
        return merged

    # -- host -> device ------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        try:
            self._ser.write(data)
        except (self._serial_mod.SerialException, OSError) as exc:
            raise BridgeError(f"{getattr(self, 'port', '?')}: write failed: {exc}") from None

    def _send(self, msg: Message) -> int:
        if self._closed:
            raise BridgeError(f"{self.port}: source is closed")
        with self._write_lock:
            seq = self._seq
            self._seq = (self._seq + 1) & 0xFFFF
            timestamp = int((time.monotonic() - self._t0) * 1e6) & 0xFFFFFFFF
            self._write(encode_message(msg, seq, timestamp))
        return seq

    def send_result(self, label: int, confidence: float, window_time: float) -> int:
        """Send a RESULT frame: class ``label`` with ``confidence`` in [0, 1] for the window at
        ``window_time`` seconds of stream time. Returns the frame's sequence number.
        Raises ProtocolError (a BridgeError) for out-of-range values."""
        seq = self._send(Result.make(int(label), float(confidence), float(window_time)))
        self._counts.results_sent += 1
        return seq

    def send_control(self, command: Command | str, *, gain_db: float | None = None,
                     filter_mode: FilterMode | str | None = None, sample_rate: int = 0,
                     stream_format: AudioFormat | str | None = None, frame_samples: int = 0) -> int:
        """Send a CONTROL frame; returns its sequence number (the device ACKs it with that seq).

        ``command``: START (optionally with ``sample_rate``, ``stream_format``, ``frame_samples``),
        STOP, SET_GAIN (``gain_db``, -327.68..327.67 dB in 0.01 dB steps), SET_FILTER
        (``filter_mode``: bell, diaphragm, extended) or REQUEST_HELLO. Names are case-insensitive.
        """
        cmd = _enum(Command, command, "command")
        gain_cdb = 0
        mode = 0
        if cmd == Command.SET_GAIN:
            if gain_db is None:
                raise ProtocolError("SET_GAIN needs gain_db")
            gain_cdb = int(round(float(gain_db) * 100))
            if not -32768 <= gain_cdb <= 32767:
                raise ProtocolError(f"gain {gain_db} dB is outside -327.68..327.67 dB")
        if cmd == Command.SET_FILTER:
            if filter_mode is None:
                raise ProtocolError("SET_FILTER needs filter_mode")
            mode = int(_enum(FilterMode, filter_mode, "filter mode"))
        fmt = _parse_format(stream_format)
        msg = Control(cmd, mode, gain_cdb, int(sample_rate), int(fmt) if fmt else 0, int(frame_samples))
        msg.pack()  # range-check before taking a sequence number
        seq = self._send(msg)
        self._counts.controls_sent += 1
        return seq

    # -- device -> host ------------------------------------------------------------------
    def chunks(self) -> Iterator[AudioChunk]:
        """Yield 16 kHz chunks as frames arrive (contiguous frames of one read are merged)."""
        if self._closed:
            raise BridgeError(f"{self.port}: source is closed")
        if self.start and not self._started_stream:
            self.send_control(Command.START, sample_rate=self.device_rate, stream_format=self.stream_format,
                              frame_samples=self.frame_samples)
            self._started_stream = True
        last_frame_at = time.monotonic()
        while not self._closed:
            data = self._read()
            now = time.monotonic()
            pending: list[AudioChunk] = []
            end_of_stream = False
            if data:
                for frame in self._decoder.feed(data):
                    last_frame_at = now
                    self._sequencer.note_seq(frame.seq)
                    end_of_stream |= self._handle(frame.seq, frame.type, frame.payload, now, pending)
            if end_of_stream:
                pending.extend(self._sequencer.flush())
            for chunk in _merge(pending):
                yield chunk
            if end_of_stream and self.until_end:
                return
            if self.idle_timeout is not None and now - last_frame_at > self.idle_timeout:
                raise BridgeError(self._silence_message(now - last_frame_at))

    def _read(self) -> bytes:
        ser = self._ser
        try:
            waiting = ser.in_waiting
            # Blocks at most read_timeout for the first byte; then returns what has arrived.
            return ser.read(waiting if waiting > 0 else 1)
        except (self._serial_mod.SerialException, OSError, TypeError, AttributeError) as exc:
            if self._closed:
                return b""
            raise BridgeError(f"{self.port}: read failed: {exc}") from None

    def _silence_message(self, silent_s: float) -> str:
        d = self._decoder.stats
        if d.frames == 0 and d.bytes_in > 0:
            return (f"{self.port}: {d.bytes_in} bytes received but no valid frame in {silent_s:.1f} s "
                    f"(wrong baud rate, or not a stethoedge bridge device?)")
        if d.frames == 0:
            return f"{self.port}: nothing received for {silent_s:.1f} s (device off, not streaming, or wrong port?)"
        return f"{self.port}: no valid frame for {silent_s:.1f} s (device stopped or disconnected mid-stream)"

    def _handle(self, seq: int, msg_type: int, payload: bytes, now: float, out: list[AudioChunk]) -> bool:
        """Dispatch one frame; returns True if it ended the device's stream."""
        try:
            if msg_type == MsgType.AUDIO:
                msg = Audio.unpack(payload)
                if not MIN_RATE_HZ <= msg.sample_rate <= MAX_RATE_HZ:
                    raise ProtocolError(f"device sample rate {msg.sample_rate} Hz is outside "
                                        f"{MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
                out.extend(self._sequencer.push(seq, msg, now))
                if msg.last:
                    self.ended = True
                    return True
                return False
            if msg_type not in (MsgType.HELLO, MsgType.HEARTBEAT, MsgType.ERROR, MsgType.ACK):
                self._counts.unknown_messages += 1
                return False
            msg = decode_message(Frame(msg_type, seq, 0, payload))
        except ProtocolError as exc:
            self._counts.bad_messages += 1
            log.debug("dropping frame seq=%d type=0x%02x: %s", seq, msg_type, exc)
            return False
        if isinstance(msg, Hello):
            self._counts.hellos += 1
            if self.device is not None and msg.boot_id != self.device.boot_id:
                # The device rebooted: its sample counter and sequence numbers start over.
                out.extend(self._sequencer.flush())
                self._sequencer.restart()
            self.device = msg
            self.ended = False
            log.info("device %s firmware %s rates %s", msg.device_id, msg.firmware_version, msg.sample_rates)
            if self.ack_hello:
                self._send(Ack(seq, MsgType.HELLO, 0))
        elif isinstance(msg, Heartbeat):
            self._counts.heartbeats += 1
            self._counts.device_dropped_samples = msg.dropped_samples
            self.last_heartbeat = msg
        elif isinstance(msg, Error):
            self._counts.device_errors += 1
            self.last_device_error = msg
            log.warning("device error %d: %s", msg.code, msg.text)
        elif isinstance(msg, Ack):
            self._counts.acks += 1
            self.last_ack = msg
            if msg.status:
                log.warning("device rejected frame seq=%d (type 0x%02x): status %d", msg.acked_seq, msg.acked_type,
                            msg.status)
        return False

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Send STOP if this source started the stream, then close the port. Safe to call twice."""
        if self._closed:
            return
        if self._started_stream:
            try:
                self.send_control(Command.STOP)
            except BridgeError:
                pass
        self._closed = True
        try:
            self._ser.close()
        except (self._serial_mod.SerialException, OSError):
            pass

    def __enter__(self) -> BridgeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _enum(enum_cls, value, what: str):
    if isinstance(value, str):
        try:
            return enum_cls[value.upper()]
        except KeyError:
            names = ", ".join(m.name.lower() for m in enum_cls)
            raise ProtocolError(f"unknown {what} {value!r} (expected one of {names})") from None
    try:
        return enum_cls(value)
    except ValueError:
        raise ProtocolError(f"unknown {what} {value!r}") from None


def _parse_format(value) -> AudioFormat | None:
    if value is None or value == 0:
        return None
    if isinstance(value, str) and value.lower() in ("adpcm", "ima", "ima_adpcm"):
        return AudioFormat.IMA_ADPCM
    return _enum(AudioFormat, value, "audio format")


def _merge(chunks: list[AudioChunk]) -> list[AudioChunk]:
    """Join chunks that follow each other without a gap."""
    if len(chunks) < 2:
        return chunks
    out: list[AudioChunk] = []
    run: list[AudioChunk] = [chunks[0]]
    for chunk in chunks[1:]:
        prev = run[-1]
        if chunk.gap_before == 0 and chunk.start_sample == prev.start_sample + prev.samples.shape[0]:
            run.append(chunk)
        else:
            out.append(_join(run))
            run = [chunk]
    out.append(_join(run))
    return out


def _join(run: list[AudioChunk]) -> AudioChunk:
    if len(run) == 1:
        return run[0]
    return AudioChunk(np.concatenate([c.samples for c in run]), run[0].start_sample, run[0].gap_before)
