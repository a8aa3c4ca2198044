"""Live capture from a sound card with sounddevice (PortAudio), as an AudioSource.

The device is opened at 16 kHz when it accepts it, else at its native rate (PortAudio's -9997
"invalid sample rate" is the common failure: many USB and HDMI inputs only do 44.1/48 kHz), and
resampled to 16 kHz mono in the stream with a soxr ``ResampleStream``. The PortAudio callback
only averages the block to mono and copies it into a bounded ``SampleRing``; it never waits.
If the device or the audio server goes away (the stream stops, or no block arrives for
``stall_timeout_s``), the loss is logged and counted, PortAudio is re-initialised and the
device reopened every ``retry_s`` seconds; the first chunk after it comes back carries the
missed time as ``gap_before``, so the windower restarts instead of splicing.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import soxr

from stethoedge.runtime.errors import AudioError
from stethoedge.runtime.ring_buffer import SampleRing
from stethoedge.runtime.sources import AudioChunk

log = logging.getLogger("stethoedge.capture")

#: Rates tried in order after 16 kHz and the device's own default.
FALLBACK_RATES = (48000, 44100, 32000, 22050, 96000)
#: Seconds to wait for the first block of a freshly opened stream before calling it lost.
STARTUP_GRACE_S = 5.0
#: Rates reported by ``stethoedge devices``.
PROBE_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 96000)


def import_sounddevice() -> Any:
    """Import sounddevice, or AudioError saying how to get PortAudio."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError("PortAudio library not found") when libportaudio is missing
        detail = str(exc).strip()
        what = ("PortAudio library not found" if not detail or "portaudio library not found" in detail.lower()
                else f"PortAudio library could not be loaded ({detail})")
        raise AudioError(f"{what}; install it: sudo apt install libportaudio2") from None
    except ImportError:
        raise AudioError("sounddevice is not installed: pip install sounddevice (and apt install libportaudio2)") from None
    return sounddevice


def _resolve(sd: Any, device: int | str | None) -> int:
    """Device index for ``device`` (index, name substring or None for the default input)."""
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise AudioError(f"no input device {device!r}: {exc} (see `stethoedge devices`)") from None
    return int(info["index"])


def input_devices() -> list[dict[str, Any]]:
    """Every input device: index, name, host API, channels, default rate and the probed rates it accepts."""
    sd = import_sounddevice()
    try:
        default_in = sd.default.device[0] if sd.default.device else -1
        listed = sd.query_devices()
    except (sd.PortAudioError, ValueError, OSError) as exc:
        raise AudioError(f"PortAudio cannot list the audio devices ({exc})") from None
    out = []
    for dev in listed:
        if dev["max_input_channels"] <= 0:
            continue
        rates = []
        for rate in PROBE_RATES:
            try:
                sd.check_input_settings(dev["index"], samplerate=rate, channels=1, dtype="float32")
                rates.append(rate)
            except Exception:  # PortAudioError / ValueError: this rate is refused
                pass
        out.append({
            "index": dev["index"], "name": dev["name"], "hostapi": sd.query_hostapis(dev["hostapi"])["name"],
            "channels": dev["max_input_channels"], "default_rate": int(dev["default_samplerate"]),
            "rates": rates, "default": dev["index"] == default_in,
        })
    return out


def choose_rate(sd: Any, device: int, wanted: int, channels: int) -> int:
    """The first rate the device accepts: ``wanted``, its default, then FALLBACK_RATES."""
    default = int(sd.query_devices(device)["default_samplerate"])
    tried = []
    for rate in dict.fromkeys((wanted, default, *FALLBACK_RATES)):
        try:
            sd.check_input_settings(device, samplerate=rate, channels=channels, dtype="float32")
            return rate
        except Exception as exc:  # PortAudioError -9997 "Invalid sample rate", ValueError
            tried.append(f"{rate} ({exc})")
    raise AudioError(f"input device {device} accepts none of the rates tried: {'; '.join(tried)}")


@dataclass
class CaptureStats:
    """Counters of a capture session."""

    device_rate: int = 0
    blocks: int = 0
    input_overflows: int = 0  # PortAudio reported the hardware buffer overran
    losses: int = 0  # the device/server went away
    reconnects: int = 0
    samples_missed: int = 0  # 16 kHz samples of wall-clock time with no capture (never filled)

    def as_dict(self) -> dict[str, int]:
        """Plain dict."""
        return asdict(self)


class SoundDeviceSource:
    """16 kHz mono chunks from a PortAudio input device."""

    live = True

    def __init__(self, device: int | str | None = None, sample_rate: int = 16000, device_rate: int | None = None,
                 channels: int = 1, block_seconds: float = 0.05, ring_seconds: float = 10.0,
                 stall_timeout_s: float = 2.0, retry_s: float = 1.0, max_retry_s: float | None = None,
                 latency: str | float = "low") -> None:
        self.sd = import_sounddevice()
        self.device_spec = device
        self.sample_rate = sample_rate
        self.requested_rate = device_rate
        self.channels = channels
        self.block_seconds = block_seconds
        self.ring_seconds = ring_seconds
        self.stall_timeout_s = stall_timeout_s
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s  # give up (AudioError) after this long without the device; None: never
        # "low": PortAudio's default "high" input latency made the ALSA pulse plugin deliver
        # in bursts of up to a second (measured: 14400 of 32000 samples in the first 2 s).
        self.latency = latency
        self.stats = CaptureStats()
        self.device = _resolve(self.sd, device)
        self.device_rate = self.requested_rate or choose_rate(self.sd, self.device, sample_rate, channels)
        self.stats.device_rate = self.device_rate
        self._stream: Any = None
        self._ring: SampleRing | None = None
        self._closed = False
        self._last_block = 0.0
        self._got_block = False

    @property
    def device_name(self) -> str:
        """The opened device's name."""
        return str(self.sd.query_devices(self.device)["name"])

    # -- PortAudio -----------------------------------------------------------------------
    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status and status.input_overflow:
            self.stats.input_overflows += 1
        mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1)
        assert self._ring is not None
        self._ring.write(mono)  # never blocks: a full ring counts an overflow and becomes a gap
        self.stats.blocks += 1
        self._got_block = True
        self._last_block = time.monotonic()

    def _open(self) -> None:
        sd = self.sd
        self._ring = SampleRing(max(1, int(self.ring_seconds * self.device_rate)))
        self._stream = sd.InputStream(device=self.device, samplerate=self.device_rate, channels=self.channels,
                                      dtype="float32", blocksize=max(1, int(self.block_seconds * self.device_rate)),
                                      latency=self.latency, callback=self._callback)
        self._got_block = False
        self._stream.start()
        self._last_block = time.monotonic()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.abort()
                stream.close()
            except Exception:  # the server is already gone; nothing left to release
                pass

    def _reopen(self) -> None:
        """Re-initialise PortAudio (to see a restarted server/replugged card) and reopen; raise on failure."""
        sd = self.sd
        sd._terminate()
        sd._initialize()
        self.device = _resolve(sd, self.device_spec)
        self.device_rate = self.requested_rate or choose_rate(sd, self.device, self.sample_rate, self.channels)
        self.stats.device_rate = self.device_rate
        self._open()

    def _alive(self) -> bool:
        stream = self._stream
        # Opening an ALSA/PulseAudio stream takes about a second before the first block: allow
        # a longer wait for the first block than between blocks.
        limit = self.stall_timeout_s if self._got_block else max(self.stall_timeout_s, STARTUP_GRACE_S)
        return stream is not None and stream.active and time.monotonic() - self._last_block < limit

    # -- AudioSource ---------------------------------------------------------------------
    def chunks(self) -> Iterator[AudioChunk]:
        """Yield 16 kHz chunks until ``close()``; survive the device going away and coming back."""
        try:
            self._open()
        except Exception as exc:
            raise AudioError(f"cannot open input device {self.device} at {self.device_rate} Hz: {exc}") from None
        position = 0  # 16 kHz stream position
        pending_gap = 0
        resampler = self._resampler()
        while not self._closed:
            assert self._ring is not None
            for chunk in self._ring.read(timeout=0.1):
                gap = pending_gap + int(round(chunk.gap_before * self.sample_rate / self.device_rate))
                if chunk.gap_before:  # the ring overflowed: the resampler must not bridge the hole
                    resampler = self._resampler()
                out = chunk.samples if resampler is None else resampler.resample_chunk(chunk.samples)
                if out.shape[0] == 0:
                    pending_gap = gap
                    continue
                position += gap
                pending_gap = 0
                yield AudioChunk(np.ascontiguousarray(out, dtype=np.float32), position, gap)
                position += out.shape[0]
            if self._closed or self._alive():
                continue
            lost_at = time.monotonic()
            self.stats.losses += 1
            log.warning("audio input lost (device %s %s); retrying every %.1f s", self.device,
                        "stopped" if self._stream is None or not self._stream.active else "silent", self.retry_s)
            self._close_stream()
            while not self._closed:
                try:
                    self._reopen()
                    break
                except Exception as exc:
                    self._close_stream()
                    if self.max_retry_s is not None and time.monotonic() - lost_at > self.max_retry_s:
                        raise AudioError(f"audio input lost and not back after {self.max_retry_s:.0f} s ({exc})") from None
                    time.sleep(self.retry_s)
            if self._closed:
                break
            missed = int(math.ceil((time.monotonic() - lost_at) * self.sample_rate))
            pending_gap += max(1, missed)
            self.stats.samples_missed += max(1, missed)
            self.stats.reconnects += 1
            resampler = self._resampler()
            log.warning("audio input back on device %s at %d Hz after %.1f s", self.device, self.device_rate,
                        time.monotonic() - lost_at)
        self._close_stream()

    def _resampler(self) -> Any:
        if self.device_rate == self.sample_rate:
            return None
        return soxr.ResampleStream(self.device_rate, self.sample_rate, 1, dtype="float32", quality="HQ")

    def close(self) -> None:
        """Stop capturing (the generator closes the stream); safe to call twice."""
        self._closed = True
        if self._ring is not None:
            self._ring.close()
        self._close_stream()
