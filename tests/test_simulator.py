"""The respiratory-sound simulator: physiology, ground-truth labels, difficulty, dataset files."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import soundfile as sf

from stethoedge.runtime.errors import DataError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.features import log_mel_fbank
from stethoedge.runtime.labels import CLASSES
from stethoedge.runtime.padding import cyclic_pad
from stethoedge.train.icbhi import LOCATIONS, list_recordings, load_cycles, patient_holdout, read_split
from stethoedge.train.simulator import (
    CONDITIONS,
    DEVICES,
    Wheeze,
    allocate_conditions,
    crackle_waveform,
    device_filter,
    draw_patient,
    heart_sound,
    plan_cycles,
    simulate_dataset,
    simulate_recording,
    simulate_recording_detailed,
    wheeze_waveform,
)

SR = 16000


# --------------------------------------------------------------------------- measuring instruments


def tonality(audio: np.ndarray, low_hz: float = 150.0, high_hz: float = 1000.0) -> float:
    """Peak of a tone above its spectral neighbourhood (log10 power), persisting ~150 ms, in a band."""
    f, _, z = scipy.signal.stft(audio, SR, nperseg=1024, noverlap=768)
    rows = (f >= low_hz - 150) & (f <= high_hz + 150)  # the band plus the median's reach
    level = np.log10(scipy.ndimage.uniform_filter1d(np.abs(z[rows]) ** 2, 5, axis=1) + 1e-20)
    peak = level - scipy.ndimage.median_filter(level, size=(17, 1), mode="nearest")
    f = f[rows]
    return float(peak[(f >= low_hz) & (f <= high_hz)].max())


def transient_count(audio: np.ndarray) -> int:
    """Milliseconds in which high-passed (>150 Hz) 2 ms energy exceeds 12x its 100 ms running median."""
    hp = scipy.signal.sosfilt(scipy.signal.butter(4, 150, "highpass", fs=SR, output="sos"), audio)
    energy = np.convolve(hp**2, np.ones(32) / 32, mode="same")[::16]
    return int(np.sum(energy > 12 * scipy.ndimage.median_filter(energy, 101)))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(np.mean(pos > neg) + 0.5 * np.mean(pos == neg))


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-2) -> np.ndarray:
    """Linear probe: standardised features, ridge regression onto one-hot classes, argmax."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    y = np.eye(len(CLASSES))[y_train]
    w = np.linalg.solve(a.T @ a + l2 * len(a) * np.eye(a.shape[1]), a.T @ (y - y.mean(0)))
    return (b @ w + y.mean(0)).argmax(1)


def cut(audio: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return audio[int(round(start_s * SR)): int(round(end_s * SR))]


@pytest.fixture(scope="module")
def population():
    """48 patients, one 10 s recording each: ~150 cycles over every condition, device and location."""
    conditions = allocate_conditions(48, np.random.default_rng(123))
    devices = list(DEVICES)
    return [simulate_recording_detailed(np.random.default_rng([123, i]), c, devices[i % 4], 10.0,
                                        location=LOCATIONS[i % 7]) for i, c in enumerate(conditions)]


# --------------------------------------------------------------------------- determinism and API


def test_simulate_recording_is_deterministic() -> None:
    a1, c1 = simulate_recording(7, "copd", "Meditron", 12.0)
    a2, c2 = simulate_recording(np.random.default_rng(7), "copd", "Meditron", 12.0)
    a3, _ = simulate_recording(8, "copd", "Meditron", 12.0)
    assert a1.dtype == np.float32 and a1.shape == (12 * SR,)
    assert np.array_equal(a1, a2) and c1 == c2
    assert not np.array_equal(a1, a3)
    assert np.max(np.abs(a1)) <= 10 ** (-3 / 20) + 1e-6 and np.all(np.isfinite(a1))


def test_simulate_recording_other_rate_and_bad_arguments() -> None:
    audio, cycles = simulate_recording(1, "asthma", "Litt3200", 10.0, sample_rate=4000)
    assert audio.shape == (40000,) and cycles
    with pytest.raises(DataError, match="unknown condition 'flu'"):
        simulate_recording(1, "flu", "Meditron", 10.0)
    with pytest.raises(DataError, match="unknown device"):
        simulate_recording(1, "copd", "iPhone", 10.0)
    with pytest.raises(DataError, match="chest location"):
        simulate_recording(1, "copd", "Meditron", 10.0, location="Zz")


# --------------------------------------------------------------------------- physiology


def test_breathing_rate_ie_ratio_and_pause() -> None:
    rng = np.random.default_rng(0)
    for condition in CONDITIONS:
        for _ in range(20):
            patient = draw_patient(rng, condition)
            assert 10 <= patient.rate_bpm <= 30
            plans = [p for p in plan_cycles(rng, patient, 30.0) if p.annotated]
            assert plans
            for p in plans:
                assert 2.0 <= p.end_s - p.start_s <= 6.0  # 10-30 breaths/min
                assert 1.5 <= p.exp_s / p.insp_s <= 2.0
                assert p.end_s - p.exp_end_s > 0.1  # a pause before the next breath
            starts = [p.start_s for p in plans]
            assert all(b.start_s == pytest.approx(a.end_s) for a, b in zip(plans, plans[1:]))
            assert starts[0] >= 0 and plans[-1].end_s <= 30.0


def test_breath_sound_band_and_expiration_quieter(population) -> None:
    fractions, ratios = [], []
    for rec in population:
        if rec.device != "AKGC417L" or rec.location == "Tc":
            continue
        for p in rec.plans:
            if not p.annotated or p.crackles or p.wheezes:
                continue
            insp = cut(rec.audio, p.start_s + 0.2 * p.insp_s, p.start_s + 0.8 * p.insp_s)
            f, psd = scipy.signal.welch(insp, SR, nperseg=2048)
            fractions.append(psd[(f >= 100) & (f <= 1000)].sum() / psd[f >= 20].sum())
            exp = cut(rec.audio, p.exp_start_s, p.exp_end_s)
            ratios.append(np.sqrt(np.mean(exp**2)) / np.sqrt(np.mean(cut(rec.audio, p.start_s, p.exp_start_s) ** 2)))
    assert len(fractions) >= 10
    assert np.median(fractions) > 0.7
    assert np.median(ratios) < 0.8


def test_event_waveforms() -> None:
    rng = np.random.default_rng(3)
    for kind, (lo_ms, hi_ms), (lo_hz, hi_hz) in (("fine", (4, 7), (300, 1000)), ("coarse", (12, 20), (100, 400))):
        for _ in range(10):
            x = crackle_waveform(rng, kind)
            assert lo_ms <= 1000 * x.shape[0] / SR <= hi_ms
            assert np.max(np.abs(x)) == pytest.approx(1.0)
            peak = int(np.argmax(np.abs(x)))
            assert peak < 0.3 * x.shape[0]  # the explosive deflection comes first
            spectrum = np.abs(np.fft.rfft(x, 8192))
            assert lo_hz <= np.argmax(spectrum) * SR / 8192 <= hi_hz
    w = Wheeze(0.0, 0.3, 400.0, 350.0, 0.5, (1.0, 0.4, 0.1), "expiration")
    x = wheeze_waveform(rng, w)
    assert x.shape[0] == int(0.3 * SR)
    spectrum = np.abs(np.fft.rfft(x))
    f = np.fft.rfftfreq(x.shape[0], 1 / SR)
    assert 340 <= f[np.argmax(spectrum)] <= 410
    assert spectrum[(f > 700) & (f < 820)].max() > 5 * np.median(spectrum)  # 2nd harmonic
    assert abs(x[0]) < 1e-3 and abs(x[-1]) < 0.05  # onset/offset ramps
    for first in (True, False):
        x = heart_sound(rng, first)
        spectrum = np.abs(np.fft.rfft(x, 16384))
        f = np.fft.rfftfreq(16384, 1 / SR)
        assert (spectrum[(f >= 20) & (f <= 150)] ** 2).sum() > 0.9 * (spectrum**2).sum()


def test_device_responses_differ() -> None:
    rng = np.random.default_rng(0)

    def gain_db(device: str, freq_hz: float) -> float:
        _, h = scipy.signal.sosfreqz(device_filter(DEVICES[device], rng), worN=[freq_hz], fs=SR)
        return float(20 * np.log10(np.abs(h[0])))

    assert gain_db("AKGC417L", 3000) > -1 and gain_db("AKGC417L", 300) > -1
    assert gain_db("LittC2SE", 3000) < -30 and gain_db("Litt3200", 3000) < -10
    assert gain_db("Litt3200", 10) < -10 and gain_db("Meditron", 20) < -10
    for device in DEVICES:
        assert gain_db(device, 300) > -3  # the lung-sound band passes everywhere


def test_event_placement_follows_physiology(population) -> None:
    fine, coarse, wheezes = [], [], []
    for rec in population:
        for p in rec.plans:
            for k in p.crackles:
                assert p.start_s < k.time_s < p.exp_end_s
                phase = (k.time_s - p.start_s) / p.insp_s
                (fine if k.kind == "fine" else coarse).append(phase)
            assert not p.crackles or 2 <= len(p.crackles) <= 12
            for w in p.wheezes:
                assert w.duration_s >= 0.1
                assert 100 <= min(w.f_start_hz, w.f_end_hz) <= max(w.f_start_hz, w.f_end_hz) <= 1000
                assert p.start_s < w.start_s and w.start_s + w.duration_s < p.exp_end_s
                wheezes.append(w.phase == "expiration" and w.start_s >= p.exp_start_s)
    fine, coarse = np.array(fine), np.array(coarse)
    assert fine.size > 20 and coarse.size > 20
    assert np.all((fine >= 0.45) & (fine <= 1.0))  # late inspiratory
    assert np.mean(coarse < 0.5) > 0.5 and np.mean(coarse > 1.0) > 0.15  # early inspiratory, some expiratory
    assert len(wheezes) > 15 and np.mean(wheezes) >= 0.7  # mostly expiratory


# --------------------------------------------------------------------------- labels are audible


def _cycle_measures(population):
    rows = []
    for rec in population:
        for p in rec.plans:
            if p.annotated:
                rows.append((p, rec.audio))
    return rows


def test_wheeze_cycles_have_a_tonal_peak_in_expiration(population) -> None:
    wheeze, normal = [], []
    for p, audio in _cycle_measures(population):
        exp = cut(audio, p.exp_start_s, p.exp_end_s)
        if p.wheezes and all(w.phase == "expiration" for w in p.wheezes):
            wheeze.append(tonality(exp))
        elif not p.wheezes and not p.crackles:
            normal.append(tonality(exp))
    assert len(wheeze) >= 15 and len(normal) >= 40
    assert auc(np.array(wheeze), np.array(normal)) > 0.8
    assert np.median(wheeze) > np.median(normal) + 0.5  # > 5 dB more tonal, typically
    # Faint wheezes exist: not every wheeze cycle beats the loudest normal one.
    assert np.min(wheeze) < np.max(normal)


def test_crackle_cycles_have_more_transients(population) -> None:
    crackle, normal = [], []
    for p, audio in _cycle_measures(population):
        n = transient_count(cut(audio, p.start_s, p.end_s))
        if p.crackles and not p.wheezes:
            crackle.append(n)
        elif not p.wheezes:
            normal.append(n)
    assert len(crackle) >= 20 and len(normal) >= 40
    assert np.mean(crackle) > 3 * np.mean(normal) + 5
    assert auc(np.array(crackle), np.array(normal)) > 0.85
    assert np.min(crackle) <= np.percentile(normal, 90)  # some crackle cycles are faint


def test_mean_logmel_linear_probe_is_not_trivial(population) -> None:
    """A linear probe on each cycle's mean log-mel does not separate the classes on held-out patients,
    while a linear probe on two event measures does well above the majority baseline: the labels are
    learnable from the sound events, not from a global spectral fingerprint."""
    spec = FeatureSpec()
    mean_logmel, events, labels, groups = [], [], [], []
    for i, rec in enumerate(population):
        for c in rec.cycles:
            audio = cut(rec.audio, c.start_s, c.end_s)
            mean_logmel.append(log_mel_fbank(cyclic_pad(audio, spec.window_samples), spec).mean(0))
            events.append([tonality(audio), np.log1p(transient_count(audio))])
            labels.append(c.label)
            groups.append(i)
    x, e, y, g = np.array(mean_logmel), np.array(events), np.array(labels), np.array(groups)
    assert 120 <= len(y) <= 200
    test = g % 3 == 0  # 16 held-out patients
    majority = float(np.mean(y[test] == np.bincount(y[~test]).argmax()))
    acc_mel = float(np.mean(ridge_probe(x[~test], y[~test], x[test]) == y[test]))
    e2 = np.hstack([e, e[:, :1] * e[:, 1:]])
    acc_events = float(np.mean(ridge_probe(e2[~test], y[~test], e2[test], l2=1e-3) == y[test]))
    print(f"held-out accuracy: majority {majority:.2f}, mean log-mel probe {acc_mel:.2f}, event probe {acc_events:.2f}")
    assert 0.25 < acc_mel < 0.99
    assert 0.4 < acc_events < 0.99
    assert acc_events > majority + 0.1


# --------------------------------------------------------------------------- class mix


def test_class_mix_is_imbalanced_like_icbhi() -> None:
    rng = np.random.default_rng(11)
    counts = np.zeros(len(CLASSES))
    for condition in allocate_conditions(300, rng):
        patient = draw_patient(rng, condition)
        for p in plan_cycles(rng, patient, 20.0):
            if p.annotated:
                counts[p.cycle.label] += 1
    share = counts / counts.sum()
    assert 0.42 < share[0] < 0.60  # normal (ICBHI 53 %)
    assert 0.20 < share[1] < 0.35  # crackle (27 %)
    assert 0.08 < share[2] < 0.20  # wheeze (13 %)
    assert 0.03 < share[3] < 0.12  # both (7 %)


def test_allocate_conditions_is_proportional() -> None:
    got = allocate_conditions(100, np.random.default_rng(0))
    for name, prof in CONDITIONS.items():
        assert got.count(name) == pytest.approx(100 * prof.share / sum(p.share for p in CONDITIONS.values()), abs=1)


# --------------------------------------------------------------------------- dataset on disk


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_is_byte_deterministic(tmp_path: Path) -> None:
    kwargs = dict(n_patients=3, recordings_per_patient=1, duration_s=8.0)
    simulate_dataset(tmp_path / "a", seed=4, **kwargs)
    simulate_dataset(tmp_path / "b", seed=4, **kwargs)
    simulate_dataset(tmp_path / "c", seed=5, **kwargs)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    wavs = [k for k in a if k.endswith(".wav")]
    assert len(wavs) == 3
    assert any(k not in c or a[k] != c[k] for k in wavs)


def test_dataset_round_trips_through_the_icbhi_loader(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    summary = simulate_dataset(out, n_patients=6, recordings_per_patient=2, duration_s=10.0, seed=3)
    assert json.loads((out / "simulation.json").read_text()) == summary
    assert summary["complete"] and summary["seed"] == 3 and summary["n_recordings"] == 12
    recs = list_recordings(out)
    assert len(recs) == 12
    assert all(r.patient >= 301 for r in recs)
    assert {r.patient: r.split for r in recs} == {p["patient"]: p["split"] for p in summary["patients"]}
    assert {r.split for r in recs} == {"train", "test"}
    assert read_split(out / "ICBHI_challenge_train_test.txt") == {r.stem: r.split for r in recs}
    counts = {s: [0] * 4 for s in ("all", "train", "test")}
    for r in recs:
        info = sf.info(str(r.wav_path))
        assert info.subtype == "PCM_16" and info.channels == 1
        assert info.samplerate == (4000 if r.info.device == "Litt3200" else 16000)
        assert info.frames == 10 * info.samplerate
        cycles = load_cycles(r)
        assert [y for _, y in cycles] == [c.label for c in r.cycles()]
        for (audio, y), c in zip(cycles, r.cycles()):
            assert abs(audio.shape[0] - c.duration_s * SR) <= 1
            counts["all"][y] += 1
            counts[r.split][y] += 1
    assert summary["class_counts"] == {s: dict(zip(CLASSES, v)) for s, v in counts.items()}
    diagnosis = (out / "patient_diagnosis.csv").read_text().splitlines()
    assert diagnosis[0] == "ID,CLASS" and len(diagnosis) == 7
    assert {line.split(",")[1] for line in diagnosis[1:]} <= {p.diagnosis for p in CONDITIONS.values()}
    train, val = patient_holdout(recs, fraction=0.25)
    assert val and {r.patient for r in train}.isdisjoint({r.patient for r in val})


def test_dataset_refuses_foreign_directories_and_replaces_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not a previous simulation output"):
        simulate_dataset(foreign, n_patients=2, recordings_per_patient=1, duration_s=8.0)
    assert (foreign / "thesis.tex").read_text() == "precious"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        simulate_dataset(afile)

    out = tmp_path / "sim"
    simulate_dataset(out, n_patients=4, recordings_per_patient=2, duration_s=8.0)
    with pytest.raises(DataError, match="not empty.*--overwrite"):  # replaced only when asked
        simulate_dataset(out, n_patients=2, recordings_per_patient=1, duration_s=8.0)
    assert len(list((out / "audio_and_txt_files").glob("*.wav"))) == 8
    simulate_dataset(out, n_patients=2, recordings_per_patient=1, duration_s=8.0, overwrite=True)  # no stale files
    assert len(list((out / "audio_and_txt_files").glob("*.wav"))) == 2
    (out / "audio_and_txt_files" / "extra.wav").write_bytes(b"")
    with pytest.raises(DataError, match="extra.wav: not written by the simulator"):
        simulate_dataset(out, n_patients=2, recordings_per_patient=1, duration_s=8.0, overwrite=True)
    for bad in (dict(n_patients=0), dict(duration_s=3.0), dict(test_fraction=1.0), dict(recordings_per_patient=0),
                dict(seed=-1)):
        with pytest.raises(DataError):
            simulate_dataset(tmp_path / "new", **bad)


def test_default_dataset_is_fast_and_imbalanced(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    summary = simulate_dataset(tmp_path / "default")
    elapsed = time.perf_counter() - t0
    assert elapsed < 30.0
    counts = summary["class_counts"]["all"]
    assert summary["n_recordings"] == 48 and 200 <= summary["n_cycles"] <= 330
    assert counts["normal"] > counts["crackle"] > counts["both"] > 0 and counts["wheeze"] > counts["both"]
    assert 0.35 < counts["normal"] / summary["n_cycles"] < 0.65
    for split in ("train", "test"):
        assert all(v > 0 for v in summary["class_counts"][split].values())
    patients = summary["patients"]
    assert [p["patient"] for p in patients] == list(range(301, 317))
    assert sum(p["split"] == "test" for p in patients) == round(0.4 * 16)
