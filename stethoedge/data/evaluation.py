"""Evaluation of window predictions: ICBHI and SPRSound-challenge scores with patient-level bootstrap intervals.

Torch-free. ``report`` gives, for one set of predictions, the 4-class ICBHI metrics (Sp, Se,
Score, macro-F1), the SPRSound challenge metrics of the binary (normal / adventitious) and the
4-class task (Se, Sp, Average Score, Harmonic Score, Score = their mean), each with a 95 % interval
from resampling PATIENTS with replacement (windows of one patient are not independent).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from stethoedge.data.metrics import binary_confusion, confusion_matrix, icbhi_scores, macro_f1


def challenge_scores(se: float, sp: float) -> dict[str, float]:
    """SPRSound challenge: Average Score (Se+Sp)/2, Harmonic Score 2 Se Sp/(Se+Sp), Score = their mean."""
    avg = (se + sp) / 2.0
    harm = 2.0 * se * sp / (se + sp) if (se + sp) > 0 else 0.0
    return {"se": se, "sp": sp, "average_score": avg, "harmonic_score": harm, "score": (avg + harm) / 2.0}


def point_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Flat dict of every scalar metric of one prediction set."""
    cm = confusion_matrix(y_true, y_pred)
    icbhi = icbhi_scores(cm)
    bcm = binary_confusion(cm)
    b_sp = float(bcm[0, 0] / bcm[0].sum()) if bcm[0].sum() else float("nan")
    b_se = float(bcm[1, 1] / bcm[1].sum()) if bcm[1].sum() else float("nan")
    # Score only where both Sp and Se are defined (a draw without abnormal windows has no Score,
    # rather than Score = Sp as the mean over defined terms would give).
    out = {"icbhi_sp": icbhi["specificity"], "icbhi_se": icbhi["sensitivity"],
           "icbhi_score": (icbhi["specificity"] + icbhi["sensitivity"]) / 2.0,
           "macro_f1": macro_f1(cm), "binary_se": b_se, "binary_sp": b_sp}
    # The challenge scores need both classes present (Se and Sp defined); NaN otherwise.
    for prefix, (se, sp) in (("binary", (b_se, b_sp)), ("multi", (icbhi["sensitivity"], icbhi["specificity"]))):
        scores = challenge_scores(se, sp) if np.isfinite(se) and np.isfinite(sp) else {}
        for k in ("average_score", "harmonic_score", "score"):
            out[f"{prefix}_{k}"] = scores.get(k, float("nan"))
    return out


def patient_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, patients: np.ndarray,
                      metric: Callable[[np.ndarray, np.ndarray], dict[str, float]] = point_metrics,
                      n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of every metric, resampling patients (all their windows) with replacement."""
    rng = np.random.default_rng(seed)
    ids = np.unique(patients)
    groups = [np.flatnonzero(patients == p) for p in ids]
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = np.concatenate([groups[i] for i in rng.integers(0, len(ids), len(ids))])
        for k, v in metric(y_true[idx], y_pred[idx]).items():
            if np.isfinite(v):
                draws.setdefault(k, []).append(v)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items()}


def report(y_true: np.ndarray, y_pred: np.ndarray, patients: np.ndarray, n_boot: int = 1000,
           seed: int = 0) -> dict[str, Any]:
    """Point metrics, their patient-bootstrap intervals, the confusion matrix and the counts."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    return {"n_windows": int(len(y_true)), "n_patients": int(len(np.unique(patients))),
            "metrics": point_metrics(y_true, y_pred),
            "ci95": patient_bootstrap(y_true, y_pred, np.asarray(patients), n_boot=n_boot, seed=seed),
            "confusion_matrix": confusion_matrix(y_true, y_pred).tolist()}
