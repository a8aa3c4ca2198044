"""Calibrated confidence and abstention: fitting (train/confidence.py), the manifest section
(runtime/confidence.py, runtime/bundle.py), bundle-update, and the runtime's decisions."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stethoedge.models import default_bundle
from stethoedge.runtime.bundle import load_bundle
from stethoedge.runtime.errors import BundleError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
INTER = SHARED / "data" / "sprsound" / "test2022_inter"
ICBHI_WAV = SHARED / "data" / "icbhi_sample" / "audio_and_txt_files" / "104_1b1_Ll_sc_Litt3200.wav"


def _overconfident(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is far more confident than their 60 % accuracy."""
    y = rng.integers(0, 4, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 4, n))
    logits = rng.normal(0, 0.3, (n, 4))
    logits[np.arange(n), pred] += 6.0
    return logits, y


def test_temperature_fit_lowers_ece_and_nll_of_an_overconfident_model() -> None:
    from stethoedge.train.confidence import ece, fit_temperature, nll, softmax

    rng = np.random.default_rng(0)
    logits, y = _overconfident(4000, rng)
    t = fit_temperature(logits[:2000], y[:2000])
    assert t > 1.5  # overconfident: the temperature softens
    before, after = softmax(logits[2000:]), softmax(logits[2000:] / t)
    assert ece(after, y[2000:]) < 0.5 * ece(before, y[2000:])
    assert nll(after, y[2000:]) < nll(before, y[2000:])
    assert (after.argmax(1) == before.argmax(1)).all()  # scaling never changes the class


def test_ece_of_a_perfectly_calibrated_set_is_small_and_threshold_keeps_the_asked_coverage() -> None:
    from stethoedge.train.confidence import choose_threshold, ece

    rng = np.random.default_rng(1)
    conf = rng.uniform(0.3, 1.0, 20000)
    probs = np.stack([conf, 1 - conf], 1)
    y = np.where(rng.random(20000) < conf, 0, 1)
    assert ece(probs, y) < 0.02
    thr = choose_threshold(probs, 0.9)
    assert abs(np.mean(probs.max(1) >= thr) - 0.9) < 0.01


def _copy_bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle(), dst)
    return dst


def _set_manifest(bundle: Path, **sections) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    for k, v in sections.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (bundle / "manifest.json").write_text(json.dumps(m))


GOOD = {"method": "temperature", "temperature": 0.7, "abstain_below": 0.6, "fitted_on": "test",
        "ece_val_before": 0.08, "ece_val_after": 0.03}


@pytest.mark.parametrize("bad, match", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": 25.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"temperature": True}, "temperature"),
    ({"abstain_below": 1.5}, "abstain_below"), ({"abstain_below": -0.1}, "abstain_below"),
    ({"method": "platt"}, "method"), ({"ece_val_after": "low"}, "ece_val_after"),
])
def test_bad_confidence_sections_are_refused(tmp_path: Path, bad: dict, match: str) -> None:
    b = _copy_bundle(tmp_path)
    _set_manifest(b, confidence={**GOOD, **bad})
    with pytest.raises(BundleError, match=match):
        load_bundle(b)


def test_bundle_without_sections_behaves_as_before(tmp_path: Path) -> None:
    from stethoedge.runtime.engine import Classifier, softmax
    from stethoedge.runtime.stream import decide

    b = _copy_bundle(tmp_path)
    _set_manifest(b, confidence=None, quality=None)
    (b / "quality.npz").unlink(missing_ok=True)
    bundle = load_bundle(b)
    assert bundle.quality is None and not bundle.calibration.present and bundle.calibration.temperature == 1.0
    clf = Classifier.open(b)
    audio = (0.05 * np.random.default_rng(2).standard_normal(clf.spec.window_samples)).astype(np.float32)
    logits = clf.logits(audio)
    d = decide(bundle, logits, audio)
    assert d.quality == "unchecked" and d.quality_score is None and not d.abstained
    np.testing.assert_allclose(d.probabilities, softmax(logits.astype(np.float64)))
    assert d.label == d.model_label == bundle.labels[int(np.argmax(logits))]


def test_calibration_is_applied_and_low_confidence_abstains(tmp_path: Path) -> None:
    from stethoedge.runtime.stream import decide

    b = _copy_bundle(tmp_path)
    _set_manifest(b, confidence={**GOOD, "abstain_below": 0.99}, quality=None)
    bundle = load_bundle(b)
    logits = np.array([1.0, 0.5, 0.0, -1.0])
    d = decide(bundle, logits)
    z = np.exp(logits / 0.7)
    np.testing.assert_allclose(d.probabilities, z / z.sum())
    assert d.label == "uncertain" and d.model_label == "normal" and d.abstained and d.abstain_reason == "low_confidence"
    _set_manifest(b, confidence={**GOOD, "abstain_below": 0.0})
    d = decide(load_bundle(b), logits)
    assert d.label == "normal" and not d.abstained


@pytest.mark.skipif(not ICBHI_WAV.is_file(), reason=f"ICBHI sample not found at {ICBHI_WAV}")
def test_stream_counts_uncertain_windows_and_keeps_every_record(tmp_path: Path) -> None:
    from stethoedge.runtime.engine import Classifier
    from stethoedge.runtime.sources import FileSource

    b = _copy_bundle(tmp_path)
    _set_manifest(b, confidence={**GOOD, "abstain_below": 1.0}, quality=None)  # every window abstains
    clf = Classifier.open(b)
    from stethoedge.runtime.stream import StreamConfig, StreamEngine

    engine = StreamEngine(clf, StreamConfig(hop_s=4.0))
    results = list(engine.run(FileSource(str(ICBHI_WAV))))
    assert results and all(r.label == "uncertain" and r.abstained and r.model_label in clf.bundle.labels
                           for r in results)
    assert engine.stats.windows == engine.stats.abstained == engine.stats.uncertain == len(results)
    assert engine.stats.poor_quality == 0
    # uncertain windows still feed the smoother: it reports a class
    assert all(r.smoothed_label in clf.bundle.labels for r in results)


def test_bundle_update_adds_confidence_refuses_signed_and_keeps_the_source(tmp_path: Path) -> None:
    from stethoedge.runtime.bundle_update import update_bundle

    src = _copy_bundle(tmp_path)
    _set_manifest(src, confidence=None, quality=None)
    (src / "quality.npz").unlink(missing_ok=True)
    before = (src / "manifest.json").read_bytes()
    out = update_bundle(src, tmp_path / "new", confidence=GOOD)
    assert load_bundle(out).calibration.temperature == 0.7
    assert (src / "manifest.json").read_bytes() == before  # --out never touches the source
    with pytest.raises(BundleError, match="already exists"):
        update_bundle(src, tmp_path / "new", confidence=GOOD)
    (src / "manifest.sig").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="signed"):
        update_bundle(src, tmp_path / "new2", confidence=GOOD)
    assert not (tmp_path / "new2").exists()
    update_bundle(src, tmp_path / "new2", confidence=GOOD, drop_signature=True)
    assert not (tmp_path / "new2" / "manifest.sig").exists()
    with pytest.raises(BundleError, match="temperature"):
        update_bundle(src, tmp_path / "new3", confidence={**GOOD, "temperature": -1}, drop_signature=True)
    assert not (tmp_path / "new3").exists()


def test_bundle_update_cli_is_one_line_errors(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "stethoedge", "bundle-update", str(default_bundle())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--out DIR or --in-place" in proc.stderr
    rep = tmp_path / "report.json"
    rep.write_text(json.dumps({"manifest_section": {**GOOD, "temperature": 50}}))
    proc = subprocess.run([sys.executable, "-m", "stethoedge", "bundle-update", str(default_bundle()), "--confidence",
                           str(rep), "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "temperature" in proc.stderr


def test_the_shipped_bundle_carries_a_validation_fitted_temperature() -> None:
    bundle = load_bundle(default_bundle())
    c = bundle.manifest.get("confidence")
    assert c is not None and c["method"] == "temperature" and "role=val" in c["fitted_on"]
    assert c["ece_val_after"] < c["ece_val_before"]
    assert 0 < bundle.calibration.abstain_below < 1
