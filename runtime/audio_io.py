"""Reading the recordings users actually have, into 16 kHz mono float32.

Any format libsndfile decodes (``AUDIO_SUFFIXES``: WAV, FLAC, MP3, Ogg Vorbis/Opus, AIFF, ...),
any PCM (8/16/24/32-bit int) or float, mono or multi-channel, 4-192 kHz (resampled with soxr's
anti-aliasing resampler), from a file or from standard input (``-``). Anything unusable raises
``AudioError`` with one line that says what is wrong; clipping, DC offset, digital silence, a
truncated file and a repaired header only warn.

Multi-channel audio is averaged, except where averaging would lose the signal: channels more
than 20 dB weaker than the strongest are left out of the average, and when the average is still
more than 10 dB below the strongest channel (channels in anti-phase cancel) the strongest channel
is used alone; each case warns (``choose_downmix``).
"""
from __future__ import annotations

import contextlib
import errno
import io
import logging
import math
import os
import re
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable, Iterator

import numpy as np
import soundfile as sf
import soxr

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.outputs import output_path

log = logging.getLogger("stethoedge.audio")

MIN_RATE_HZ = 4000
MAX_RATE_HZ = 192000
CLIP_LEVEL = 0.999
CLIP_WARN_FRACTION = 0.001
DC_WARN_LEVEL = 0.05
#: A peak below -80 dBFS (3 LSB of 16-bit audio) is digital silence: nothing to classify.
SILENCE_PEAK = 1e-4
#: A channel more than 20 dB (power ratio 0.01) below the strongest is left out of the average.
WEAK_CHANNEL_POWER = 0.01
#: An average more than 10 dB below the strongest channel means the channels cancel: that channel alone.
CANCEL_POWER = 0.1
#: ``-`` names standard input (``classify -``), read whole into memory up to this many bytes.
STDIN = "-"
STDIN_MAX_BYTES = 256 * 1024 * 1024
#: Compressed formats only estimate their length (codec delay and padding, libsndfile's estimate for
#: MP3 without an exact header): a shortfall up to this many frames, or this fraction, is not truncation.
CODEC_SLACK_FRAMES = 4608
CODEC_SLACK_FRACTION = 0.005
_EXACT_LENGTH_SUBTYPES = ("PCM_", "FLOAT", "DOUBLE", "ULAW", "ALAW")

#: Suffixes of the formats libsndfile reads (the libsndfile name of each), where this libsndfile has them.
_SUFFIX_FORMATS = {
    ".wav": "WAV", ".wave": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG", ".oga": "OGG",
    ".opus": "OGG", ".aif": "AIFF", ".aiff": "AIFF", ".aifc": "AIFF", ".au": "AU", ".snd": "AU",
    ".caf": "CAF", ".w64": "W64", ".rf64": "RF64",
}
_AVAILABLE_FORMATS = set(sf.available_formats())
#: Audio file suffixes that ``classify`` decodes and ``classify-batch`` looks for (lower case).
AUDIO_SUFFIXES: tuple[str, ...] = tuple(s for s, fmt in _SUFFIX_FORMATS.items() if fmt in _AVAILABLE_FORMATS)


@dataclass
class LoadedAudio:
    """Decoded audio plus what was done to it."""

    samples: np.ndarray  # float32, mono, at ``sample_rate``
    sample_rate: int
    source_rate: int
    source_channels: int
    source_subtype: str
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Duration in seconds."""
        return self.samples.shape[0] / self.sample_rate


def _open_error(path: Path | str, exc: Exception) -> AudioError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    message = re.sub(r"^Error opening .*?: ", "", message)  # libsndfile repeats the name (or a BytesIO repr)
    return AudioError(f"{path}: not a readable audio file ({message})")


_KINDS = ((stat.S_ISFIFO, "named pipe (FIFO)"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
          (stat.S_ISSOCK, "socket"))


def check_path(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it names a readable, non-empty regular file, else raise AudioError.

    Only ``stat`` is used, never ``open``: a named pipe with no writer would block an open forever.
    """
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioError(f"{p}: symlink loop (too many levels of symbolic links)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if p.is_symlink():
                raise AudioError(f"{p}: no such file (broken symlink to {os.readlink(p)})") from None
            raise AudioError(f"{p}: no such file") from None
        if exc.errno == errno.EACCES:
            raise AudioError(f"{p}: permission denied") from None
        raise AudioError(f"{p}: cannot be accessed ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(f"{p}: is a directory, not an audio file")
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "special file")
        raise AudioError(f"{p}: is a {kind}, not a regular file; to classify a stream, pipe it to standard "
                         "input instead: ... | stethoedge classify -")
    if not os.access(p, os.R_OK):
        raise AudioError(f"{p}: permission denied")
    if st.st_size == 0:
        raise AudioError(f"{p}: empty file (0 bytes)")
    return p


def read_stdin(stream: BinaryIO | None = None, max_bytes: int = STDIN_MAX_BYTES) -> bytes:
    """All of standard input (or ``stream``), refusing a terminal, nothing, or more than ``max_bytes``."""
    if stream is None:
        if sys.stdin is None:
            raise AudioError("stdin: there is no standard input to read")
        stream = sys.stdin.buffer
    try:
        if stream.isatty():
            raise AudioError("stdin: is a terminal; pipe a recording into it, e.g. "
                             "`cat rec.wav | stethoedge classify -`")
    except (AttributeError, ValueError):
        pass
    parts: list[bytes] = []
    total = 0
    while True:
        try:
            block = stream.read(1 << 20)
        except OSError as exc:
            raise AudioError(f"stdin: read failed ({exc.strerror or exc})") from None
        if not block:
            break
        total += len(block)
        if total > max_bytes:
            limit = f"{max_bytes // 2**20} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
            raise AudioError(f"stdin: more than {limit} of audio (standard input is held in memory); save it "
                             "to a file and classify the file, which is streamed")
        parts.append(block)
    if not total:
        raise AudioError("stdin: empty (0 bytes)")
    return b"".join(parts)


def unfinalised_wav_patch(read_at: Callable[[int, int], bytes], size: int) -> tuple[dict[int, bytes], int] | None:
    """For a WAV whose ``data`` chunk says 0 bytes although audio follows (a recorder killed before it
    finalised the header): the header bytes to patch (offset -> bytes) and the data size, else None.

    ``read_at(offset, n)`` returns up to ``n`` bytes at ``offset``; ``size`` is the total size. The
    data chunk is taken to run to the end of the file (whole sample frames), as a finalised header
    would have said. (A size of 0xFFFFFFFF, the streaming convention, libsndfile reads as it is.)
    """
    head = read_at(0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, block_align = 12, 0
    for _ in range(256):  # a real WAV has a handful of chunks before its data
        hdr = read_at(pos, 8)
        if len(hdr) < 8:
            return None
        cid, csize = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        if cid == b"fmt ":
            fmt = read_at(pos + 8, 14)
            block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) == 14 else 0
        elif cid == b"data":
            if csize != 0 or not block_align:
                return None
            start = pos + 8
            data = size - start
            data -= data % block_align
            if data <= 0:
                return None
            data = min(data, 0xFFFFFFFF - start)
            return {4: struct.pack("<I", start + data - 8), pos + 4: struct.pack("<I", data)}, data
        pos += 8 + csize + (csize & 1)
    return None


class _PatchedFile(io.RawIOBase):
    """A read-only view of a file with a few header bytes replaced (for libsndfile's virtual I/O)."""

    def __init__(self, path: Path, patches: dict[int, bytes]) -> None:
        super().__init__()
        self._f = open(path, "rb")
        self._patches = patches
        self.name = str(path)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        pos = self._f.tell()
        n = self._f.readinto(buffer)
        if n:
            view = memoryview(buffer).cast("B")
            for offset, patch in self._patches.items():
                lo, hi = max(offset, pos), min(offset + len(patch), pos + n)
                if lo < hi:
                    view[lo - pos : hi - pos] = patch[lo - offset : hi - offset]
        return n or 0

    def close(self) -> None:
        self._f.close()
        super().close()


class AudioInput:
    """A recording opened for decoding: a file (header repaired in memory if need be) or stdin's bytes.

    ``name`` is what messages call it (the path, or ``stdin``); ``info`` is libsndfile's header view;
    ``warnings`` holds what opening found (a repaired header). ``open()`` gives a new SoundFile each time.
    """

    def __init__(self, source: str | os.PathLike, stdin: BinaryIO | None = None) -> None:
        self.warnings: list[str] = []
        self._data: bytes | None = None
        self._path: Path | None = None
        self._patches: dict[int, bytes] = {}
        if str(source) == STDIN:
            self.name = "stdin"
            data = bytearray(read_stdin(stdin))
            fix = unfinalised_wav_patch(lambda off, n: bytes(data[off : off + n]), len(data))
            if fix is not None:
                for offset, patch in fix[0].items():
                    data[offset : offset + len(patch)] = patch
                self._warn_repaired(fix[1])
            self._data = bytes(data)
        else:
            self._path = check_path(source)
            self.name = str(self._path)
            try:
                with open(self._path, "rb") as fh:
                    def read_at(offset: int, n: int) -> bytes:
                        fh.seek(offset)
                        return fh.read(n)

                    fix = unfinalised_wav_patch(read_at, os.fstat(fh.fileno()).st_size)
            except OSError as exc:
                raise AudioError(f"{self.name}: cannot be read ({exc.strerror or exc})") from None
            if fix is not None:
                self._patches = fix[0]
                self._warn_repaired(fix[1])
        try:
            with self.open() as f:
                self.info = _Info(f)
        except AudioError:
            raise
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            raise _open_error(self.name, exc) from None

    def _warn_repaired(self, data_bytes: int) -> None:
        self.warnings.append(f"{self.name}: unfinalised WAV (the recorder stopped before writing its header): the "
                             f"header says 0 bytes of audio although {data_bytes} bytes follow; reading them to the "
                             "end of the file")

    @contextlib.contextmanager
    def open(self) -> Iterator[sf.SoundFile]:
        """A fresh SoundFile positioned at the first frame; AudioError if libsndfile refuses it."""
        handle: IO[bytes] | None = None
        try:
            if self._data is not None:
                handle = io.BytesIO(self._data)
                f = sf.SoundFile(handle)
            elif self._patches:
                handle = _PatchedFile(self._path, self._patches)  # type: ignore[arg-type]
                f = sf.SoundFile(handle)
            else:
                f = sf.SoundFile(str(self._path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError) as exc:
            if handle is not None:
                handle.close()
            raise _open_error(self.name, exc) from None
        try:
            with f:
                yield f
        finally:
            if handle is not None:
                handle.close()


class _Info:
    """The header fields stethoedge uses (the shape of ``soundfile.info``'s result)."""

    def __init__(self, f: sf.SoundFile) -> None:
        self.name = f.name
        self.samplerate = f.samplerate
        self.channels = f.channels
        self.frames = f.frames
        self.duration = f.frames / f.samplerate if f.samplerate else 0.0
        self.format, self.subtype, self.endian = f.format, f.subtype, f.endian
        self.format_info, self.subtype_info = f.format_info, f.subtype_info
        self.sections = f.sections
        self.extra_info = f.extra_info


def open_input(source: str | os.PathLike, stdin: BinaryIO | None = None) -> AudioInput:
    """Open a recording (a path, or ``-`` for standard input) for decoding; AudioError if unusable."""
    return AudioInput(source, stdin=stdin)


def audio_info(path: str | os.PathLike) -> _Info:
    """Header information (rate, channels, frames, subtype) or AudioError."""
    return open_input(path).info


def read_block(f: sf.SoundFile, frames: int) -> tuple[np.ndarray, str | None]:
    """Up to ``frames`` frames from the current position as (n, channels) float32, and the decoder's
    error (None if it had none): a damaged or cut stream gives the frames decoded before it stopped.

    Calls libsndfile's ``sf_readf_float`` directly: ``SoundFile.read`` seeks to where it already is
    around every read, which resynchronises libsndfile's MP3 decoder and corrupts the first few
    thousand samples of every block after the first (libsndfile 1.2 with libmpg123).
    """
    try:
        ffi, lib, handle = sf._ffi, sf._snd, f._file
    except AttributeError:  # a soundfile without these internals: its own read
        try:
            return f.read(frames, dtype="float32", always_2d=True), None
        except (sf.LibsndfileError, RuntimeError) as exc:
            return np.zeros((0, f.channels), dtype=np.float32), str(exc)
    out = np.empty((frames, f.channels), dtype=np.float32)
    n = lib.sf_readf_float(handle, ffi.cast("float *", ffi.from_buffer(out)), frames)
    err = lib.sf_error(handle)
    message = ffi.string(lib.sf_error_number(err)).decode("utf-8", "replace") if err else None
    return out[:n], message


def decode_error_warning(where: str, frames_read: int, error: str) -> str:
    """The warning for a stream whose decoder gave up after ``frames_read`` frames (the rest is not classified)."""
    return (f"{where}: decoding stopped after {frames_read} frames ({error}): a damaged or truncated file; "
            "classifying what is there")


def truncation_warning(info: Any, where: str) -> str | None:
    """A warning when the header claims more audio data than the file holds (a copy cut short).

    libsndfile then sizes the data chunk from the file length (so ``info.frames`` looks fine) and
    only notes ``data : CLAIMED (should be ACTUAL)`` in its log; this reads that note (and, for Ogg,
    a last page without its end-of-stream mark).
    """
    extra = getattr(info, "extra_info", "") or ""
    if "Last page lacks an end-of-stream bit" in extra:
        return f"{where}: the Ogg stream stops without its end mark (truncated file); classifying what is there"
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra, re.M)
    if m is None or int(m.group(1)) <= int(m.group(2)):
        return None
    if int(m.group(1)) >= 0x7FFFFFFF:  # the "size unknown" convention of a streamed or unfinished WAV
        return (f"{where}: WAV header gives no audio size ({int(m.group(1)):#x}: a streamed or unfinalised "
                f"recording); reading the {int(m.group(2))} bytes to the end of the file")
    return (f"{where}: header claims {int(m.group(1))} bytes of audio but the file holds {int(m.group(2))} "
            "(truncated file); classifying what is there")


def short_read_warning(info: Any, frames_read: int, where: str) -> str | None:
    """A warning when fewer frames could be decoded than the header announced (a truncated file).

    A compressed format (MP3, Ogg) announces an estimate: codec delay and padding, or libsndfile's
    guess from the file size, make it differ by a few hundred frames on a valid file, so only a
    shortfall beyond ``CODEC_SLACK_FRAMES`` and ``CODEC_SLACK_FRACTION`` of the length counts there.
    """
    missing = info.frames - frames_read
    if missing <= 0:
        return None
    if not str(info.subtype).startswith(_EXACT_LENGTH_SUBTYPES):
        if missing <= max(CODEC_SLACK_FRAMES, CODEC_SLACK_FRACTION * info.frames):
            return None
    return f"{where}: header claims {info.frames} frames but only {frames_read} could be read (truncated file)"


def choose_downmix(gram: np.ndarray, where: str) -> tuple[np.ndarray | None, str | None]:
    """Channel weights for the mono mix (None: the plain average) and the warning saying why not the average.

    ``gram`` is the channels' Gram matrix (sum of x_i * x_j over the file), so the power of any mix
    is known without a second pass. Channels more than 20 dB below the strongest are left out (a
    disconnected or silent channel); if the average of the rest is still more than 10 dB below the
    strongest channel (anti-phase channels cancel, L = -R gives nothing), the strongest channel is
    used alone: either way no signal present in a channel is averaged away.
    """
    gram = np.asarray(gram, dtype=np.float64)
    power = np.diag(gram).copy()
    channels = power.size
    if channels < 2 or not power.max() > 0:
        return None, None
    top = float(power.max())
    # "The strongest" is the first channel within 1 dB of it: channel 1 of a balanced (e.g. anti-phase) pair.
    strongest = int(np.flatnonzero(power >= 10 ** -0.1 * top)[0])
    keep = power >= WEAK_CHANNEL_POWER * top
    weights = keep / keep.sum()
    mix = float(weights @ gram @ weights)
    if mix < CANCEL_POWER * top:
        loss = "-inf" if mix <= 0 else f"{10 * math.log10(mix / top):.0f}"
        weights = np.zeros(channels)
        weights[strongest] = 1.0
        return weights, (f"{where}: averaging the channels cancels the signal (anti-phase: the average is {loss} dB "
                         f"below channel {strongest + 1}); using channel {strongest + 1} alone")
    if keep.all():
        return None, None
    dropped = ", ".join(str(i + 1) for i in np.flatnonzero(~keep))
    used = ", ".join(str(i + 1) for i in np.flatnonzero(keep))
    return weights, (f"{where}: channel {dropped} is silent or more than 20 dB weaker than channel {strongest + 1}; "
                     f"using channel {used} instead of the average of all {channels}")


def gram_matrix(samples: np.ndarray) -> np.ndarray:
    """Sum over frames of x_i * x_j for a (frames, channels) block (float64), for ``choose_downmix``."""
    x = np.asarray(samples, dtype=np.float64)
    return x.T @ x


def to_mono(samples: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mix a (frames, channels) array to mono float32: the average, or ``weights`` from ``choose_downmix``."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    if weights is None:
        return samples.mean(axis=1, dtype=np.float64).astype(np.float32)
    return (samples.astype(np.float64, copy=False) @ np.asarray(weights, dtype=np.float64)).astype(np.float32)


def silence_warning(peak: float, where: str) -> str | None:
    """A warning when the whole recording is digital silence (peak below ``SILENCE_PEAK``)."""
    if peak >= SILENCE_PEAK:
        return None
    level = "-inf" if peak <= 0 else f"{20 * math.log10(peak):.0f}"
    return (f"{where}: digital silence (peak {level} dBFS): there is no sound to classify and the labels "
            "mean nothing; check the microphone, the cable or the export")


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling with soxr (HQ); identity when the rates match."""
    if source_rate == target_rate:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples.astype(np.float32, copy=False), source_rate, target_rate, quality="HQ")


def check_finite(samples: np.ndarray, where: str) -> None:
    """Raise AudioError if any sample is NaN or infinite."""
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1) if bad.ndim == 2 else bad))
        raise AudioError(f"{where}: {int(bad.sum())} samples are NaN or infinite (first at sample {first})")


def quality_warnings(samples: np.ndarray, where: str) -> list[str]:
    """Warnings for clipped, DC-offset or silent audio (the classifier still runs; the user should know)."""
    out = []
    if samples.size:
        clipped = float(np.mean(np.abs(samples) >= CLIP_LEVEL))
        if clipped > CLIP_WARN_FRACTION:
            out.append(f"{where}: {clipped:.1%} of samples are at full scale (clipped recording?)")
        dc = float(np.mean(samples))
        if abs(dc) > DC_WARN_LEVEL:
            out.append(f"{where}: DC offset of {dc:+.3f} full scale (removed per frame by the features)")
        silent = silence_warning(float(np.max(np.abs(samples))), where)
        if silent:
            out.append(silent)
    return out


def load_audio(path: str | os.PathLike, target_rate: int = 16000) -> LoadedAudio:
    """Decode a recording (any libsndfile format, or ``-`` for stdin) to mono float32 at ``target_rate``.

    Raises AudioError for a missing/empty/corrupt file, no samples, a rate outside 4-192 kHz, or
    NaN/inf samples. Clipping, DC offset, silence, truncation, a repaired header and a channel left
    out of the mix are reported in ``warnings``.
    """
    src = open_input(path)
    info, where = src.info, src.name
    if not (MIN_RATE_HZ <= info.samplerate <= MAX_RATE_HZ):
        raise AudioError(f"{where}: sample rate {info.samplerate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    error = None
    try:
        with src.open() as f:
            blocks = []
            while error is None:
                block, error = read_block(f, 1 << 16)
                blocks.append(block)
                if block.shape[0] < 1 << 16:
                    break
        data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, MemoryError) as exc:
        raise _open_error(where, exc) from None
    rate = info.samplerate
    if data.shape[0] == 0:
        if error:
            raise AudioError(f"{where}: not a readable audio file ({error})")
        raise AudioError(f"{where}: contains no audio samples")
    check_finite(data, where)
    warnings = list(src.warnings)
    if error:
        warnings.append(decode_error_warning(where, data.shape[0], error))
    weights, why = choose_downmix(gram_matrix(data), where) if data.shape[1] > 1 else (None, None)
    if why:
        warnings.append(why)
    warnings += quality_warnings(data, where)
    cut = truncation_warning(info, where) or (None if error else short_read_warning(info, data.shape[0], where))
    if cut:
        warnings.append(cut)
    mono = resample(to_mono(data, weights), rate, target_rate)
    for w in warnings:
        log.warning(w)
    return LoadedAudio(mono, target_rate, rate, info.channels, info.subtype, warnings)

def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    """Write mono audio atomically (runtime/outputs.py: temporary file, then rename), so no half-written WAV is left."""
    with output_path(path) as tmp:
        sf.write(str(tmp), np.asarray(samples, dtype=np.float32), sample_rate, subtype=subtype, format="WAV")
    return Path(path)
