"""Frames on a byte stream: header + payload + CRC-32, COBS-encoded, ended by 0x00.

``encode_frame`` builds one wire frame. ``FrameDecoder`` turns arbitrary received bytes back
into frames: it never raises on any byte content, keeps at most ``MAX_ENCODED_FRAME`` bytes of
an unfinished frame, counts everything it throws away, and resynchronises after garbage or a
lost delimiter by looking for a valid frame at the tail of a bad segment (every frame ends at
a delimiter, so an intact frame glued behind junk is a suffix of the segment).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from stethoedge.firmware_bridge import cobs
from stethoedge.firmware_bridge.crc import crc32
from stethoedge.firmware_bridge.errors import ProtocolError
from stethoedge.firmware_bridge.protocol import (
    CRC_SIZE,
    HEADER,
    HEADER_SIZE,
    MAX_ENCODED_FRAME,
    MAX_PAYLOAD,
    MIN_FRAME,
    PROTOCOL_VERSION,
    MsgType,
)

_KNOWN_TYPES = frozenset(int(t) for t in MsgType)
#: Upper bound on full decode attempts when scanning one bad segment for a frame at its tail.
MAX_SCAN_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class Frame:
    """One valid frame (CRC checked, length consistent, protocol version 1)."""

    type: int
    seq: int
    timestamp: int  # device (or host) clock in microseconds, modulo 2**32
    payload: bytes
    version: int = PROTOCOL_VERSION


def build_frame(msg_type: int, seq: int, timestamp: int, payload: bytes | bytearray | memoryview,
                version: int = PROTOCOL_VERSION) -> bytes:
    """The decoded frame (header + payload + CRC), before COBS. Raises ProtocolError if out of range."""
    payload = bytes(payload)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    if not 0 <= msg_type <= 0xFF or not 0 <= version <= 0xFF:
        raise ProtocolError(f"message type {msg_type} / version {version} do not fit a byte")
    raw = HEADER.pack(version, msg_type, seq & 0xFFFF, timestamp & 0xFFFFFFFF, len(payload)) + payload
    return raw + crc32(raw).to_bytes(CRC_SIZE, "little")


def encode_frame(msg_type: int, seq: int, timestamp: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One frame as it goes on the wire: COBS(header + payload + CRC) followed by 0x00.

    ``seq`` and ``timestamp`` are taken modulo 2**16 and 2**32.
    """
    return cobs.encode(build_frame(msg_type, seq, timestamp, payload)) + b"\x00"


@dataclass
class DecoderStats:
    """What a FrameDecoder has seen. Every received byte is a delimiter, part of a delivered
    frame, or counted in ``garbage_bytes``."""

    bytes_in: int = 0
    frames: int = 0  # valid frames delivered
    crc_errors: int = 0  # segments of plausible shape whose CRC did not match
    malformed: int = 0  # invalid COBS, too short, or length field disagreeing with the size
    oversize: int = 0  # length field above MAX_PAYLOAD, or a segment longer than the largest frame
    bad_version: int = 0  # valid CRC but a protocol version other than 1
    garbage_bytes: int = 0  # bytes discarded (bad segments, junk before a recovered frame)
    resyncs: int = 0  # frames recovered from behind junk in the same segment

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Reject(Exception):
    """Internal: why a segment is not a frame (the name of the DecoderStats counter)."""

    def __init__(self, counter: str) -> None:
        super().__init__(counter)
        self.counter = counter


def parse_frame(decoded: bytes) -> Frame:
    """Validate a COBS-decoded frame. Raises ProtocolError naming the reason."""
    try:
        return _parse(decoded)
    except _Reject as exc:
        raise ProtocolError(f"invalid frame ({exc.counter})") from None


def _parse(decoded: bytes) -> Frame:
    n = len(decoded)
    if n < MIN_FRAME:
        raise _Reject("malformed")
    if crc32(memoryview(decoded)[:-CRC_SIZE]) != int.from_bytes(decoded[-CRC_SIZE:], "little"):
        raise _Reject("crc_errors")
    version, msg_type, seq, timestamp, length = HEADER.unpack_from(decoded)
    if version != PROTOCOL_VERSION:
        raise _Reject("bad_version")
    if length > MAX_PAYLOAD:
        raise _Reject("oversize")
    if HEADER_SIZE + length + CRC_SIZE != n:
        raise _Reject("malformed")
    return Frame(msg_type, seq, timestamp, decoded[HEADER_SIZE:-CRC_SIZE], version)


class FrameDecoder:
    """Incremental frame decoder: ``feed(bytes) -> list[Frame]``.

    Never raises for any byte content; memory stays bounded by ``MAX_ENCODED_FRAME`` bytes of
    pending input however long a delimiter is missing.
    """

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._overflowed = False  # the pending segment lost its head to the size bound

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held (at most MAX_ENCODED_FRAME)."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any unfinished frame (counted as garbage), e.g. after reopening a port."""
        self.stats.garbage_bytes += len(self._buf)
        self._buf.clear()
        self._overflowed = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Consume received bytes; return the frames they completed, in order."""
        if not data:
            return []
        self.stats.bytes_in += len(data)
        parts = bytes(data).split(b"\x00")
        if len(parts) == 1:
            self._append(parts[0])
            return []
        frames: list[Frame] = []
        head = parts[0]
        if self._buf:
            self._append(head)
            head = bytes(self._buf)
            self._buf.clear()
        elif len(head) > MAX_ENCODED_FRAME:
            self._trim_count(len(head) - MAX_ENCODED_FRAME)
            head = head[-MAX_ENCODED_FRAME:]
        overflowed, self._overflowed = self._overflowed, False
        self._segment(head, overflowed, frames)
        for part in parts[1:-1]:
            if len(part) > MAX_ENCODED_FRAME:
                self._trim_count(len(part) - MAX_ENCODED_FRAME)
                self._segment(part[-MAX_ENCODED_FRAME:], True, frames)
                self._overflowed = False
            else:
                self._segment(part, False, frames)
        self._append(parts[-1])
        return frames

    def _trim_count(self, excess: int) -> None:
        self.stats.garbage_bytes += excess
        if not self._overflowed:
            self._overflowed = True
            self.stats.oversize += 1

    def _append(self, part: bytes) -> None:
        if not part:
            return
        self._buf += part
        excess = len(self._buf) - MAX_ENCODED_FRAME
        if excess > 0:
            del self._buf[:excess]
            self._trim_count(excess)

    def _segment(self, seg: bytes, overflowed: bool, out: list[Frame]) -> None:
        """Handle the bytes between two delimiters."""
        if not seg:
            return  # idle delimiter / empty frame
        if not overflowed:
            try:
                out.append(_parse(cobs.decode(seg)))
                self.stats.frames += 1
                return
            except cobs.CobsError:
                self.stats.malformed += 1
            except _Reject as exc:
                setattr(self.stats, exc.counter, getattr(self.stats, exc.counter) + 1)
        frame, skipped = self._scan(seg, 1 if not overflowed else 0)
        if frame is None:
            self.stats.garbage_bytes += len(seg)
            return
        self.stats.garbage_bytes += skipped
        self.stats.resyncs += 1
        self.stats.frames += 1
        out.append(frame)

    @staticmethod
    def _scan(seg: bytes, first: int) -> tuple[Frame | None, int]:
        """Find the longest valid frame that is a suffix of ``seg``; return it and its offset."""
        n = len(seg)
        attempts = 0
        k = seg.find(b"\x01", first + 1) - 1  # a frame opens with a code >= 2 then version 0x01
        while 0 <= k < n - MIN_FRAME:
            code = seg[k]
            # code 2 would make the type byte an implied 0x00, which no message type is.
            if code >= 3 and k + code <= n and seg[k + 2] in _KNOWN_TYPES:
                header = cobs.decode_prefix(seg, k, HEADER_SIZE)
                if header is not None:
                    length = int.from_bytes(header[8:10], "little")
                    frame_len = HEADER_SIZE + length + CRC_SIZE
                    remaining = n - k
                    if length <= MAX_PAYLOAD and frame_len < remaining <= cobs.max_encoded_len(frame_len):
                        attempts += 1
                        try:
                            return _parse(cobs.decode(seg[k:])), k
                        except (cobs.CobsError, _Reject):
                            if attempts >= MAX_SCAN_ATTEMPTS:
                                return None, 0
            k = seg.find(b"\x01", k + 2) - 1
        return None, 0
