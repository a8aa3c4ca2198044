"""The verification gate: does an exported artifact answer like the PyTorch model?

Measured on held-out windows never used for calibration or training: top-1 agreement with
PyTorch, max/mean logit difference, and with labels the ICBHI Score and macro-F1 deltas. An
artifact under the floor is marked ``failed-verification``, never silently shipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from stethoedge.data.metrics import evaluate


@dataclass(frozen=True)
class Gate:
    """Floors an artifact must meet (defaults from the product: >= 98 % agreement, <= 1 pt Score drop)."""

    min_agreement: float = 0.98
    max_score_drop: float = 0.01


def verify_artifact(run: Callable[[np.ndarray], np.ndarray], features: np.ndarray, reference_logits: np.ndarray,
                    labels: np.ndarray | None = None, gate: Gate = Gate(), batch_size: int = 16) -> dict[str, Any]:
    """Compare ``run(features)`` to the PyTorch logits; return the measurements and ``passed``."""
    logits = np.concatenate([run(features[i : i + batch_size]) for i in range(0, features.shape[0], batch_size)])
    diff = np.abs(logits.astype(np.float64) - reference_logits)
    agreement = float(np.mean(logits.argmax(1) == reference_logits.argmax(1)))
    result: dict[str, Any] = {
        "windows": int(features.shape[0]), "top1_agreement": agreement,
        "max_logit_diff": float(diff.max()), "mean_logit_diff": float(diff.mean()),
        "finite": bool(np.all(np.isfinite(logits))),
    }
    passed = result["finite"] and agreement >= gate.min_agreement
    if labels is not None and labels.size:
        classes = tuple(str(k) for k in range(reference_logits.shape[1]))  # the model's label set, any size
        ref = evaluate(labels, reference_logits.argmax(1), labels=classes)
        got = evaluate(labels, logits.argmax(1), labels=classes)
        result["score"] = got["score"]
        result["score_delta"] = got["score"] - ref["score"]
        result["macro_f1_delta"] = got["macro_f1"] - ref["macro_f1"]
        passed = passed and -result["score_delta"] <= gate.max_score_drop
    result["gate"] = {"min_agreement": gate.min_agreement, "max_score_drop": gate.max_score_drop}
    result["passed"] = bool(passed)
    return result


def pick_selftest(logits: np.ndarray, k: int = 4) -> np.ndarray:
    """Indices of ``k`` windows with the widest top-1 margins, one per predicted class first.

    A self-test on a window near the decision boundary would fail a healthy INT8 model.
    """
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    predicted = logits.argmax(1)
    chosen: list[int] = []
    for cls in np.unique(predicted):
        members = np.flatnonzero(predicted == cls)
        chosen.append(int(members[np.argmax(margin[members])]))
    for i in np.argsort(-margin):
        if len(chosen) >= k:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return np.asarray(sorted(chosen[:k]), dtype=np.int64)
