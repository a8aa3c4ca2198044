"""Synthetic lung sounds with ground-truth ICBHI labels: the embedded default dataset.

A recording is rendered from a *plan* (breathing cycles and the adventitious events placed in
them) drawn for a *patient* whose condition sets how often crackles and wheezes occur:

* breathing at 10-30 breaths/min; each cycle is inspiration, a longer expiration
  (I:E 1:1.5-1:2) and a pause; the breath sound is noise shaped to 100-1000 Hz (band-pass with an
  -18 dB/octave slope above a patient-specific 180-400 Hz corner), expiration quieter and duller;
* crackles: a sharp first deflection ringing down in a damped, falling-pitch oscillation;
  fine (~5 ms, 600-1000 Hz, late inspiratory) or coarse (~15 ms, 200-400 Hz, early
  inspiratory or expiratory), 2+Poisson per crackling cycle;
* wheezes: 150-600 ms tones at 100-1000 Hz with 2-3 harmonics, a pitch glide, vibrato and
  onset/offset ramps, mostly expiratory;
* heart sounds (S1/S2 thumps, 20-150 Hz, 60-100 bpm), an occasional friction burst, a
  stethoscope/microphone frequency response, sensor noise at a random SNR, a random gain.

Labels are exact: a cycle's crackle (wheeze) flag is 1 iff a crackle (wheeze) was placed in it.
Event loudness varies over a wide range so that some abnormal cycles are faint. Everything is
drawn from numpy Generators seeded from the caller's seed, so output is bit-reproducible.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal

from stethoedge.runtime.audio_io import resample, write_wav
from stethoedge.runtime.errors import DataError
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.outputs import atomic_write_text, check_output_dir, is_temporary_name
from stethoedge.data.icbhi import LOCATIONS, SPLIT_FILENAME, Cycle

SYNTH_RATE = 16000
FIRST_PATIENT = 301  # real ICBHI patients are 101-226
GENERATOR = "stethoedge.train.simulator"
FORMAT_VERSION = 1
AUDIO_DIR = "audio_and_txt_files"
META_FILE = "simulation.json"
DIAGNOSIS_FILE = "patient_diagnosis.csv"
MIN_DURATION_S = 8.0
MAX_DURATION_S = 600.0


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class ConditionProfile:
    """Population-level parameters of a diagnosis (probabilities are per breathing cycle)."""

    diagnosis: str  # ICBHI spelling, written to patient_diagnosis.csv
    share: float  # fraction of simulated patients with this condition
    p_crackle: float
    p_wheeze: float
    p_fine: float  # probability that a crackling cycle's crackles are fine rather than coarse
    rate_bpm: tuple[float, float]
    ie_ratio: tuple[float, float]  # expiration / inspiration duration
    wheeze_f0_hz: tuple[float, float]
    p_polyphonic: float  # probability of a second simultaneous wheeze


#: Shares and per-cycle probabilities chosen so the expected class mix is close to ICBHI's
#: (normal 53 %, crackle 27 %, wheeze 12 %, both 7 %).
CONDITIONS: dict[str, ConditionProfile] = {
    "healthy": ConditionProfile("Healthy", 0.22, 0.03, 0.02, 0.7, (12, 18), (1.5, 1.8), (200, 600), 0.0),
    "urti": ConditionProfile("URTI", 0.08, 0.08, 0.05, 0.5, (14, 20), (1.5, 1.8), (200, 600), 0.0),
    "copd": ConditionProfile("COPD", 0.35, 0.50, 0.26, 0.3, (16, 26), (1.7, 2.0), (120, 500), 0.3),
    "asthma": ConditionProfile("Asthma", 0.10, 0.08, 0.70, 0.5, (14, 24), (1.7, 2.0), (300, 950), 0.3),
    "pneumonia": ConditionProfile("Pneumonia", 0.15, 0.60, 0.08, 0.6, (18, 27), (1.5, 1.8), (200, 700), 0.0),
    "bronchiectasis": ConditionProfile("Bronchiectasis", 0.10, 0.50, 0.15, 0.1, (14, 24), (1.6, 2.0), (120, 400), 0.1),
}


@dataclass(frozen=True)
class DeviceProfile:
    """Frequency response of a recording device, and its sensor-noise SNR range."""

    highpass_hz: float
    lowpass_hz: float  # <= 0: no low-pass (wide-band microphone)
    lowpass_order: int
    resonance_hz: float  # 0: none
    resonance_db: float
    resonance_q: float
    snr_db: tuple[float, float]
    file_rate: int  # sample rate of the written WAV, as in the real database


DEVICES: dict[str, DeviceProfile] = {
    # Lavalier condenser microphone: flat and wide-band, picks up more room noise.
    "AKGC417L": DeviceProfile(40.0, 0.0, 0, 0.0, 0.0, 1.0, (12.0, 30.0), SYNTH_RATE),
    # Acoustic stethoscope with a microphone in the tubing: steep roll-off, tube resonance.
    "LittC2SE": DeviceProfile(30.0, 1000.0, 4, 250.0, 6.0, 1.5, (18.0, 36.0), SYNTH_RATE),
    # Electronic stethoscope, 20-2000 Hz "extended" response with a bell-like low boost; 4 kHz files.
    "Litt3200": DeviceProfile(20.0, 1900.0, 3, 120.0, 5.0, 1.2, (18.0, 38.0), 4000),
    "Meditron": DeviceProfile(50.0, 2500.0, 2, 500.0, 4.0, 1.0, (15.0, 35.0), SYNTH_RATE),
}
DEVICE_SHARES: dict[str, float] = {"AKGC417L": 0.4, "Meditron": 0.3, "LittC2SE": 0.15, "Litt3200": 0.15}


def condition_profile(condition: str) -> ConditionProfile:
    """Look up a condition by key or ICBHI diagnosis name, case-insensitively."""
    key = condition.strip().lower()
    if key not in CONDITIONS:
        raise DataError(f"unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}")
    return CONDITIONS[key]


def device_profile(device: str) -> DeviceProfile:
    """Look up a device by its ICBHI name (AKGC417L, LittC2SE, Litt3200, Meditron)."""
    if device not in DEVICES:
        raise DataError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    return DEVICES[device]


# --------------------------------------------------------------------------- patients and plans


@dataclass(frozen=True)
class Patient:
    """Everything that stays the same across one simulated patient's recordings."""

    condition: str
    rate_bpm: float  # breaths per minute
    ie_ratio: float  # expiration / inspiration duration
    pause_fraction: float  # share of each cycle that is silent pause
    heart_rate_bpm: float
    p_crackle: float  # per cycle
    p_wheeze: float  # per cycle
    p_fine: float
    crackle_rate: float  # Poisson mean of crackles beyond the minimum 2 per crackling cycle
    crackle_gain: float  # crackle peak / breath-sound RMS at peak inspiration
    wheeze_f0_hz: float
    wheeze_gain: float  # wheeze amplitude / breath-sound RMS at peak inspiration
    p_polyphonic: float
    breath_corner_hz: float  # above this the breath-sound spectrum falls 18 dB/octave
    exp_level: float  # expiratory / inspiratory breath-sound amplitude
    heart_gain: float  # heart-sound peak / breath-sound RMS


def _loguniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_patient(rng: np.random.Generator, condition: str) -> Patient:
    """Draw one patient of ``condition``; severity scales its event probabilities by 0.6-1.4."""
    prof = condition_profile(condition)
    severity = rng.uniform(0.6, 1.4)
    return Patient(
        condition=condition.strip().lower(),
        rate_bpm=float(rng.uniform(*prof.rate_bpm)),
        ie_ratio=float(rng.uniform(*prof.ie_ratio)),
        pause_fraction=float(rng.uniform(0.08, 0.2)),
        heart_rate_bpm=float(rng.uniform(60.0, 100.0)),
        p_crackle=float(min(0.95, prof.p_crackle * severity)),
        p_wheeze=float(min(0.95, prof.p_wheeze * severity)),
        p_fine=prof.p_fine,
        crackle_rate=float(rng.uniform(1.0, 8.0)),
        # Log-uniform loudness: a good share of patients have faint events (near the breath level).
        crackle_gain=_loguniform(rng, 2.0, 15.0),
        wheeze_f0_hz=float(rng.uniform(*prof.wheeze_f0_hz)),
        wheeze_gain=_loguniform(rng, 0.15, 1.5),
        p_polyphonic=prof.p_polyphonic,
        breath_corner_hz=float(rng.uniform(180.0, 400.0)),
        exp_level=float(rng.uniform(0.3, 0.6)),
        heart_gain=float(rng.uniform(0.2, 1.2)),
    )


@dataclass(frozen=True)
class Crackle:
    """One crackle: onset time (s) and kind ("fine" or "coarse")."""

    time_s: float
    kind: str
    gain: float  # peak amplitude relative to the breath-sound RMS


@dataclass(frozen=True)
class Wheeze:
    """One wheeze: a tone from ``f_start_hz`` gliding to ``f_end_hz`` over ``duration_s``."""

    start_s: float
    duration_s: float
    f_start_hz: float
    f_end_hz: float
    gain: float
    harmonics: tuple[float, ...]  # amplitudes of the fundamental and its 1-2 harmonics
    phase: str  # "inspiration" or "expiration"


@dataclass(frozen=True)
class CyclePlan:
    """A breathing cycle: inspiration, expiration, pause; times in seconds from file start."""

    start_s: float
    insp_s: float
    exp_s: float
    end_s: float
    amplitude: float
    annotated: bool
    crackles: tuple[Crackle, ...] = ()
    wheezes: tuple[Wheeze, ...] = ()

    @property
    def exp_start_s(self) -> float:
        """Start of expiration (end of inspiration), seconds."""
        return self.start_s + self.insp_s

    @property
    def exp_end_s(self) -> float:
        """End of expiration (start of the pause), seconds."""
        return self.start_s + self.insp_s + self.exp_s

    @property
    def cycle(self) -> Cycle:
        """The ICBHI annotation of this cycle (times rounded to ms, as written to .txt)."""
        return Cycle(round(self.start_s, 3), round(self.end_s, 3),
                     int(bool(self.crackles)), int(bool(self.wheezes)))


def _place_crackles(rng: np.random.Generator, patient: Patient, c: CyclePlan) -> tuple[Crackle, ...]:
    kind = "fine" if rng.random() < patient.p_fine else "coarse"
    count = int(min(12, 2 + rng.poisson(patient.crackle_rate)))
    gains = patient.crackle_gain * np.exp(rng.normal(0.0, 0.35, count))
    if kind == "fine":
        # Fine crackles: late inspiration, when small airways snap open.
        times = c.start_s + c.insp_s * rng.uniform(0.45, 0.95, count)
    else:
        # Coarse crackles: early inspiration, and expiration in about a third of them.
        in_exp = rng.random(count) < 0.35
        t_insp = c.start_s + c.insp_s * rng.uniform(0.03, 0.45, count)
        t_exp = c.exp_start_s + c.exp_s * rng.uniform(0.05, 0.7, count)
        times = np.where(in_exp, t_exp, t_insp)
    return tuple(Crackle(float(t), kind, float(g)) for t, g in sorted(zip(times, gains)))


def _place_wheezes(rng: np.random.Generator, patient: Patient, c: CyclePlan) -> tuple[Wheeze, ...]:
    count = 2 if rng.random() < patient.p_polyphonic else 1
    phase = "expiration" if rng.random() < 0.8 else "inspiration"
    p_start, p_len = (c.exp_start_s, c.exp_s) if phase == "expiration" else (c.start_s, c.insp_s)
    out = []
    for k in range(count):
        duration = float(np.clip(rng.uniform(0.15, 0.6), 0.1, 0.8 * p_len))
        start = p_start + rng.uniform(0.05 * p_len, max(0.05 * p_len, 0.95 * p_len - duration))
        # A second (polyphonic) wheeze sits ~60 % higher than the first.
        f0 = float(np.clip(patient.wheeze_f0_hz * np.exp(rng.normal(0.0, 0.12)) * (1.0 + 0.6 * k), 100.0, 1000.0))
        # Expiratory wheezes mostly fall in pitch as the airways narrow during the breath.
        glide = rng.uniform(0.8, 1.12) if phase == "expiration" else rng.uniform(0.92, 1.15)
        harmonics = (1.0, float(rng.uniform(0.2, 0.6)))
        if rng.random() < 0.6:
            harmonics += (float(rng.uniform(0.05, 0.3)),)
        gain = patient.wheeze_gain * float(np.exp(rng.normal(0.0, 0.3))) / count
        f_end = float(np.clip(f0 * glide, 100.0, 1000.0))
        out.append(Wheeze(float(start), duration, f0, f_end, gain, harmonics, phase))
    return tuple(out)


def plan_cycles(rng: np.random.Generator, patient: Patient, duration_s: float) -> list[CyclePlan]:
    """Breathing cycles covering ``duration_s`` seconds; only complete cycles are annotated and get events.

    Cycle length jitters +-8 % around the patient's rate; the first annotated cycle starts
    0.05-0.6 s into the file, after the tail of a preceding (unannotated) cycle.
    """
    period = 60.0 / patient.rate_bpm
    t = rng.uniform(0.05, 0.6) - period
    plans: list[CyclePlan] = []
    while t < duration_s:
        length = period * rng.uniform(0.92, 1.08)
        active = length * (1.0 - patient.pause_fraction * rng.uniform(0.8, 1.2))
        insp = active / (1.0 + patient.ie_ratio)
        annotated = t >= 0.0 and round(t + length, 3) <= duration_s
        tidal = float(rng.uniform(0.8, 1.2))  # breath-to-breath loudness variation
        plan = CyclePlan(float(t), float(insp), float(active - insp), float(t + length), tidal, annotated)
        if annotated:
            crackles = _place_crackles(rng, patient, plan) if rng.random() < patient.p_crackle else ()
            wheezes = _place_wheezes(rng, patient, plan) if rng.random() < patient.p_wheeze else ()
            plan = CyclePlan(plan.start_s, plan.insp_s, plan.exp_s, plan.end_s, tidal, True, crackles, wheezes)
        plans.append(plan)
        t += length
    return plans


# --------------------------------------------------------------------------- waveforms


def crackle_waveform(rng: np.random.Generator, kind: str, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """One crackle, peak 1: a sharp first deflection then a damped oscillation of falling pitch.

    Fine: 4-7 ms, starting at 600-1000 Hz; coarse: 12-20 ms, starting at 200-400 Hz. The
    first half-period sets the initial deflection width (~0.6 ms fine, ~1.5 ms coarse).
    """
    if kind == "fine":
        dur, f0 = rng.uniform(0.004, 0.007), rng.uniform(600.0, 1000.0)
    else:
        dur, f0 = rng.uniform(0.012, 0.020), rng.uniform(200.0, 400.0)
    t = np.arange(int(dur * sample_rate)) / sample_rate
    freq = 0.5 * f0 + 0.5 * f0 * np.exp(-t / (dur / 4.0))
    phase = 2.0 * np.pi * np.cumsum(freq) / sample_rate
    env = (1.0 - np.exp(-t / 1.5e-4)) * np.exp(-t / (dur / 3.0))
    env *= np.clip((dur - t) / (0.15 * dur), 0.0, 1.0)  # taper the tail so the event ends at zero
    x = env * np.sin(phase)
    return x / max(np.max(np.abs(x)), 1e-9) * rng.choice([-1.0, 1.0])


def wheeze_waveform(rng: np.random.Generator, w: Wheeze, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """A wheeze tone (amplitude ``w.gain``): gliding pitch, 4-7 Hz vibrato, 20-50 ms raised-cosine ramps."""
    n = int(w.duration_s * sample_rate)
    x = np.linspace(0.0, 1.0, n, endpoint=False)
    vibrato = 1.0 + rng.uniform(0.005, 0.02) * np.sin(2.0 * np.pi * rng.uniform(4.0, 7.0) * x * w.duration_s)
    f = (w.f_start_hz + (w.f_end_hz - w.f_start_hz) * x) * vibrato
    phase = 2.0 * np.pi * np.cumsum(f) / sample_rate + rng.uniform(0, 2 * np.pi)
    tone = np.zeros(n)
    for h, amp in enumerate(w.harmonics, start=1):
        if h * max(w.f_start_hz, w.f_end_hz) * 1.05 < 0.45 * sample_rate:
            tone += amp * np.sin(h * phase)
    ramp = max(2, int(rng.uniform(0.02, 0.05) * sample_rate))
    env = np.ones(n)
    edge = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    env[:ramp] = edge
    env[n - ramp :] = edge[::-1]
    env *= 1.0 + 0.15 * np.sin(2.0 * np.pi * rng.uniform(1.0, 3.0) * x * w.duration_s + rng.uniform(0, 2 * np.pi))
    return w.gain * env * tone


def heart_sound(rng: np.random.Generator, first: bool, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """S1 (~100 ms, 30-70 Hz) or S2 (~70 ms, 50-110 Hz) thump of peak ~1: a Gaussian-windowed falling sine."""
    dur = rng.uniform(0.08, 0.12) if first else rng.uniform(0.06, 0.085)
    f = rng.uniform(30.0, 70.0) if first else rng.uniform(50.0, 110.0)
    t = np.arange(int(dur * sample_rate)) / sample_rate
    env = np.exp(-0.5 * ((t - dur / 2) / (dur / 6)) ** 2)
    return env * np.sin(2 * np.pi * f * t * (1.2 - 0.4 * t / dur) + rng.uniform(0, 2 * np.pi))


def _add(out: np.ndarray, start: int, x: np.ndarray) -> None:
    """Mix ``x`` into ``out`` at sample ``start``, dropping whatever falls outside ``out``."""
    if start < 0:
        x, start = x[-start:], 0
    end = min(out.shape[0], start + x.shape[0])
    if end > start:
        out[start:end] += x[: end - start]


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def breath_noise(rng: np.random.Generator, n: int, corner_hz: float, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """Unit-RMS breath-sound noise: 2nd-order high-pass at 80-130 Hz, 3rd-order low-pass at ``corner_hz`` Hz.

    The -18 dB/octave slope above the corner keeps most energy in 100-1000 Hz, as in
    vesicular sound (the chest wall low-passes what the airways make).
    """
    nyq = 0.45 * sample_rate
    sos = np.vstack([
        scipy.signal.butter(2, min(rng.uniform(80.0, 130.0), nyq), "highpass", fs=sample_rate, output="sos"),
        scipy.signal.butter(3, min(corner_hz, nyq), "lowpass", fs=sample_rate, output="sos"),
    ])
    return _unit_rms(scipy.signal.sosfilt(sos, rng.standard_normal(n)))


def _phase_envelope(n: int, peak_at: float) -> np.ndarray:
    """Smooth 0->1->0 bump over n samples peaking at fraction ``peak_at`` (a warped sin^1.5)."""
    x = np.linspace(0.0, 1.0, max(n, 1), endpoint=False) + 0.5 / max(n, 1)
    warp = np.log(0.5) / np.log(peak_at)
    return np.sin(np.pi * x**warp) ** 1.5


def breath_envelopes(
    plans: list[CyclePlan], patient: Patient, n: int, sample_rate: int = SYNTH_RATE
) -> tuple[np.ndarray, np.ndarray]:
    """(inspiratory, expiratory) amplitude envelopes over n samples; expiration fades early and is quieter."""
    env_i, env_e = np.zeros(n), np.zeros(n)
    for c in plans:
        i0, i1, e1 = (int(round(t * sample_rate)) for t in (c.start_s, c.exp_start_s, c.exp_end_s))
        ins = c.amplitude * _phase_envelope(i1 - i0, 0.55)
        exp = c.amplitude * patient.exp_level * _phase_envelope(e1 - i1, 0.3)
        _add(env_i, i0, ins)
        _add(env_e, i1, exp)
    return env_i, env_e


def device_filter(profile: DeviceProfile, rng: np.random.Generator, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """Second-order sections of a device's response; the resonance is detuned +-15 % per recording."""
    nyq = 0.45 * sample_rate
    sections = [scipy.signal.butter(2, profile.highpass_hz, "highpass", fs=sample_rate, output="sos")]
    if profile.lowpass_hz > 0:
        sections.append(scipy.signal.butter(profile.lowpass_order, min(profile.lowpass_hz, nyq), "lowpass",
                                             fs=sample_rate, output="sos"))
    if profile.resonance_hz > 0:
        sections.append(peaking_eq(profile.resonance_hz * rng.uniform(0.85, 1.15), profile.resonance_db,
                                   profile.resonance_q, sample_rate))
    return np.vstack(sections)


def peaking_eq(freq_hz: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """One RBJ-cookbook peaking-EQ biquad as an sos row (resonance of a stethoscope tube/diaphragm)."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * freq_hz / sample_rate
    alpha = np.sin(w0) / (2.0 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def friction_burst(rng: np.random.Generator, sample_rate: int = SYNTH_RATE) -> np.ndarray:
    """A 150-600 ms scratch of the chest piece on skin/hair: band-passed noise, rough 15-40 Hz AM, peak ~1."""
    n = int(rng.uniform(0.15, 0.6) * sample_rate)
    sos = scipy.signal.butter(2, [150.0, 1500.0], "bandpass", fs=sample_rate, output="sos")
    noise = scipy.signal.sosfilt(sos, rng.standard_normal(n))
    t = np.arange(n) / sample_rate
    am = np.clip(1.0 + 0.9 * np.sin(2 * np.pi * rng.uniform(15.0, 40.0) * t + rng.uniform(0, 6.3)), 0, None)
    x = np.hanning(n) * am * noise
    return x / max(np.max(np.abs(x)), 1e-9)


# --------------------------------------------------------------------------- recordings


LOCATION_HEART_GAIN = {"Tc": 0.4, "Al": 1.5, "Ar": 0.8, "Pl": 0.6, "Pr": 0.5, "Ll": 1.2, "Lr": 0.6}


@dataclass
class SimulatedRecording:
    """Rendered audio plus the plan it came from (for tests and plots)."""

    audio: np.ndarray  # float32 mono, in [-1, 1]
    sample_rate: int
    patient: Patient
    device: str
    location: str
    plans: list[CyclePlan] = field(default_factory=list)

    @property
    def cycles(self) -> list[Cycle]:
        """ICBHI annotations of the complete cycles."""
        return [p.cycle for p in self.plans if p.annotated]


def _as_rng(rng_or_seed: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    return np.random.default_rng(rng_or_seed)


def render(rng: np.random.Generator, patient: Patient, plans: list[CyclePlan], device: str, location: str,
           duration_s: float) -> np.ndarray:
    """Render a plan to float32 audio at 16 kHz, peak-normalised to -18..-3 dBFS."""
    sr = SYNTH_RATE
    n = int(round(duration_s * sr))
    tracheal = location == "Tc"
    # Tracheal (bronchial) sound is brighter and its expiration nearly as loud as inspiration.
    corner = patient.breath_corner_hz * (2.2 if tracheal else 1.0)
    env_i, env_e = breath_envelopes(plans, patient if not tracheal else _tracheal(patient), n, sr)
    body = env_i * breath_noise(rng, n, corner, sr) + env_e * breath_noise(rng, n, 0.75 * corner, sr)
    for c in plans:
        for k in c.crackles:
            _add(body, int(round(k.time_s * sr)), k.gain * crackle_waveform(rng, k.kind, sr))
        for w in c.wheezes:
            _add(body, int(round(w.start_s * sr)), wheeze_waveform(rng, w, sr))
    beat = 60.0 / patient.heart_rate_bpm
    systole = 0.36 - 0.0015 * (patient.heart_rate_bpm - 60.0)
    gain = patient.heart_gain * LOCATION_HEART_GAIN.get(location, 1.0)
    t = rng.uniform(0.0, beat)
    while t < duration_s:
        _add(body, int(t * sr), gain * rng.uniform(0.85, 1.15) * heart_sound(rng, True, sr))
        _add(body, int((t + systole) * sr), 0.7 * gain * rng.uniform(0.85, 1.15) * heart_sound(rng, False, sr))
        t += beat * rng.uniform(0.97, 1.03)
    if rng.random() < 0.25:
        for _ in range(1 + rng.poisson(0.5)):
            _add(body, int(rng.uniform(0.0, duration_s) * sr), rng.uniform(0.5, 2.0) * friction_burst(rng, sr))
    profile = device_profile(device)
    # Ambient/contact noise enters through the chest piece, so the device colours it like the
    # body sounds; the electronics add a much weaker white floor after the filter.
    snr_db = rng.uniform(*profile.snr_db)
    body_rms = float(np.sqrt(np.mean(body**2)))
    body += body_rms * 10.0 ** (-snr_db / 20.0) * rng.standard_normal(n)
    audio = scipy.signal.sosfilt(device_filter(profile, rng, sr), body)
    floor_db = snr_db + rng.uniform(20.0, 35.0)
    audio += float(np.sqrt(np.mean(audio**2))) * 10.0 ** (-floor_db / 20.0) * rng.standard_normal(n)
    peak_dbfs = rng.uniform(-18.0, -3.0)
    audio *= 10.0 ** (peak_dbfs / 20.0) / max(float(np.max(np.abs(audio))), 1e-12)
    return audio.astype(np.float32)


def _tracheal(patient: Patient) -> Patient:
    return Patient(**{**asdict(patient), "exp_level": min(1.0, 0.8 + 0.3 * patient.exp_level)})


def simulate_recording_detailed(
    rng_or_seed: np.random.Generator | int | None, condition: str, device: str, duration_s: float,
    sample_rate: int = SYNTH_RATE, *, location: str = "Al", patient: Patient | None = None,
) -> SimulatedRecording:
    """``simulate_recording`` plus the patient and cycle plans (event times in seconds)."""
    rng = _as_rng(rng_or_seed)
    device_profile(device)
    if location not in LOCATIONS:
        raise DataError(f"unknown chest location {location!r}; use one of {', '.join(LOCATIONS)}")
    if not (0.5 <= duration_s <= MAX_DURATION_S):
        raise DataError(f"recording duration must be 0.5-{MAX_DURATION_S:g} s, got {duration_s}")
    if not (4000 <= sample_rate <= 192000):
        raise DataError(f"sample rate must be 4000-192000 Hz, got {sample_rate}")
    if patient is None:
        patient = draw_patient(rng, condition)
    plans = plan_cycles(rng, patient, duration_s)
    audio = render(rng, patient, plans, device, location, duration_s)
    if sample_rate != SYNTH_RATE:
        audio = resample(audio, SYNTH_RATE, sample_rate)
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return SimulatedRecording(audio, sample_rate, patient, device, location, plans)


def simulate_recording(
    rng_or_seed: np.random.Generator | int | None, condition: str, device: str, duration_s: float,
    sample_rate: int = SYNTH_RATE, *, location: str = "Al", patient: Patient | None = None,
) -> tuple[np.ndarray, list[Cycle]]:
    """Simulate one recording of ``duration_s`` seconds at ``sample_rate`` Hz.

    Returns float32 mono audio and the ground-truth ICBHI cycles (seconds; crackles/wheezes
    flag = 1 iff such events were placed in the cycle). ``patient`` fixes per-patient traits
    across recordings; by default one is drawn for ``condition``.
    """
    rec = simulate_recording_detailed(rng_or_seed, condition, device, duration_s, sample_rate,
                                      location=location, patient=patient)
    return rec.audio, rec.cycles


# --------------------------------------------------------------------------- dataset


def allocate_conditions(n_patients: int, rng: np.random.Generator) -> list[str]:
    """Conditions for n patients in proportion to their shares (largest remainder), shuffled."""
    names = list(CONDITIONS)
    shares = np.array([CONDITIONS[c].share for c in names])
    exact = shares / shares.sum() * n_patients
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n_patients - counts.sum()]:
        counts[i] += 1
    out = [name for name, k in zip(names, counts) for _ in range(k)]
    return [out[i] for i in rng.permutation(len(out))]


def stratified_test_patients(conditions: list[str], test_fraction: float, rng: np.random.Generator) -> set[int]:
    """Indices of test patients, evenly spaced along the condition-sorted list (stratified by condition).

    Takes round(test_fraction * n) patients, at least one and leaving at least one for
    training whenever ``test_fraction > 0`` and there are two or more patients.
    """
    n = len(conditions)
    if test_fraction <= 0.0 or n < 2:
        return set()
    k = int(np.clip(round(test_fraction * n), 1, n - 1))
    order = sorted(range(n), key=lambda i: (conditions[i], rng.random()))
    offset = rng.random()
    return {order[int((j + offset) * n / k)] for j in range(k)}


def _leftover(rel: Path) -> bool:
    """A temporary an interrupted write left (runtime/outputs.py names), at any depth."""
    return any(is_temporary_name(part) for part in rel.parts)


def _prepare_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Create ``out_dir`` (its parent must exist), or accept it empty.

    A non-empty one is refused, unless ``overwrite`` and it holds only a previous simulation's
    files (listed in its simulation.json), which are then deleted. Nothing else is ever deleted.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    out_dir = check_output_dir(out_dir)
    if not out_dir.exists():
        out_dir.mkdir()
        return
    present = sorted(p for p in out_dir.rglob("*") if not p.is_dir())
    if not present:
        return
    meta_path = out_dir / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        ours = isinstance(meta, dict) and meta.get("generator") == GENERATOR and isinstance(meta.get("files"), list)
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise DataError(f"{out_dir}: directory is not empty and is not a previous simulation output; "
                        "choose an empty or new directory")
    if not overwrite:
        raise DataError(f"{out_dir}: is not empty (a previous simulation); choose an empty or new directory, "
                        "or pass --overwrite to replace it")
    listed = {str(f) for f in meta["files"]} | {META_FILE}
    for p in present:
        rel = p.relative_to(out_dir)
        if rel.as_posix() not in listed and not _leftover(rel):
            raise DataError(f"{p}: not written by the simulator; refusing to overwrite {out_dir}")
    for p in present:
        p.unlink()
    for d in sorted((d for d in out_dir.rglob("*") if d.is_dir()), reverse=True):
        if _leftover(d.relative_to(out_dir)):
            d.rmdir()


def _file_plan(n_patients: int, recordings_per_patient: int, devices: list[str]) -> list[tuple[int, int, str, str]]:
    """(patient index, recording index, stem, device) for every recording."""
    out = []
    for i in range(n_patients):
        for r in range(recordings_per_patient):
            index = f"{1 + r // len(LOCATIONS)}b1"
            location = LOCATIONS[(i + r) % len(LOCATIONS)]
            out.append((i, r, f"{FIRST_PATIENT + i}_{index}_{location}_sc_{devices[i]}", devices[i]))
    return out


def simulate_dataset(
    out_dir: str | os.PathLike, n_patients: int = 16, recordings_per_patient: int = 3, duration_s: float = 20.0,
    seed: int = 0, test_fraction: float = 0.4, overwrite: bool = False,
) -> dict[str, Any]:
    """Write a simulated ICBHI-layout dataset to ``out_dir`` and return its summary.

    Files: ``audio_and_txt_files/<patient>_<index>_<loc>_sc_<device>.wav`` (16-bit PCM; 16 kHz,
    or 4 kHz for Litt3200 as in the real database) with ICBHI ``.txt`` annotations,
    ``ICBHI_challenge_train_test.txt`` (patient-level, stratified by condition),
    ``patient_diagnosis.csv`` and ``simulation.json`` (seed, parameters, class counts, files).
    Patients are numbered from 301. ``duration_s`` is per recording, in seconds. Refuses a
    non-empty ``out_dir``; with ``overwrite`` a previous simulation there (and only that) is replaced.
    """
    if not (isinstance(n_patients, (int, np.integer)) and n_patients >= 1):
        raise DataError(f"n_patients must be a positive integer, got {n_patients!r}")
    if not (isinstance(recordings_per_patient, (int, np.integer)) and recordings_per_patient >= 1):
        raise DataError(f"recordings_per_patient must be a positive integer, got {recordings_per_patient!r}")
    if not (MIN_DURATION_S <= duration_s <= MAX_DURATION_S):
        raise DataError(f"duration_s must be {MIN_DURATION_S:g}-{MAX_DURATION_S:g} s (a few breaths), "
                        f"got {duration_s}")
    if not (0.0 <= test_fraction < 1.0):
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if not (isinstance(seed, (int, np.integer)) and seed >= 0):
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    seed, n_patients, recordings_per_patient = int(seed), int(n_patients), int(recordings_per_patient)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    (out / AUDIO_DIR).mkdir(exist_ok=True)

    top = np.random.default_rng([seed, 0])
    conditions = allocate_conditions(n_patients, top)
    test_idx = stratified_test_patients(conditions, test_fraction, top)
    names = list(DEVICE_SHARES)
    shares = np.array([DEVICE_SHARES[d] for d in names])
    devices = [names[k] for k in top.choice(len(names), size=n_patients, p=shares / shares.sum())]
    patients = [draw_patient(np.random.default_rng([seed, 1, i]), c) for i, c in enumerate(conditions)]
    files = _file_plan(n_patients, recordings_per_patient, devices)

    params = {"n_patients": n_patients, "recordings_per_patient": recordings_per_patient,
              "duration_s": float(duration_s), "test_fraction": float(test_fraction)}
    listing = [f"{AUDIO_DIR}/{stem}{ext}" for _, _, stem, _ in files for ext in (".wav", ".txt")]
    listing += [SPLIT_FILENAME, DIAGNOSIS_FILE]
    meta: dict[str, Any] = {"generator": GENERATOR, "format": FORMAT_VERSION, "complete": False, "seed": seed,
                            "parameters": params, "files": listing}
    # Written first so that an interrupted run is still recognised (and replaced) next time.
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")

    counts = {s: [0] * len(CLASSES) for s in ("all", "train", "test")}
    split_lines = []
    for i, r, stem, device in files:
        split = "test" if i in test_idx else "train"
        location = stem.split("_")[2]
        rec = simulate_recording_detailed(np.random.default_rng([seed, 2, i, r]), conditions[i], device,
                                          duration_s, location=location, patient=patients[i])
        rate = DEVICES[device].file_rate
        audio = rec.audio if rate == SYNTH_RATE else np.clip(resample(rec.audio, SYNTH_RATE, rate), -1.0, 1.0)
        write_wav(out / AUDIO_DIR / f"{stem}.wav", audio, rate)
        cycles = rec.cycles
        atomic_write_text(out / AUDIO_DIR / f"{stem}.txt",
                    "".join(f"{c.start_s:.3f}\t{c.end_s:.3f}\t{c.crackles}\t{c.wheezes}\n" for c in cycles))
        for c in cycles:
            counts["all"][c.label] += 1
            counts[split][c.label] += 1
        split_lines.append(f"{stem}\t{split}\n")
    atomic_write_text(out / SPLIT_FILENAME, "".join(split_lines))
    atomic_write_text(out / DIAGNOSIS_FILE, "ID,CLASS\n" + "".join(
        f"{FIRST_PATIENT + i},{CONDITIONS[c].diagnosis}\n" for i, c in enumerate(conditions)))

    meta.update({
        "complete": True,
        "class_counts": {s: dict(zip(CLASSES, v)) for s, v in counts.items()},
        "n_cycles": int(sum(counts["all"])),
        "n_recordings": len(files),
        "patients": [{"patient": FIRST_PATIENT + i, "condition": conditions[i],
                      "diagnosis": CONDITIONS[conditions[i]].diagnosis, "device": devices[i],
                      "split": "test" if i in test_idx else "train"} for i in range(n_patients)],
    })
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    return meta
