"""A Python stand-in for stethoscope firmware: streams a WAV over a serial link.

``DeviceEncoder`` holds the device's protocol state (sequence number, sample counter, ADPCM
state, heartbeat schedule) and builds its frames; ``device_stream`` uses it to produce exactly
the byte stream of the C reference ``c/example_firmware.c`` for the same WAV and options (the
tests compare them byte for byte). ``DeviceSimulator`` sends such a stream over a link, paced in
real time and/or at a UART's byte rate if asked, answers CONTROL frames (START/STOP/gain/filter)
with ACKs and records the RESULT frames the host sends back.

Used by ``stethoedge bridge simulate``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from stethoedge.firmware_bridge.adpcm import AdpcmState
from stethoedge.firmware_bridge.errors import BridgeError, ProtocolError
from stethoedge.firmware_bridge.framing import FrameDecoder
from stethoedge.firmware_bridge.links import Link
from stethoedge.firmware_bridge.messages import (
    Ack,
    Audio,
    Control,
    Heartbeat,
    Hello,
    Message,
    Result,
    decode_message,
    encode_message,
)
from stethoedge.firmware_bridge.protocol import (
    AudioFormat,
    Command,
    ErrorCode,
    HeartbeatState,
    MsgType,
)

log = logging.getLogger("stethoedge.bridge.device")

DEFAULT_DEVICE_ID = "stethoedge-example"
DEFAULT_FIRMWARE = "example-1.0.0"
DEVICE_RX_MAX_PAYLOAD = 64


class DeviceEncoder:
    """Frame builder with the state of the C example firmware."""

    def __init__(self, sample_rate: int, fmt: AudioFormat = AudioFormat.PCM16, frame_samples: int = 256,
                 heartbeat_ms: int = 1000, device_id: str = DEFAULT_DEVICE_ID,
                 firmware_version: str = DEFAULT_FIRMWARE, boot_id: int = 1) -> None:
        if not 1 <= frame_samples <= Audio.max_samples(AudioFormat.PCM16):
            raise BridgeError(f"frame size {frame_samples} samples is outside 1-{Audio.max_samples(AudioFormat.PCM16)}")
        self.sample_rate = sample_rate
        self.format = AudioFormat(fmt)
        self.frame_samples = frame_samples
        self.device_id = device_id
        self.firmware_version = firmware_version
        self.boot_id = boot_id
        self.seq = 0
        self.sent = 0  # samples sent so far (the device sample counter)
        self.adpcm = AdpcmState()
        self.heartbeat_every = sample_rate * heartbeat_ms // 1000
        self._next_heartbeat = self.heartbeat_every

    def clock_us(self) -> int:
        """Device clock derived from the sample clock (what the C example uses)."""
        return (self.sent * 1_000_000 // self.sample_rate) & 0xFFFFFFFF

    def _frame(self, msg: Message, timestamp: int) -> bytes:
        wire = encode_message(msg, self.seq, timestamp)
        self.seq = (self.seq + 1) & 0xFFFF
        return wire

    def hello(self) -> bytes:
        msg = Hello(self.device_id, self.firmware_version, (self.sample_rate,),
                    (AudioFormat.PCM16, AudioFormat.IMA_ADPCM), DEVICE_RX_MAX_PAYLOAD, self.boot_id)
        return self._frame(msg, self.clock_us())

    def audio(self, pcm: np.ndarray, last: bool = False) -> bytes:
        """One AUDIO frame of ``pcm`` (int16), in the current format; advances the counter."""
        end = self.sent + pcm.shape[0]
        timestamp = (end * 1_000_000 // self.sample_rate) & 0xFFFFFFFF
        if self.format == AudioFormat.IMA_ADPCM:
            msg, self.adpcm = Audio.from_adpcm(pcm, self.sent, self.sample_rate, self.adpcm, last)
        else:
            msg = Audio.from_pcm16(pcm, self.sent, self.sample_rate, last)
        wire = self._frame(msg, timestamp)
        self.sent = end
        return wire

    def heartbeat_due(self) -> bytes | None:
        """A HEARTBEAT if one is due after the audio sent so far (call after each AUDIO frame)."""
        if self.heartbeat_every <= 0 or self.sent < self._next_heartbeat:
            return None
        self._next_heartbeat += self.heartbeat_every
        msg = Heartbeat(self.sent * 1000 // self.sample_rate, self.sent, 0, HeartbeatState.STREAMING)
        return self._frame(msg, self.clock_us())

    def ack(self, acked_seq: int, acked_type: int, status: int) -> bytes:
        return self._frame(Ack(acked_seq, acked_type, status), self.clock_us())


def device_stream(pcm: np.ndarray, sample_rate: int, fmt: AudioFormat = AudioFormat.PCM16, frame_samples: int = 256,
                  heartbeat_ms: int = 1000, device_id: str = DEFAULT_DEVICE_ID,
                  firmware_version: str = DEFAULT_FIRMWARE, boot_id: int = 1) -> Iterator[tuple[bytes, int]]:
    """The example firmware's byte stream for ``pcm``: (bytes, samples captured when sent) pairs.

    A leading 0x00, HELLO, then AUDIO frames with HEARTBEATs between them; the last AUDIO frame
    is flagged LAST. Identical to ``example_firmware --wav ... --out FILE`` for the same options.
    """
    pcm = np.asarray(pcm, dtype=np.int16)
    enc = DeviceEncoder(sample_rate, fmt, frame_samples, heartbeat_ms, device_id, firmware_version, boot_id)
    yield b"\x00", 0
    yield enc.hello(), 0
    total = pcm.shape[0]
    while True:
        start = enc.sent
        n = min(frame_samples, total - start)
        last = start + n >= total
        wire = enc.audio(pcm[start : start + n], last)
        yield wire, start + n
        if last:
            return
        hb = enc.heartbeat_due()
        if hb is not None:
            yield hb, enc.sent


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] to int16 the way soundfile writes PCM_16 (round, clip)."""
    return np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def load_pcm16(path: str, sample_rate: int = 16000) -> np.ndarray:
    """A WAV (any format/rate, via the runtime's loader) as int16 mono at ``sample_rate``."""
    from stethoedge.runtime.audio_io import load_audio

    return to_int16(load_audio(path, sample_rate).samples)


@dataclass
class SimulatorReport:
    """What a simulator run did."""

    frames_sent: int = 0
    bytes_sent: int = 0
    samples_sent: int = 0
    started_at: float = 0.0
    host_messages: list[tuple[int, Message]] = field(default_factory=list)  # (seq, message)
    host_rx: dict[str, int] = field(default_factory=dict)
    stopped_by_host: bool = False


class DeviceSimulator:
    """Streams int16 audio over a Link like the C example firmware does."""

    def __init__(self, link: Link, pcm: np.ndarray, sample_rate: int = 16000, *,
                 fmt: AudioFormat = AudioFormat.PCM16, frame_samples: int = 256, heartbeat_ms: int = 1000,
                 realtime: bool = False, line_rate: float | None = None, wait_start: bool = False,
                 start_timeout: float = 10.0, linger: float = 0.0, loop: bool = False,
                 device_id: str = DEFAULT_DEVICE_ID, firmware_version: str = DEFAULT_FIRMWARE, boot_id: int = 1,
                 on_host_message: Callable[[int, Message], None] | None = None) -> None:
        self.link = link
        self.pcm = np.asarray(pcm, dtype=np.int16)
        self.sample_rate = sample_rate
        self.encoder = DeviceEncoder(sample_rate, fmt, frame_samples, heartbeat_ms, device_id, firmware_version,
                                     boot_id)
        self.realtime = realtime
        self.line_rate = line_rate  # bytes/s to emulate (a UART at B baud, 8N1: B / 10); None = as fast as the link
        self.wait_start = wait_start
        self.start_timeout = start_timeout
        self.linger = linger
        self.loop = loop
        self.on_host_message = on_host_message
        self.decoder = FrameDecoder()
        self.report = SimulatorReport()
        self.started = not wait_start
        self.stop_requested = False
        self.gain_cdb = 0
        self.filter_mode = 0
        self._line_t0: float | None = None
        self._line_bytes = 0

    # -- sending -------------------------------------------------------------------------
    def _send(self, wire: bytes) -> None:
        self.link.write(wire)
        self.report.bytes_sent += len(wire)
        if len(wire) > 1:
            self.report.frames_sent += 1
        if self.line_rate:
            now = time.monotonic()
            if self._line_t0 is None or now - (self._line_t0 + self._line_bytes / self.line_rate) > 0.05:
                self._line_t0, self._line_bytes = now, 0  # the line went idle: restart the budget
            self._line_bytes += len(wire)
            delay = self._line_t0 + self._line_bytes / self.line_rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    # -- receiving -----------------------------------------------------------------------
    def poll_host(self, timeout: float) -> None:
        """Handle host frames arriving within ``timeout`` seconds."""
        data = self.link.read(timeout)
        if not data:
            return
        for frame in self.decoder.feed(data):
            try:
                msg = decode_message(frame)
            except ProtocolError as exc:
                log.warning("host frame seq=%d: %s", frame.seq, exc)
                if frame.type == MsgType.CONTROL:
                    self._send(self.encoder.ack(frame.seq, frame.type, ErrorCode.BAD_COMMAND))
                continue
            self.report.host_messages.append((frame.seq, msg))
            if self.on_host_message is not None:
                self.on_host_message(frame.seq, msg)
            if isinstance(msg, Control):
                status = self._apply(msg)
                self._send(self.encoder.ack(frame.seq, MsgType.CONTROL, status))
            elif isinstance(msg, Result):
                log.info("host RESULT label=%d confidence=%.3f window=%.3f s", msg.label_index, msg.confidence,
                         msg.window_ms / 1000)

    def _apply(self, msg: Control) -> int:
        if msg.command == Command.START:
            if msg.sample_rate not in (0, self.sample_rate):
                return ErrorCode.UNSUPPORTED_RATE
            if msg.format not in (0, AudioFormat.PCM16, AudioFormat.IMA_ADPCM):
                return ErrorCode.UNSUPPORTED_FORMAT
            if msg.frame_samples > Audio.max_samples(AudioFormat.PCM16):
                return ErrorCode.BAD_COMMAND
            if msg.format:
                self.encoder.format = AudioFormat(msg.format)
            if msg.frame_samples:
                self.encoder.frame_samples = msg.frame_samples
            self.started = True
        elif msg.command == Command.STOP:
            self.stop_requested = True
            self.report.stopped_by_host = True
        elif msg.command == Command.SET_GAIN:
            self.gain_cdb = msg.gain_cdb
        elif msg.command == Command.SET_FILTER:
            self.filter_mode = msg.filter_mode
        elif msg.command == Command.REQUEST_HELLO:
            self._send(self.encoder.hello())
        return ErrorCode.OK

    def _listen_until(self, deadline: float) -> None:
        while not self.stop_requested:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.poll_host(min(left, 0.05))

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> SimulatorReport:
        """Stream the audio once (or forever with ``loop``); return what was done."""
        enc = self.encoder
        self._send(b"\x00")
        self._send(enc.hello())
        if not self.started:
            deadline = time.monotonic() + self.start_timeout
            while not self.started and not self.stop_requested and time.monotonic() < deadline:
                self.poll_host(0.05)
            if not self.started:
                raise BridgeError(f"no CONTROL START from the host within {self.start_timeout:g} s")
        total = self.pcm.shape[0]
        if total == 0 and self.loop:
            raise BridgeError("cannot loop over an empty recording")
        t0 = time.monotonic()
        self.report.started_at = t0
        pos = 0  # position in self.pcm
        while True:
            n = min(enc.frame_samples, total - pos)
            last = pos + n >= total and not self.loop
            if self.realtime:
                due = t0 + (enc.sent + n) / self.sample_rate
                while not self.stop_requested:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    self.poll_host(min(left, 0.05))
            else:
                self.poll_host(0.0)
            if self.stop_requested:
                last = True
            self._send(enc.audio(self.pcm[pos : pos + n], last))
            pos += n
            if self.loop and pos >= total:
                pos = 0
            if last:
                break
            hb = enc.heartbeat_due()
            if hb is not None:
                self._send(hb)
        self.report.samples_sent = enc.sent
        if self.linger > 0:
            self._listen_until(time.monotonic() + self.linger)
        self.report.host_rx = self.decoder.stats.as_dict()
        return self.report
