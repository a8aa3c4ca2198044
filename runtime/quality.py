"""Signal-quality gate: is this 8 s window fit to classify? (numpy only, about 0.3-0.5 ms per window).

Deterministic rules where they are exact:

* ``silence``: peak below ``SILENCE_PEAK`` (digital silence; nothing to classify);
* ``clipping``: more than ``CLIP_RATIO`` of the samples sit flat at the window's peak, itself
  at full scale (>= ``CLIP_LEVEL``).

Everything else is a small learned model: multinomial logistic regression on standardized cheap
features (``FEATURE_NAMES``), classes ``ok`` + the artefact reasons + ``unknown`` (SPRSound's
real "Poor Quality" records, whose cause is not annotated). The window passes when the
probability of ``ok`` is at least ``threshold`` (chosen on patient-held-out validation data);
otherwise the reason is the most probable non-ok class. The file holds only the coefficients,
the standardization and the threshold (npz without pickles, or JSON). Fitting: train/quality.py.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stethoedge.runtime.errors import BundleError

QUALITY_REASONS = ("ok", "no_contact", "friction", "speech", "clipping", "silence", "knock", "heart_dominant", "unknown")
#: Peak below this: digital silence (same threshold as runtime/audio_io.SILENCE_PEAK).
SILENCE_PEAK = 1e-4
#: Clipping: the window's peak at full scale and more than this share of samples at it.
CLIP_LEVEL = 0.985
CLIP_RATIO = 0.002
RATE = 16000
FRAME = 256  # 32 ms spectral frames at 8 kHz, non-overlapping
_WINDOW = np.hanning(FRAME).astype(np.float32)
_FREQS = np.fft.rfftfreq(FRAME, 2.0 / RATE)
_BAND = (_FREQS >= 100) & (_FREQS < 4000)
_BREATH = (_FREQS >= 150) & (_FREQS < 2000)
_WINDOW_ENV = np.hanning(8 * RATE // 2 // FRAME).astype(np.float32)  # the envelope window of a full 8 s window
_LOW, _VERY_LOW, _HIGH = _FREQS < 150, _FREQS < 100, _FREQS >= 2000
FEATURE_NAMES = (
    "rms_db", "peak_db", "crest_db", "clip_ratio", "zcr", "flatness",
    "low_ratio_db", "high_ratio_db", "very_low_ratio_db", "centroid_hz",
    "impulses", "env_p95_med_db", "mod_syllable", "mod_breath", "cepstral_peak", "frame_db_std",
)


@dataclass
class QualityVerdict:
    """The gate's verdict on one window: ``ok``, the reason (QUALITY_REASONS), P(ok) and the features."""

    ok: bool
    reason: str
    score: float
    details: dict[str, float] = field(default_factory=dict)


def _db(x: float) -> float:
    return 10.0 * math.log10(max(x, 1e-20))


SPECTRAL_STRIDE = 4  # version 2: spectral statistics on every 4th frame


def _span(mask: np.ndarray) -> slice:
    i = np.flatnonzero(mask)
    return slice(int(i[0]), int(i[-1]) + 1)


_BAND_SL, _BREATH_SL, _LOW_SL, _VLOW_SL, _HIGH_SL = map(_span, (_BAND, _BREATH, _LOW, _VERY_LOW, _HIGH))
_BAND_N = _BAND_SL.stop - _BAND_SL.start
_WINDOW64 = _WINDOW.astype(np.float64)
#: irfft of a log spectrum restricted to the 80-400 Hz pitch quefrencies: (FRAME/2+1, quefrencies)
_CEPS = np.ascontiguousarray(np.fft.irfft(np.eye(FRAME // 2 + 1), n=FRAME, axis=1)[:, RATE // 2 // 400: RATE // 2 // 80])
_LOG30 = 10 * math.log10(30.0)
_MF = np.fft.rfftfreq(_WINDOW_ENV.shape[0], 2 * FRAME / RATE)
_SYL, _BRE = (_MF >= 3) & (_MF < 8), (_MF >= 0.1) & (_MF < 1.0)


def _frames(x8: np.ndarray) -> np.ndarray:
    """(frames, FRAME) view of the 8 kHz signal (zero-padded to one frame when shorter)."""
    frames = max(1, x8.shape[0] // FRAME)
    if x8.shape[0] >= frames * FRAME:
        return x8[: frames * FRAME].reshape(frames, FRAME)
    seg = np.zeros((frames, FRAME), np.float32)
    seg.reshape(-1)[: x8.shape[0]] = x8
    return seg


def _envelope_features(f: dict[str, float], seg: np.ndarray, r8: int) -> None:
    """32 ms frame energies of the mean-free 8 kHz frames ``seg``: impulses (knocks), envelope spread,
    and modulation at syllable (3-8 Hz) vs breathing (0.1-1 Hz) rates; written into ``f``."""
    frames = seg.shape[0]
    e = np.einsum("ij,ij->i", seg, seg) / FRAME + 1e-12
    edb = 10 * np.log10(e)
    ranked = np.sort(edb)
    med_db = float(ranked[len(ranked) // 2])
    f["impulses"] = float(np.count_nonzero(edb > med_db + _LOG30))
    f["env_p95_med_db"] = float(ranked[min(len(ranked) - 1, int(0.95 * len(ranked)))]) - med_db
    env = edb - edb.mean()
    f["frame_db_std"] = math.sqrt(float(np.dot(env, env)) / env.shape[0])
    if frames >= 16:
        full = frames == _WINDOW_ENV.shape[0]
        mod = np.fft.rfft(env * (_WINDOW_ENV if full else np.hanning(frames)))
        mod = mod.real * mod.real + mod.imag * mod.imag
        mf = _MF if full else np.fft.rfftfreq(frames, FRAME / r8)
        syl, bre = (_SYL, _BRE) if full else ((mf >= 3) & (mf < 8), (mf >= 0.1) & (mf < 1.0))
        tot = float(mod[1:].sum()) + 1e-12
        f["mod_syllable"] = float(mod[syl].sum()) / tot
        f["mod_breath"] = float(mod[bre].sum()) / tot
    else:
        f["mod_syllable"] = f["mod_breath"] = 0.0


def quality_features(audio: np.ndarray, available: int | None = None, rate: int = RATE) -> dict[str, float]:
    """Cheap signal features (``FEATURE_NAMES``, version 2) of the real part (first ``available`` samples)
    of a 16 kHz window, with about half the work of version 1: level, peak and clipping over every
    sample; the 32 ms frame energies over every frame of the 8 kHz signal (pairs averaged: a crude
    low-pass that makes 8 kHz and 44.1 kHz recordings comparable); spectral statistics and the
    zero-crossing rate on every ``SPECTRAL_STRIDE``-th frame of it."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"quality_features needs a non-empty mono window, got shape {x.shape}")
    n = x.shape[0] if available is None else int(max(1, min(available, x.shape[0])))
    x = x[:n]
    mu = float(x.sum(dtype=np.float64)) / n
    hi, lo = float(x.max()), float(x.min())
    peak = max(hi - mu, mu - lo)
    ms = max(float(np.dot(x, x)) / n - mu * mu, 0.0)
    rms_db, peak_db = _db(ms), 2 * _db(peak)
    f = {"rms_db": rms_db, "peak_db": peak_db, "crest_db": peak_db - rms_db}
    if peak >= CLIP_LEVEL:  # as version 1: |x - mean| >= 0.999 peak, without the |x - mean| copy
        t = 0.999 * peak
        f["clip_ratio"] = float(np.count_nonzero(x >= np.float32(mu + t)) + np.count_nonzero(x <= np.float32(mu - t))) / n
    else:
        f["clip_ratio"] = 0.0
    x8 = np.add(x[0: n - 1: 2], x[1:n:2]) if n >= 2 else x.copy()
    x8 *= np.float32(0.5 if n >= 2 else 1.0)
    x8 -= np.float32(mu)
    r8 = rate // 2
    seg = _frames(x8)
    sel = seg[::SPECTRAL_STRIDE].astype(np.float64)
    sign = np.signbit(sel)
    f["zcr"] = float(np.count_nonzero(sign[:, 1:] != sign[:, :-1])) / (sign.shape[0] * (FRAME - 1))
    sel *= _WINDOW64
    c = np.fft.rfft(sel, axis=1)  # float64: numpy's float32 FFT is several times slower
    spec = c.real * c.real
    spec += c.imag * c.imag
    spec += 1e-20
    psd = spec.sum(0) / spec.shape[0]
    total = float(psd.sum())
    breath = float(psd[_BREATH_SL].sum()) + 1e-20
    f["low_ratio_db"] = _db(float(psd[_LOW_SL].sum()) / breath)
    f["very_low_ratio_db"] = _db(float(psd[_VLOW_SL].sum()) / total)
    f["high_ratio_db"] = _db(float(psd[_HIGH_SL].sum()) / breath)
    f["centroid_hz"] = float(np.dot(psd, _FREQS) / total)
    logspec = np.log(spec)
    band_log = logspec[:, _BAND_SL].sum(1) / _BAND_N
    band_mean = spec[:, _BAND_SL].sum(1) / _BAND_N
    f["flatness"] = float(np.exp(band_log).dot(1.0 / band_mean)) / spec.shape[0]
    # cepstral peak in the 80-400 Hz pitch range on the loudest quarter of those frames:
    # voiced speech is harmonic, breath is not
    k = max(1, spec.shape[0] // 4)
    loud = np.argpartition(spec.sum(1), spec.shape[0] - k)[-k:] if k < spec.shape[0] else slice(None)
    f["cepstral_peak"] = float((logspec[loud] @ _CEPS).max(1).mean())
    _envelope_features(f, seg, r8)
    return {k: float(f[k]) for k in FEATURE_NAMES}


def quality_features_v1(audio: np.ndarray, available: int | None = None, rate: int = RATE) -> dict[str, float]:
    """Version 1 of ``quality_features`` (every other frame's spectrum; the zero-crossing rate at 16 kHz),
    kept for gates fitted on it (bundles updated before version 2)."""
    x = np.asarray(audio, dtype=np.float32)
    n = x.shape[0] if available is None else int(max(1, min(available, x.shape[0])))
    x = x[:n]  # float32 throughout, no full-length copies: the DC offset is taken out analytically
    mu = float(x.mean(dtype=np.float64))
    peak = float(max(x.max() - mu, mu - x.min())) if n else 0.0
    ms = max(float(np.dot(x, x)) / n - mu * mu, 0.0) if n else 0.0
    f: dict[str, float] = {"rms_db": _db(ms), "peak_db": 2 * _db(peak), "crest_db": 2 * _db(peak) - _db(ms)}
    f["clip_ratio"] = float(np.count_nonzero(np.abs(x - np.float32(mu)) >= 0.999 * peak)) / n if peak >= CLIP_LEVEL else 0.0
    sign = np.signbit(x)
    f["zcr"] = float(np.count_nonzero(sign[1:] != sign[:-1])) / (n - 1) if n > 1 else 0.0
    # spectra at 8 kHz (pairs averaged: a crude low-pass; the 2-4 kHz band is all we read above 2 kHz)
    # on every other 32 ms frame: half the FFTs, the same statistics
    x8 = (0.5 * (x[0 : n - 1 : 2] + x[1:n:2]) if n >= 2 else x.copy()) - np.float32(mu)
    r8 = rate // 2
    seg = _frames(x8)
    spec = np.abs(np.fft.rfft(seg[::2] * _WINDOW, axis=1)) ** 2 + 1e-20  # (frames/2, FRAME/2+1)
    freqs = _FREQS
    psd = spec.mean(0)
    total = float(psd.sum())
    breath = float(psd[_BREATH].sum()) + 1e-20
    f["low_ratio_db"] = _db(float(psd[_LOW].sum()) / breath)
    f["very_low_ratio_db"] = _db(float(psd[_VERY_LOW].sum()) / total)
    f["high_ratio_db"] = _db(float(psd[_HIGH].sum()) / breath)
    f["centroid_hz"] = float((psd * freqs).sum() / total)
    sb = spec[:, _BAND]
    f["flatness"] = float(np.mean(np.exp(np.log(sb).mean(1)) / sb.mean(1)))
    # cepstral peak in the 80-400 Hz pitch range on the loudest quarter of those frames:
    # voiced speech is harmonic, breath is not
    loud = spec[np.argsort(spec.sum(1))[-max(1, spec.shape[0] // 4):]]
    ceps = np.fft.irfft(np.log(loud), axis=1)
    f["cepstral_peak"] = float(np.mean(ceps[:, r8 // 400: r8 // 80].max(1)))
    _envelope_features(f, seg, r8)
    return {k: float(f[k]) for k in FEATURE_NAMES}


#: Feature implementation per gate ``features_version`` (gates record the version they were fitted on).
FEATURE_VERSIONS = {1: quality_features_v1, 2: quality_features}
FEATURES_VERSION = 2


def _version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"features_version {value!r} is not an integer")
    return value


@dataclass
class QualityGate:
    """Rules + multinomial logistic regression over standardized ``quality_features``."""

    classes: tuple[str, ...]
    mean: np.ndarray  # (features,)
    scale: np.ndarray  # (features,)
    coef: np.ndarray  # (classes, features)
    intercept: np.ndarray  # (classes,)
    threshold: float = 0.5  # P(ok) needed to pass
    fitted_on: str = ""
    features_version: int = FEATURES_VERSION  # which quality_features the coefficients were fitted on

    def __post_init__(self) -> None:
        self.classes = tuple(str(c) for c in self.classes)
        self.mean, self.scale = np.asarray(self.mean, np.float64), np.asarray(self.scale, np.float64)
        self.coef, self.intercept = np.asarray(self.coef, np.float64), np.asarray(self.intercept, np.float64)
        k, d = len(self.classes), len(FEATURE_NAMES)
        if "ok" not in self.classes or any(c not in QUALITY_REASONS for c in self.classes) or len(set(self.classes)) != k:
            raise BundleError(f"quality gate classes {self.classes} must be distinct names from {QUALITY_REASONS}, "
                              "including 'ok'")
        if self.mean.shape != (d,) or self.scale.shape != (d,) or self.coef.shape != (k, d) or self.intercept.shape != (k,):
            raise BundleError(f"quality gate arrays have the wrong shapes (expected {k} classes x {d} features)")
        arrays = (self.mean, self.scale, self.coef, self.intercept)
        if not all(np.all(np.isfinite(v)) for v in arrays) or np.any(self.scale <= 0):
            raise BundleError("quality gate coefficients must be finite (and scales positive)")
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and 0 <= self.threshold <= 1):
            raise BundleError(f"quality gate threshold {self.threshold!r} must be in [0, 1]")
        if self.features_version not in FEATURE_VERSIONS:
            raise BundleError(f"quality gate features_version {self.features_version!r} is not one this runtime computes "
                              f"({', '.join(map(str, FEATURE_VERSIONS))}); upgrade stethoedge or re-fit the gate")
        self._features = FEATURE_VERSIONS[self.features_version]
        self._ok_index = self.classes.index("ok")

    def probabilities(self, features: dict[str, float]) -> np.ndarray:
        """Class probabilities of the learned model for one feature dict."""
        v = np.array([features[k] for k in FEATURE_NAMES])
        z = self.coef @ ((v - self.mean) / self.scale) + self.intercept
        z = np.exp(z - z.max())
        return z / z.sum()

    def assess(self, audio: np.ndarray, available: int | None = None) -> QualityVerdict:
        """Verdict on one 16 kHz window (``available`` real samples; the rest is cyclic padding)."""
        x = np.asarray(audio)
        n = x.shape[0] if available is None else int(max(0, min(available, x.shape[0])))
        peak = max(float(x[:n].max()), -float(x[:n].min())) if n else 0.0  # no |x| copy
        if not math.isfinite(peak) or peak < SILENCE_PEAK:
            return QualityVerdict(False, "silence", 0.0, {"peak": peak if np.isfinite(peak) else float("nan")})
        return self.verdict(self.features(x, n))

    def features(self, audio: np.ndarray, available: int | None = None) -> dict[str, float]:
        """``quality_features`` of the version this gate was fitted on."""
        return self._features(audio, available)

    def verdict(self, f: dict[str, float]) -> QualityVerdict:
        """The verdict from precomputed ``quality_features`` (the clipping rule, then the learned model;
        digital silence needs the raw peak and is checked by ``assess``)."""
        if f["clip_ratio"] > CLIP_RATIO:
            return QualityVerdict(False, "clipping", 0.0, f)
        p = self.probabilities(f)
        ok_i = self._ok_index
        score = float(p[ok_i])
        if score >= self.threshold:
            return QualityVerdict(True, "ok", score, f)
        p = p.copy()
        p[ok_i] = -1.0
        return QualityVerdict(False, self.classes[int(np.argmax(p))], score, f)

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, object]:
        """JSON-ready parameters."""
        return {"kind": "stethoedge.quality", "version": 1, "features": list(FEATURE_NAMES),
                "classes": list(self.classes), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "intercept": self.intercept.tolist(),
                "threshold": float(self.threshold), "fitted_on": self.fitted_on,
                "features_version": int(self.features_version)}

    def to_file(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` (no pickles) or ``.json`` atomically."""
        from stethoedge.runtime.outputs import atomic_write_bytes, atomic_write_text

        path = Path(path)
        d = self.to_dict()
        if path.suffix == ".json":
            atomic_write_text(path, json.dumps(d, indent=1) + "\n")
            return path
        import io

        buf = io.BytesIO()
        np.savez(buf, features=np.array(FEATURE_NAMES), classes=np.array(self.classes),
                 mean=self.mean.astype(np.float32), scale=self.scale.astype(np.float32),
                 coef=self.coef.astype(np.float32), intercept=self.intercept.astype(np.float32),
                 threshold=np.float64(self.threshold), fitted_on=np.array(self.fitted_on),
                 features_version=np.int64(self.features_version))
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> QualityGate:
        """Read a gate written by ``to_file`` (BundleError on anything malformed)."""
        path = Path(path)
        try:
            if path.suffix == ".json":
                d = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(d, dict) or d.get("kind") != "stethoedge.quality":
                    raise ValueError("not a stethoedge quality gate")
            else:
                with np.load(path, allow_pickle=False) as z:
                    d = {k: z[k] for k in z.files}
                d = {k: (v.tolist() if v.dtype.kind in "US" else v) for k, v in d.items()}
                d["threshold"] = float(d["threshold"])
                d["fitted_on"] = str(d.get("fitted_on", ""))
                d["features_version"] = int(d["features_version"]) if "features_version" in d else 1
            if [str(x) for x in d["features"]] != list(FEATURE_NAMES):
                raise ValueError(f"features {d['features']} differ from this runtime's {list(FEATURE_NAMES)}")
            return cls(tuple(d["classes"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float),
                       np.asarray(d["coef"], float), np.asarray(d["intercept"], float), float(d["threshold"]),
                       str(d.get("fitted_on", "")), _version(d.get("features_version", 1)))
        except BundleError as exc:
            raise BundleError(f"{path}: {exc}") from None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: unreadable quality gate ({exc})") from None
