"""The signal-quality gate (runtime/quality.py): features on real audio, the exact rules, the file
format, the bundle section, and the runtime's "poor_quality" decisions."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stethoedge.models import default_bundle
from stethoedge.runtime.bundle import load_bundle, sha256_file
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.quality import FEATURE_NAMES, QUALITY_REASONS, QualityGate, quality_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPR = SHARED / "data" / "sprsound"
ICBHI_WAV = SHARED / "data" / "icbhi_sample" / "audio_and_txt_files" / "104_1b1_Ll_sc_Litt3200.wav"
WIN = 128000
needs_spr = pytest.mark.skipif(not (SPR / "test2022_inter").is_dir(), reason=f"SPRSound not found at {SPR}")


def _gate(reject_as: str | None = None) -> QualityGate:
    """A gate whose learned part always passes (or always rejects as ``reject_as``): tests the rules/plumbing."""
    classes = ("ok", "unknown", "friction")
    d = len(FEATURE_NAMES)
    intercept = np.array([5.0, 0.0, 0.0]) if reject_as is None else np.array([-5.0, 0.0, 5.0])
    if reject_as is not None:
        classes = ("ok", "unknown", reject_as)
    return QualityGate(classes, np.zeros(d), np.ones(d), np.zeros((3, d)), intercept, 0.5, "test")


def _real_window(path: Path) -> tuple[np.ndarray, int]:
    from stethoedge.runtime.audio_io import load_audio
    from stethoedge.runtime.padding import cyclic_pad

    a = load_audio(path, 16000).samples[:WIN]
    return cyclic_pad(a, WIN), int(min(a.shape[0], WIN))


@needs_spr
def test_features_on_real_audio_are_finite_and_react_to_level_and_band() -> None:
    audio, n = _real_window(sorted((SPR / "test2022_inter").glob("*.flac"))[0])
    f = quality_features(audio, n)
    assert set(f) == set(FEATURE_NAMES) and all(np.isfinite(v) for v in f.values())
    quiet = quality_features(audio * 0.01, n)
    assert quiet["rms_db"] == pytest.approx(f["rms_db"] - 40, abs=0.01)  # level in dB
    assert quiet["low_ratio_db"] == pytest.approx(f["low_ratio_db"], abs=1e-6)  # ratios are level-free
    hum = audio + 0.5 * np.sin(2 * np.pi * 50 * np.arange(WIN) / 16000).astype(np.float32)
    assert quality_features(hum, n)["very_low_ratio_db"] > max(-0.5, f["very_low_ratio_db"])  # hum: nearly all < 100 Hz


def test_silence_and_clipping_are_exact_rules() -> None:
    gate = _gate()
    v = gate.assess(np.zeros(WIN, np.float32))
    assert (v.ok, v.reason, v.score) == (False, "silence", 0.0)
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(WIN)).astype(np.float32)
    assert gate.assess(noise).reason == "ok"
    clipped = np.clip(noise * 60, -1.0, 1.0)
    v = gate.assess(clipped)
    assert (v.ok, v.reason) == (False, "clipping") and v.details["clip_ratio"] > 0.002
    # a loud but unclipped window is not "clipping"; nor is a single full-scale sample
    one = noise.copy()
    one[100] = 1.0
    assert gate.assess(one).reason == "ok"
    # only the real samples count: silence followed by cyclic padding of nothing else
    padded = np.concatenate([np.zeros(8000, np.float32), noise[8000:]])
    assert gate.assess(padded, available=8000).reason == "silence"


def test_gate_round_trips_npz_and_json_and_refuses_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    d = len(FEATURE_NAMES)
    gate = QualityGate(("ok", "friction", "speech"), rng.normal(size=d), rng.uniform(0.5, 2, d),
                       rng.normal(size=(3, d)), rng.normal(size=3), 0.42, "unit test")
    x = (0.05 * rng.standard_normal(WIN)).astype(np.float32)
    for name in ("g.npz", "g.json"):
        back = QualityGate.from_file(gate.to_file(tmp_path / name))
        assert back.classes == gate.classes and back.threshold == 0.42 and back.fitted_on == "unit test"
        np.testing.assert_allclose(back.probabilities(quality_features(x)), gate.probabilities(quality_features(x)),
                                   atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({**gate.to_dict(), "threshold": 2.0}))
    with pytest.raises(BundleError, match="threshold"):
        QualityGate.from_file(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({**gate.to_dict(), "classes": ["ok", "cough", "speech"]}))
    with pytest.raises(BundleError, match="classes"):
        QualityGate.from_file(tmp_path / "bad2.json")
    (tmp_path / "bad3.npz").write_bytes(b"not an npz")
    with pytest.raises(BundleError, match="unreadable"):
        QualityGate.from_file(tmp_path / "bad3.npz")
    assert set(QUALITY_REASONS) >= set(gate.classes)


def test_features_version_2_is_recorded_and_version_1_gates_keep_their_features(tmp_path: Path) -> None:
    """A gate computes the features it was fitted on: files without ``features_version`` are version 1."""
    from stethoedge.runtime.quality import FEATURE_VERSIONS, quality_features_v1

    rng = np.random.default_rng(2)
    d = len(FEATURE_NAMES)
    gate = QualityGate(("ok", "friction"), np.zeros(d), np.ones(d), rng.normal(size=(2, d)), np.zeros(2), 0.5, "t")
    assert gate.features_version == 2 and FEATURE_VERSIONS[2] is quality_features
    assert QualityGate.from_file(gate.to_file(tmp_path / "g.npz")).features_version == 2
    x = (0.05 * rng.standard_normal(WIN)).astype(np.float32)
    old = {k: v for k, v in gate.to_dict().items() if k != "features_version"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    v1 = QualityGate.from_file(tmp_path / "old.json")
    assert v1.features_version == 1 and v1.features(x) == quality_features_v1(x)
    assert v1.features(x) != gate.features(x)  # the two versions really differ (spectra on other frames)
    (tmp_path / "future.json").write_text(json.dumps({**gate.to_dict(), "features_version": 3}))
    with pytest.raises(BundleError, match="features_version 3"):
        QualityGate.from_file(tmp_path / "future.json")


@pytest.mark.parametrize("available", [1, 2, 300, 512, 700, 2048, 8191, WIN - 1, WIN])
def test_features_are_finite_for_every_available_length(available: int) -> None:
    rng = np.random.default_rng(available)
    x = (0.05 * rng.standard_normal(WIN)).astype(np.float32)
    f = quality_features(x, available)
    assert set(f) == set(FEATURE_NAMES) and all(np.isfinite(v) for v in f.values()), f
    # only the real samples count: what follows them does not change the features
    y = x.copy()
    y[available:] = 0.9
    assert quality_features(y, available) == f


def _copy_with_gate(tmp_path: Path, gate: QualityGate) -> Path:
    b = tmp_path / "bundle"
    shutil.copytree(default_bundle(), b)
    gate.to_file(b / "quality.npz")
    m = json.loads((b / "manifest.json").read_text())
    m["quality"] = {"file": "quality.npz", "sha256": sha256_file(b / "quality.npz"), "fitted_on": "test"}
    m.pop("confidence", None)
    (b / "manifest.json").write_text(json.dumps(m))
    return b


def test_quality_section_is_validated(tmp_path: Path) -> None:
    b = _copy_with_gate(tmp_path, _gate())
    assert load_bundle(b).quality is not None
    m = json.loads((b / "manifest.json").read_text())
    (b / "quality.npz").write_bytes((b / "quality.npz").read_bytes() + b"x")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(b)
    (b / "quality.npz").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(b)
    for bad in ({"file": "../quality.npz", "sha256": "0" * 64}, {"file": "quality.npz"}, "quality.npz"):
        (b / "manifest.json").write_text(json.dumps({**m, "quality": bad}))
        with pytest.raises(BundleError, match="quality"):
            load_bundle(b)


@pytest.mark.skipif(not ICBHI_WAV.is_file(), reason=f"ICBHI sample not found at {ICBHI_WAV}")
def test_runtime_labels_rejected_windows_poor_quality_counts_them_and_the_smoother_ignores_them(tmp_path: Path) -> None:
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource
    from stethoedge.runtime.stream import StreamConfig, StreamEngine

    clf = Classifier.open(_copy_with_gate(tmp_path, _gate(reject_as="knock")))
    engine = StreamEngine(clf, StreamConfig(hop_s=4.0))
    results = list(engine.run(FileSource(str(ICBHI_WAV))))
    assert results and all(r.label == "poor_quality" and r.quality == "knock" and r.abstained
                           and r.abstain_reason == "poor_quality" and r.model_label in clf.bundle.labels
                           and r.quality_score is not None and r.quality_score < 0.5 for r in results)
    assert engine.stats.poor_quality == engine.stats.abstained == engine.stats.windows == len(results)
    assert all(r.smoothed_label is None for r in results)  # nothing usable was smoothed


@pytest.mark.skipif(not ICBHI_WAV.is_file(), reason=f"ICBHI sample not found at {ICBHI_WAV}")
def test_classify_json_lines_carry_the_decision_fields(tmp_path: Path) -> None:
    b = _copy_with_gate(tmp_path, _gate(reject_as="speech"))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "stethoedge", "classify", str(b), str(ICBHI_WAV), "--jsonl", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and all(r["label"] == "poor_quality" and r["quality"] == "speech" and r["abstained"]
                           and r["model_label"] in ("normal", "crackle", "wheeze", "both") for r in records)
    assert f"{len(records)} abstained ({len(records)} poor quality, 0 uncertain)" in proc.stdout
    assert "abstained: quality speech" in proc.stdout


def _shipped_gate() -> QualityGate:
    gate = load_bundle(default_bundle()).quality
    assert gate is not None, "the shipped bundle lost its quality gate (manifest 'quality')"
    return gate


@needs_spr
def test_shipped_gate_rejects_real_poor_quality_records_more_than_good_ones() -> None:
    """Real labels of unseen patients (test2022_inter): the first 15 Poor Quality and 15 Normal records."""
    from stethoedge.train.sprsound import list_records

    gate = _shipped_gate()
    recs = list_records(SPR, ("test2022_inter",))
    poor = [r for r in recs if r.record_label == "Poor Quality"][:15]
    good = [r for r in recs if r.record_label == "Normal"][:15]
    rate = {}
    for name, group in (("poor", poor), ("good", good)):
        rate[name] = np.mean([not gate.assess(*_real_window(r.audio_path)).ok for r in group])
    assert rate["poor"] >= rate["good"] + 0.3, rate
    assert rate["good"] <= 0.3, rate


@needs_spr
def test_shipped_gate_flags_speech_added_to_a_good_recording() -> None:
    from stethoedge.train.quality import add_artefact, speech_bank

    gate = _shipped_gate()
    from stethoedge.train.sprsound import list_records

    good = [r for r in list_records(SPR, ("test2022_inter",)) if r.record_label == "Normal"]
    audio, n = next(w for w in (_real_window(r.audio_path) for r in good) if w[1] == WIN)
    bank = speech_bank(["Let me listen to your back now"], seed=5)
    rng = np.random.default_rng(5)
    flagged = [not gate.assess(add_artefact(audio, "speech", rng, bank)).ok for _ in range(5)]
    assert sum(flagged) >= 3


def test_task21_metric_and_its_trivial_baseline() -> None:
    from stethoedge.train.quality import task21

    truth = ["Normal"] * 4 + ["Adventitious"] * 3 + ["Poor Quality"]
    assert task21(truth, ["Normal"] * 8)["score"] == pytest.approx(0.25)  # Se 0, Sp 1
    pred = ["Normal", "Normal", "Normal", "Poor Quality", "Adventitious", "Adventitious", "Normal", "Poor Quality"]
    m = task21(truth, pred)
    assert (m["se"], m["sp"]) == (pytest.approx(3 / 4), pytest.approx(3 / 4))
    # a Poor Quality record called Adventitious is wrong: the class must be exact
    assert task21(truth, pred[:-1] + ["Adventitious"])["se"] == pytest.approx(2 / 4)


def test_bundle_update_attaches_a_gate_pinned_by_sha256(tmp_path: Path) -> None:
    from stethoedge.runtime.bundle_update import update_bundle

    src = tmp_path / "src"
    shutil.copytree(default_bundle(), src)
    gate_file = _gate(reject_as="speech").to_file(tmp_path / "gate.json")
    out = update_bundle(src, tmp_path / "out", quality=gate_file)
    b = load_bundle(out)
    assert b.quality is not None and b.quality.classes == ("ok", "unknown", "speech")
    assert b.manifest["quality"]["sha256"] == sha256_file(out / "quality.npz")
    assert b.manifest["confidence"] == load_bundle(src).manifest["confidence"]  # other sections kept
    removed = update_bundle(out, tmp_path / "bare", remove=("quality", "confidence"))
    bare = load_bundle(removed)
    assert bare.quality is None and not bare.calibration.present and not (removed / "quality.npz").exists()
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(BundleError, match="quality gate"):
        update_bundle(src, tmp_path / "never", quality=tmp_path / "broken.json")
    assert not (tmp_path / "never").exists()


def test_cost_benchmark_runs_and_reports_the_stream_order() -> None:
    """benchmarks/bench_quality.py (no timing asserted: speed is measured there, not here) still runs on the
    shipped bundle and reports the gate before inference, the decision after it, and their sum."""
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_quality.py"), "--windows", "2"],
                          capture_output=True, text=True, timeout=300, cwd=repo)
    assert proc.returncode == 0, proc.stderr
    for line in ("quality gate, before inference (stream)", "calibration + abstention, after inference",
                 "added per window (gate + decide)", "quality gate features version 2"):
        assert line in proc.stdout, proc.stdout


def test_empty_window_is_a_clear_error_and_metrics_refuse_labels_outside_the_set() -> None:
    """No ZeroDivisionError from an empty window; no silent wrap-around of a negative class index."""
    from stethoedge.data.metrics import confusion_matrix

    with pytest.raises(ValueError, match="non-empty mono window"):
        quality_features(np.zeros(0, np.float32))
    with pytest.raises(ValueError, match="outside the 4 classes"):
        confusion_matrix(np.array([-1, 0]), np.array([0, 0]))
    assert confusion_matrix(np.array([0, 3]), np.array([3, 0])).sum() == 2
