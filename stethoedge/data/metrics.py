"""ICBHI 2017 challenge metrics.

Specificity = correctly classified normal cycles / normal cycles; Sensitivity = abnormal cycles
classified as their exact abnormal class / abnormal cycles; Score = their mean (the official
challenge definition). Also macro-F1, per-class recall, AUROC (one-vs-rest, from class
probabilities), the binary normal/abnormal view, and mean +- sd over seeds.

Any label set works (a run's ``RunConfig.data.labels``: 2, 4, 7 classes...): pass ``labels``; class 0
is the "normal" class of Specificity and of the binary view. Without ``labels`` the ICBHI classes apply.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stethoedge.runtime.labels import CLASSES


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Counts[true, predicted] as an int64 (n_classes, n_classes) array."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label arrays differ in shape: {y_true.shape} vs {y_pred.shape}")
    if y_true.size and (max(int(y_true.max()), int(y_pred.max())) >= n_classes
                        or min(int(y_true.min()), int(y_pred.min())) < 0):
        raise ValueError(f"a label is outside the {n_classes} classes 0-{n_classes - 1} (pass the run's label set)")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def icbhi_scores(cm: np.ndarray) -> dict[str, float]:
    """Specificity, Sensitivity and Score (in [0, 1]) from a confusion matrix (class 0 = normal)."""
    normal_total = cm[0].sum()
    abnormal_total = cm[1:].sum()
    sp = float(cm[0, 0] / normal_total) if normal_total else float("nan")
    se = float(np.trace(cm[1:, 1:]) / abnormal_total) if abnormal_total else float("nan")
    return {"specificity": sp, "sensitivity": se, "score": float(np.nanmean([sp, se]))}


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur in labels or predictions."""
    f1s = []
    for k in range(cm.shape[0]):
        tp = cm[k, k]
        support, predicted = cm[k].sum(), cm[:, k].sum()
        if support == 0 and predicted == 0:
            continue
        f1s.append(2 * tp / (support + predicted))
    return float(np.mean(f1s)) if f1s else float("nan")


def binary_confusion(cm: np.ndarray) -> np.ndarray:
    """Collapse a confusion matrix to normal (class 0) / abnormal (every other class)."""
    return np.array([[cm[0, 0], cm[0, 1:].sum()], [cm[1:, 0].sum(), cm[1:, 1:].sum()]], dtype=np.int64)


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie-averaged ranks); NaN without both classes."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_report(y_true: np.ndarray, probs: np.ndarray, labels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One-vs-rest AUROC per class (``labels``, default the ICBHI classes), their macro mean, binary AUROC."""
    y_true = np.asarray(y_true, dtype=np.int64)
    per_class = {name: auroc(y_true == k, probs[:, k]) for k, name in enumerate(labels or CLASSES)}
    finite = [v for v in per_class.values() if np.isfinite(v)]
    return {"per_class": {k: (v if np.isfinite(v) else None) for k, v in per_class.items()},
            "macro": float(np.mean(finite)) if finite else float("nan"),
            "binary": auroc(y_true != 0, 1.0 - probs[:, 0])}


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (n, classes) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def summarize_seeds(results: list[dict[str, Any]], keys: tuple[str, ...] = ("specificity", "sensitivity", "score",
                                                                             "macro_f1")) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over runs with different seeds."""
    out = {}
    for key in keys:
        values = np.array([r[key] for r in results if r is not None and key in r], dtype=np.float64)
        if values.size:
            out[key] = {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                        "n": int(values.size)}
    return out


def evaluate(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray | None = None,
             labels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-ready dict (AUROC too when class ``probs`` are given).

    ``labels``: the class names, index = class (default the 4 ICBHI classes); per-class entries use them.
    """
    names = tuple(labels) if labels is not None else CLASSES
    cm = confusion_matrix(y_true, y_pred, n_classes=len(names))
    out: dict[str, Any] = dict(icbhi_scores(cm))
    out["macro_f1"] = macro_f1(cm)
    out["accuracy"] = float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")
    out["per_class_recall"] = {
        name: (float(cm[k, k] / cm[k].sum()) if cm[k].sum() else None) for k, name in enumerate(names)
    }
    bcm = binary_confusion(cm)
    out["binary"] = {
        "specificity": float(bcm[0, 0] / bcm[0].sum()) if bcm[0].sum() else float("nan"),
        "sensitivity": float(bcm[1, 1] / bcm[1].sum()) if bcm[1].sum() else float("nan"),
    }
    out["binary"]["score"] = float(np.nanmean([out["binary"]["specificity"], out["binary"]["sensitivity"]]))
    if probs is not None:
        out["auroc"] = auroc_report(y_true, probs, names)
    out["confusion_matrix"] = cm.tolist()
    out["n"] = int(cm.sum())
    return out
