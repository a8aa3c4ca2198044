"""IMA ADPCM (4 bits per 16-bit sample), the codec of AUDIO frames for slow links.

The algorithm is the IMA/DVI reference (as in IMA ADPCM WAV files), with the bit-exact
integer arithmetic spelled out in PROTOCOL.md so that a firmware encoder and this decoder agree
to the last bit. Codes are packed two per byte, the earlier sample in the low nibble.

Each AUDIO frame carries the encoder state (predictor, step index) *before* its first sample,
so a frame decodes on its own and a lost frame costs only its own samples.

Speed: ``decode`` computes the step-index sequence with a C-level ``accumulate`` and the
predictor with a vectorised cumulative sum, falling back to a scalar loop only from the first
sample where the predictor would clip (rare for real audio). ``encode`` is a scalar loop (the
encoder's decisions depend on its reconstructed signal); it runs far faster than real time,
which is all the device simulator needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from stethoedge.firmware_bridge.errors import ProtocolError

STEP_TABLE = (
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45,
    50, 55, 60, 66, 73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307,
    337, 371, 408, 449, 494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066,
    2272, 2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358, 5894, 6484, 7132, 7845, 8630, 9493, 10442, 11487, 12635, 13899,
    15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767,
)  # fmt: skip
INDEX_TABLE = (-1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8)
MAX_STEP_INDEX = len(STEP_TABLE) - 1  # 88


@dataclass(frozen=True)
class AdpcmState:
    """Encoder/decoder state: the predicted sample and the step-table index."""

    predictor: int = 0
    step_index: int = 0

    def __post_init__(self) -> None:
        if not -32768 <= self.predictor <= 32767:
            raise ProtocolError(f"ADPCM predictor {self.predictor} outside int16")
        if not 0 <= self.step_index <= MAX_STEP_INDEX:
            raise ProtocolError(f"ADPCM step index {self.step_index} outside 0-{MAX_STEP_INDEX}")


def _vpdiff(step: int, code: int) -> int:
    """Signed predictor change for ``code`` at ``step``: the reference's shift-and-add form."""
    diff = step >> 3
    if code & 4:
        diff += step
    if code & 2:
        diff += step >> 1
    if code & 1:
        diff += step >> 2
    return -diff if code & 8 else diff


# Flat tables indexed by (step_index << 4) | code.
_DIFF = [_vpdiff(STEP_TABLE[i], c) for i in range(MAX_STEP_INDEX + 1) for c in range(16)]
_NEXT = [min(MAX_STEP_INDEX, max(0, i + INDEX_TABLE[c])) for i in range(MAX_STEP_INDEX + 1) for c in range(16)]
_DIFF_NP = np.asarray(_DIFF, dtype=np.int32)
# _NEXT_ROWS[code][index]: for ``accumulate``, which passes (index, code).
_NEXT_ROWS = tuple(tuple(_NEXT[(i << 4) | c] for c in range(16)) for i in range(MAX_STEP_INDEX + 1))


def _next_index(index: int, code: int) -> int:
    return _NEXT_ROWS[index][code]


def packed_size(n_samples: int) -> int:
    """Bytes that ``n_samples`` 4-bit codes occupy."""
    return (n_samples + 1) // 2


def encode(samples: np.ndarray, state: AdpcmState = AdpcmState()) -> tuple[bytes, AdpcmState]:
    """Encode int16 ``samples`` from ``state``; returns the packed codes and the state after them.

    An odd count leaves the high nibble of the last byte 0.
    """
    pcm = np.asarray(samples)
    if pcm.dtype != np.int16:
        raise TypeError(f"ADPCM encode wants int16 samples, got {pcm.dtype}")
    pred = state.predictor
    index = state.step_index
    out = bytearray(packed_size(pcm.shape[0]))
    step_table = STEP_TABLE
    next_flat = _NEXT
    for i, sample in enumerate(pcm.tolist()):
        step = step_table[index]
        diff = sample - pred
        if diff < 0:
            code = 8
            diff = -diff
        else:
            code = 0
        vpdiff = step >> 3
        if diff >= step:
            code |= 4
            diff -= step
            vpdiff += step
        step >>= 1
        if diff >= step:
            code |= 2
            diff -= step
            vpdiff += step
        step >>= 1
        if diff >= step:
            code |= 1
            vpdiff += step
        if code & 8:
            pred -= vpdiff
            if pred < -32768:
                pred = -32768
        else:
            pred += vpdiff
            if pred > 32767:
                pred = 32767
        index = next_flat[(index << 4) | code]
        if i & 1:
            out[i >> 1] |= code << 4
        else:
            out[i >> 1] = code
    return bytes(out), AdpcmState(pred, index)


def unpack_codes(data: bytes | bytearray | memoryview, n_samples: int) -> np.ndarray:
    """The ``n_samples`` 4-bit codes in ``data`` (low nibble first) as uint8."""
    if len(data) < packed_size(n_samples):
        raise ProtocolError(f"ADPCM: {len(data)} bytes hold fewer than {n_samples} codes")
    raw = np.frombuffer(data, dtype=np.uint8, count=packed_size(n_samples))
    codes = np.empty(raw.shape[0] * 2, dtype=np.uint8)
    codes[0::2] = raw & 0x0F
    codes[1::2] = raw >> 4
    return codes[:n_samples]


def decode(data: bytes | bytearray | memoryview, n_samples: int,
           state: AdpcmState = AdpcmState()) -> tuple[np.ndarray, AdpcmState]:
    """Decode ``n_samples`` codes from ``state``; returns int16 samples and the state after them."""
    if n_samples == 0:
        return np.zeros(0, dtype=np.int16), state
    codes = unpack_codes(data, n_samples)
    code_list = codes.tolist()
    # Step index before each sample: depends only on the codes, so a C-level accumulate does it.
    indices = list(accumulate(code_list, _next_index, initial=state.step_index))
    before = np.asarray(indices[:-1], dtype=np.int32)
    diffs = _DIFF_NP[(before << 4) | codes]
    pred = np.cumsum(diffs, dtype=np.int64) + state.predictor
    bad = (pred > 32767) | (pred < -32768)
    if bad.any():
        # The reference clamps the predictor after every step; from the first overflow on the
        # cumulative sum no longer equals the clamped recursion, so finish with a scalar loop.
        first = int(np.argmax(bad))
        p = int(pred[first - 1]) if first else state.predictor
        tail = pred[first:]
        flat = _DIFF
        for j, (idx, code) in enumerate(zip(indices[first:-1], code_list[first:])):
            p += flat[(idx << 4) | code]
            if p > 32767:
                p = 32767
            elif p < -32768:
                p = -32768
            tail[j] = p
    return pred.astype(np.int16), AdpcmState(int(pred[-1]), indices[-1])


def decode_reference(data: bytes, n_samples: int, state: AdpcmState = AdpcmState()) -> tuple[np.ndarray, AdpcmState]:
    """Textbook scalar decoder (slow): the definition ``decode`` is tested against."""
    codes = unpack_codes(data, n_samples).tolist()
    pred, index = state.predictor, state.step_index
    out = np.empty(n_samples, dtype=np.int16)
    for i, code in enumerate(codes):
        pred = max(-32768, min(32767, pred + _vpdiff(STEP_TABLE[index], code)))
        index = max(0, min(MAX_STEP_INDEX, index + INDEX_TABLE[code]))
        out[i] = pred
    return out, AdpcmState(pred, index)
