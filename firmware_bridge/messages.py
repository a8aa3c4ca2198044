"""Message payloads of protocol version 1: dataclasses with ``pack()`` / ``unpack()``.

All integers are little-endian; layouts are documented field by field in PROTOCOL.md. As the
protocol's versioning rules require, bytes after the known fields of HELLO, HEARTBEAT, ACK,
CONTROL and RESULT are ignored (room for backward-compatible extensions).
``unpack`` validates every length and range and raises ``ProtocolError`` (never struct.error or
IndexError) on anything malformed, so a receiver can count and drop a bad message.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Union

import numpy as np

from stethoedge.firmware_bridge import adpcm
from stethoedge.firmware_bridge.errors import ProtocolError
from stethoedge.firmware_bridge.framing import Frame, encode_frame
from stethoedge.firmware_bridge.protocol import (
    AUDIO_FLAG_LAST,
    FORMAT_BITS,
    MAX_ERROR_TEXT,
    MAX_HELLO_RATES,
    MAX_PAYLOAD,
    MAX_STRING,
    AudioFormat,
    Command,
    FilterMode,
    MsgType,
)

_U32 = 0xFFFFFFFF


def _string(value: str, what: str, limit: int) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise ProtocolError(f"{what} is {len(raw)} bytes of UTF-8; at most {limit} allowed")
    return raw


@dataclass(frozen=True)
class Hello:
    """Device -> host, after power-up/reset and on REQUEST_HELLO: who the device is, what it can
    send, and which boot of it this is."""

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    # formats u8 (bitmask), n_rates u8, max_rx_payload u16, boot_id u32, then rates u32 x n_rates,
    # then id_len u8 + id bytes, fw_len u8 + fw bytes.
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<BBHI")

    device_id: str
    firmware_version: str
    sample_rates: tuple[int, ...] = (16000,)
    formats: tuple[AudioFormat, ...] = (AudioFormat.PCM16, AudioFormat.IMA_ADPCM)
    max_rx_payload: int = 64  # largest host->device payload the device accepts
    boot_id: int = 0  # changes at every boot of the device (random or a boot counter)

    def pack(self) -> bytes:
        if not 1 <= len(self.sample_rates) <= MAX_HELLO_RATES:
            raise ProtocolError(f"HELLO lists {len(self.sample_rates)} sample rates; 1-{MAX_HELLO_RATES} allowed")
        mask = 0
        for fmt in self.formats:
            mask |= FORMAT_BITS[AudioFormat(fmt)]
        try:
            out = bytearray(self._FIXED.pack(mask, len(self.sample_rates), self.max_rx_payload, self.boot_id))
        except struct.error as exc:
            raise ProtocolError(f"HELLO field out of range ({exc})") from None
        for rate in self.sample_rates:
            if not 0 < rate <= _U32:
                raise ProtocolError(f"sample rate {rate} does not fit u32")
            out += rate.to_bytes(4, "little")
        for value, what in ((self.device_id, "device id"), (self.firmware_version, "firmware version")):
            raw = _string(value, what, MAX_STRING)
            out.append(len(raw))
            out += raw
        return bytes(out)

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        if len(payload) < cls._FIXED.size:
            raise ProtocolError("HELLO payload too short")
        mask, n_rates, max_rx, boot_id = cls._FIXED.unpack_from(payload)
        if not 1 <= n_rates <= MAX_HELLO_RATES:
            raise ProtocolError(f"HELLO lists {n_rates} sample rates; 1-{MAX_HELLO_RATES} allowed")
        pos = cls._FIXED.size
        end = pos + 4 * n_rates
        if len(payload) < end:
            raise ProtocolError("HELLO payload too short for its rates")
        rates = tuple(struct.unpack_from(f"<{n_rates}I", payload, pos))
        pos = end
        strings = []
        for what in ("device id", "firmware version"):
            if pos >= len(payload):
                raise ProtocolError(f"HELLO payload ends before the {what}")
            size = payload[pos]
            pos += 1
            if size > MAX_STRING or pos + size > len(payload):
                raise ProtocolError(f"HELLO {what} length {size} is invalid")
            strings.append(payload[pos : pos + size].decode("utf-8", errors="replace"))
            pos += size
        formats = tuple(fmt for fmt, bit in FORMAT_BITS.items() if mask & bit)
        return cls(strings[0], strings[1], rates, formats, max_rx, boot_id)


@dataclass(frozen=True)
class Audio:
    """Device -> host: ``n_samples`` consecutive mono samples starting at ``sample_index``."""

    TYPE: ClassVar[MsgType] = MsgType.AUDIO
    # sample_index u32, sample_rate u32, format u8, flags u8, n_samples u16
    _FIXED: ClassVar[struct.Struct] = struct.Struct("<IIBBH")
    # ADPCM state before the first sample: predictor i16, step_index u8, reserved u8
    _ADPCM: ClassVar[struct.Struct] = struct.Struct("<hBB")

    sample_index: int  # device sample counter of the first sample, modulo 2**32
    sample_rate: int
    format: AudioFormat
    n_samples: int
    data: bytes  # PCM16 samples, or packed ADPCM codes
    flags: int = 0
    adpcm_state: adpcm.AdpcmState = field(default_factory=adpcm.AdpcmState)

    @property
    def last(self) -> bool:
        """The device ends the stream after this frame."""
        return bool(self.flags & AUDIO_FLAG_LAST)

    @classmethod
    def max_samples(cls, fmt: AudioFormat) -> int:
        """Most samples one frame of ``fmt`` can carry within MAX_PAYLOAD."""
        room = MAX_PAYLOAD - cls._FIXED.size
        if fmt == AudioFormat.PCM16:
            return room // 2
        return (room - cls._ADPCM.size) * 2

    @classmethod
    def from_pcm16(cls, samples: np.ndarray, sample_index: int, sample_rate: int, last: bool = False) -> Audio:
        pcm = np.asarray(samples)
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM16 frames want int16 samples, got {pcm.dtype}")
        return cls(sample_index & _U32, sample_rate, AudioFormat.PCM16, int(pcm.shape[0]),
                   pcm.astype("<i2", copy=False).tobytes(), AUDIO_FLAG_LAST if last else 0)

    @classmethod
    def from_adpcm(cls, samples: np.ndarray, sample_index: int, sample_rate: int, state: adpcm.AdpcmState,
                   last: bool = False) -> tuple[Audio, adpcm.AdpcmState]:
        """Encode ``samples`` from ``state``; returns the frame and the encoder state after it."""
        codes, after = adpcm.encode(samples, state)
        msg = cls(sample_index & _U32, sample_rate, AudioFormat.IMA_ADPCM, int(np.asarray(samples).shape[0]),
                  codes, AUDIO_FLAG_LAST if last else 0, state)
        return msg, after

    def pcm16(self) -> np.ndarray:
        """The samples as int16 (decoding ADPCM if need be)."""
        if self.format == AudioFormat.PCM16:
            return np.frombuffer(self.data, dtype="<i2").astype(np.int16, copy=False)
        return adpcm.decode(self.data, self.n_samples, self.adpcm_state)[0]

    def float32(self) -> np.ndarray:
        """The samples as float32 in [-1, 1): int16 / 32768, as soundfile reads PCM_16."""
        return self.pcm16().astype(np.float32) * np.float32(1.0 / 32768.0)

    def pack(self) -> bytes:
        head = self._FIXED.pack(self.sample_index & _U32, self.sample_rate, int(self.format), self.flags,
                                self.n_samples)
        if self.format == AudioFormat.PCM16:
            if len(self.data) != 2 * self.n_samples:
                raise ProtocolError(f"PCM16 data is {len(self.data)} bytes for {self.n_samples} samples")
            body = self.data
        elif self.format == AudioFormat.IMA_ADPCM:
            if len(self.data) != adpcm.packed_size(self.n_samples):
                raise ProtocolError(f"ADPCM data is {len(self.data)} bytes for {self.n_samples} samples")
            body = self._ADPCM.pack(self.adpcm_state.predictor, self.adpcm_state.step_index, 0) + self.data
        else:
            raise ProtocolError(f"unknown audio format {self.format}")
        return head + body

    @classmethod
    def unpack(cls, payload: bytes) -> Audio:
        if len(payload) < cls._FIXED.size:
            raise ProtocolError("AUDIO payload too short")
        index, rate, fmt, flags, n = cls._FIXED.unpack_from(payload)
        if rate == 0:
            raise ProtocolError("AUDIO sample rate is 0")
        body = payload[cls._FIXED.size :]
        if fmt == AudioFormat.PCM16:
            if len(body) != 2 * n:
                raise ProtocolError(f"AUDIO PCM16 body is {len(body)} bytes for {n} samples")
            return cls(index, rate, AudioFormat.PCM16, n, body, flags)
        if fmt == AudioFormat.IMA_ADPCM:
            if len(body) != cls._ADPCM.size + adpcm.packed_size(n):
                raise ProtocolError(f"AUDIO ADPCM body is {len(body)} bytes for {n} samples")
            predictor, step_index, _reserved = cls._ADPCM.unpack_from(body)
            if step_index > adpcm.MAX_STEP_INDEX:
                raise ProtocolError(f"AUDIO ADPCM step index {step_index} > {adpcm.MAX_STEP_INDEX}")
            return cls(index, rate, AudioFormat.IMA_ADPCM, n, body[cls._ADPCM.size :], flags,
                       adpcm.AdpcmState(predictor, step_index))
        raise ProtocolError(f"AUDIO format {fmt} is unknown")


@dataclass(frozen=True)
class Heartbeat:
    """Device -> host, about once a second: the device is alive (streaming or not)."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    _S: ClassVar[struct.Struct] = struct.Struct("<IIIBB")

    uptime_ms: int
    next_sample_index: int  # sample_index the next AUDIO frame will carry
    dropped_samples: int  # samples the device itself discarded (e.g. TX buffer full), total
    state: int  # HeartbeatState

    def pack(self) -> bytes:
        return self._S.pack(self.uptime_ms & _U32, self.next_sample_index & _U32, self.dropped_samples & _U32,
                            self.state, 0)

    @classmethod
    def unpack(cls, payload: bytes) -> Heartbeat:
        if len(payload) < cls._S.size:
            raise ProtocolError(f"HEARTBEAT payload is {len(payload)} bytes, expected {cls._S.size}")
        uptime, nxt, dropped, state, _reserved = cls._S.unpack_from(payload)
        return cls(uptime, nxt, dropped, state)


@dataclass(frozen=True)
class Error:
    """Device -> host: something went wrong on the device (code + human-readable text)."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR

    code: int  # ErrorCode, or 0x8000-0xFFFF vendor-specific
    text: str = ""

    def pack(self) -> bytes:
        if not 0 <= self.code <= 0xFFFF:
            raise ProtocolError(f"error code {self.code} does not fit u16")
        return self.code.to_bytes(2, "little") + _string(self.text, "error text", MAX_ERROR_TEXT)

    @classmethod
    def unpack(cls, payload: bytes) -> Error:
        if len(payload) < 2 or len(payload) > 2 + MAX_ERROR_TEXT:
            raise ProtocolError(f"ERROR payload is {len(payload)} bytes; 2-{2 + MAX_ERROR_TEXT} allowed")
        return cls(int.from_bytes(payload[:2], "little"), payload[2:].decode("utf-8", errors="replace"))


@dataclass(frozen=True)
class Control:
    """Host -> device: start/stop streaming, set gain or filter mode, ask for a HELLO."""

    TYPE: ClassVar[MsgType] = MsgType.CONTROL
    # command u8, filter_mode u8, gain_cdb i16, sample_rate u32, format u8, reserved u8, frame_samples u16
    _S: ClassVar[struct.Struct] = struct.Struct("<BBhIBBH")

    command: Command
    filter_mode: int = 0  # SET_FILTER: FilterMode
    gain_cdb: int = 0  # SET_GAIN: gain in hundredths of a dB (-327.68 .. +327.67 dB)
    sample_rate: int = 0  # START: requested rate, 0 = device default
    format: int = 0  # START: requested AudioFormat, 0 = device default
    frame_samples: int = 0  # START: samples per AUDIO frame, 0 = device default

    def pack(self) -> bytes:
        try:
            return self._S.pack(int(self.command), int(self.filter_mode), self.gain_cdb, self.sample_rate,
                                int(self.format), 0, self.frame_samples)
        except struct.error as exc:
            raise ProtocolError(f"CONTROL field out of range ({exc})") from None

    @classmethod
    def unpack(cls, payload: bytes) -> Control:
        if len(payload) < cls._S.size:
            raise ProtocolError(f"CONTROL payload is {len(payload)} bytes, expected {cls._S.size}")
        command, filter_mode, gain, rate, fmt, _reserved, frame_samples = cls._S.unpack_from(payload)
        try:
            command = Command(command)
        except ValueError:
            raise ProtocolError(f"CONTROL command {command} is unknown") from None
        if command == Command.SET_FILTER and filter_mode not in FilterMode._value2member_map_:
            raise ProtocolError(f"CONTROL filter mode {filter_mode} is unknown")
        return cls(command, filter_mode, gain, rate, fmt, frame_samples)


@dataclass(frozen=True)
class Result:
    """Host -> device: the classifier's decision for one window, for the device to display."""

    TYPE: ClassVar[MsgType] = MsgType.RESULT
    # label_index u16, confidence_q16 u16 (confidence * 65535, rounded), window_ms u32
    _S: ClassVar[struct.Struct] = struct.Struct("<HHI")

    label_index: int
    confidence_q16: int
    window_ms: int  # stream time of the classified window (its start), milliseconds, modulo 2**32

    @classmethod
    def make(cls, label_index: int, confidence: float, window_time: float) -> Result:
        """From a confidence in [0, 1] and a window time in seconds (>= 0; wraps after 49.7 days)."""
        if not 0 <= label_index <= 0xFFFF:
            raise ProtocolError(f"label index {label_index} does not fit u16")
        if not 0.0 <= confidence <= 1.0:  # also rejects NaN
            raise ProtocolError(f"confidence {confidence} is outside [0, 1]")
        if not 0.0 <= window_time < float("inf"):  # also rejects NaN
            raise ProtocolError(f"window time {window_time} s is not a time >= 0")
        return cls(label_index, int(round(confidence * 0xFFFF)), int(round(window_time * 1000.0)) & _U32)

    @property
    def confidence(self) -> float:
        return self.confidence_q16 / 0xFFFF

    def pack(self) -> bytes:
        return self._S.pack(self.label_index, self.confidence_q16, self.window_ms)

    @classmethod
    def unpack(cls, payload: bytes) -> Result:
        if len(payload) < cls._S.size:
            raise ProtocolError(f"RESULT payload is {len(payload)} bytes, expected {cls._S.size}")
        return cls(*cls._S.unpack_from(payload))


@dataclass(frozen=True)
class Ack:
    """Either direction: frame ``acked_seq`` of type ``acked_type`` was received and handled."""

    TYPE: ClassVar[MsgType] = MsgType.ACK
    _S: ClassVar[struct.Struct] = struct.Struct("<HBB")

    acked_seq: int
    acked_type: int
    status: int = 0  # 0 = OK, else an ErrorCode

    def pack(self) -> bytes:
        return self._S.pack(self.acked_seq & 0xFFFF, self.acked_type, self.status)

    @classmethod
    def unpack(cls, payload: bytes) -> Ack:
        if len(payload) < cls._S.size:
            raise ProtocolError(f"ACK payload is {len(payload)} bytes, expected {cls._S.size}")
        return cls(*cls._S.unpack_from(payload))


Message = Union[Hello, Audio, Heartbeat, Error, Control, Result, Ack]
MESSAGE_CLASSES: dict[int, type] = {cls.TYPE: cls for cls in (Hello, Audio, Heartbeat, Error, Control, Result, Ack)}


def encode_message(msg: Message, seq: int, timestamp: int = 0) -> bytes:
    """``msg`` as one wire frame (COBS + delimiter)."""
    return encode_frame(msg.TYPE, seq, timestamp, msg.pack())


def decode_message(frame: Frame) -> Message:
    """The message a frame carries. Raises ProtocolError for an unknown type or bad payload."""
    cls = MESSAGE_CLASSES.get(frame.type)
    if cls is None:
        raise ProtocolError(f"message type 0x{frame.type:02x} is unknown")
    return cls.unpack(frame.payload)
