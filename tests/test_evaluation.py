"""Evaluation (train/evaluation.py): the SPRSound challenge scores, the ICBHI metrics of one prediction set,
and the patient-level bootstrap intervals, on small arrays computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from stethoedge.train.evaluation import challenge_scores, patient_bootstrap, point_metrics, report

# 4 normal windows (all right), 2 crackle (one called wheeze, one normal), 2 wheeze (one right, one normal)
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 0, 0, 0, 2, 0, 2, 0])


def test_challenge_scores_by_hand():
    s = challenge_scores(0.5, 1.0)
    assert s["se"] == 0.5 and s["sp"] == 1.0
    assert s["average_score"] == pytest.approx(0.75)
    assert s["harmonic_score"] == pytest.approx(2 / 3)
    assert s["score"] == pytest.approx((0.75 + 2 / 3) / 2)  # 0.7083
    assert challenge_scores(0.5, 1.0)["score"] == pytest.approx(0.708333, abs=1e-6)
    zero = challenge_scores(0.0, 0.0)  # no division by zero
    assert zero["harmonic_score"] == 0.0 and zero["score"] == 0.0
    one_sided = challenge_scores(0.0, 1.0)
    assert one_sided["average_score"] == 0.5 and one_sided["harmonic_score"] == 0.0 and one_sided["score"] == 0.25


def test_point_metrics_by_hand():
    m = point_metrics(Y_TRUE, Y_PRED)
    # binary: 4/4 normals right; 2 of 4 abnormal windows called abnormal (whatever the class)
    assert m["binary_sp"] == 1.0 and m["binary_se"] == 0.5
    assert m["binary_average_score"] == pytest.approx(0.75)
    assert m["binary_harmonic_score"] == pytest.approx(2 / 3)
    assert m["binary_score"] == pytest.approx(0.708333, abs=1e-6)
    # 4-class: only the wheeze called wheeze counts as sensitive: Se 1/4
    assert m["icbhi_sp"] == 1.0 and m["icbhi_se"] == 0.25 and m["icbhi_score"] == pytest.approx(0.625)
    assert m["multi_average_score"] == pytest.approx(0.625)
    assert m["multi_harmonic_score"] == pytest.approx(0.4)  # 2 * 0.25 / 1.25
    assert m["multi_score"] == pytest.approx(0.5125)
    # F1: normal 2*4/(4+6) = 0.8, crackle 0, wheeze 2*1/(2+2) = 0.5; "both" absent from labels and predictions
    assert m["macro_f1"] == pytest.approx((0.8 + 0.0 + 0.5) / 3)


def test_always_normal_predictions():
    m = point_metrics(Y_TRUE, np.zeros_like(Y_TRUE))
    assert m["binary_se"] == 0.0 and m["binary_sp"] == 1.0
    assert m["binary_harmonic_score"] == 0.0 and m["binary_average_score"] == 0.5 and m["binary_score"] == 0.25
    assert m["icbhi_se"] == 0.0 and m["icbhi_score"] == 0.5 and m["multi_score"] == 0.25


def test_point_metrics_without_abnormal_windows_have_no_challenge_scores():
    m = point_metrics(np.zeros(5, np.int64), np.array([0, 0, 0, 1, 0]))
    assert m["icbhi_sp"] == pytest.approx(0.8) and np.isnan(m["icbhi_se"])
    assert m["binary_sp"] == pytest.approx(0.8)
    # Se is undefined, so is every score built on it (NaN, never a number computed from a NaN)
    for prefix in ("binary", "multi"):
        for k in ("average_score", "harmonic_score", "score"):
            assert np.isnan(m.get(f"{prefix}_{k}", np.nan)), f"{prefix}_{k}"


def test_bootstrap_interval_contains_the_point_estimate(rng):
    patients = np.repeat(np.arange(12), 10)
    y_true = rng.integers(0, 4, patients.size)
    y_pred = np.where(rng.random(patients.size) < 0.6, y_true, rng.integers(0, 4, patients.size))
    point = point_metrics(y_true, y_pred)
    ci = patient_bootstrap(y_true, y_pred, patients, n_boot=300, seed=0)
    assert set(ci) == set(point)
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key
        assert lo < hi, key  # twelve different patients: the intervals have width
    assert patient_bootstrap(y_true, y_pred, patients, n_boot=300, seed=0) == ci  # seeded


def test_bootstrap_of_one_patient_is_degenerate():
    patients = np.full(Y_TRUE.size, "p1")
    ci = patient_bootstrap(Y_TRUE, Y_PRED, patients, n_boot=50)
    point = point_metrics(Y_TRUE, Y_PRED)
    assert set(ci) == set(point)
    for key, (lo, hi) in ci.items():
        assert lo == pytest.approx(point[key]) and hi == pytest.approx(point[key]), key


def test_bootstrap_resamples_patients_not_windows():
    # patient A: 50 windows all right; patient B: 50 windows all wrong. Resampling patients draws AA, AB or
    # BB (binary Se 1, 0.5 or 0); resampling windows would give Se near 0.5 +- 0.1 every time.
    y_true = np.tile([0, 1], 50)
    y_pred = np.concatenate([np.tile([0, 1], 25), np.tile([1, 0], 25)])
    patients = np.repeat(["A", "B"], 50)
    ci = patient_bootstrap(y_true, y_pred, patients, n_boot=200, seed=1)
    assert ci["binary_se"] == (0.0, 1.0) and ci["binary_sp"] == (0.0, 1.0)
    seen = set()
    patient_bootstrap(y_true, y_pred, patients, n_boot=40, seed=1,
                      metric=lambda t, p: seen.add(float(np.mean(t == p))) or {})
    assert seen <= {0.0, 0.5, 1.0} and len(seen) > 1


def test_report():
    patients = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])
    out = report(Y_TRUE, Y_PRED, patients, n_boot=100, seed=3)
    assert out["n_windows"] == 8 and out["n_patients"] == 4
    assert out["metrics"] == point_metrics(Y_TRUE, Y_PRED)
    assert out["confusion_matrix"] == [[4, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert set(out["ci95"]) <= set(out["metrics"])
    assert out["ci95"] == patient_bootstrap(Y_TRUE, Y_PRED, patients, n_boot=100, seed=3)
