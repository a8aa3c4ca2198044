"""What the runtime decides for a window: ``WindowResult`` records, ``Decision`` and ``decide``.

Shared by the streaming core (runtime/streaming.py), the threaded stream engine (runtime/stream.py)
and the Classifier (runtime/engine.py, which re-exports ``WindowResult`` and ``softmax``), so that
none of them imports another to get them.

Every window's decision goes through ``decide_window`` (whatever the backend): probabilities calibrated
with the bundle's temperature, its signal-quality gate, and abstention. A rejected window is labelled
``"poor_quality"``; a window below ``abstain_below`` is labelled ``"uncertain"``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from stethoedge.runtime.audio_io import SILENCE_PEAK
from stethoedge.runtime.confidence import Calibration

__all__ = ["WindowResult", "Decision", "decide", "decide_window", "softmax", "window_warnings",
           "POOR_QUALITY", "UNCERTAIN"]

#: Decision labels that are not classes of the model (abstentions).
POOR_QUALITY = "poor_quality"
UNCERTAIN = "uncertain"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass
class WindowResult:
    """The decision for one window; ``to_json`` is the JSON-lines record."""

    start_s: float  # stream time of the window's first real sample
    end_s: float  # stream time just past its last sample
    padded: bool  # fewer than 8 s of real audio, cyclically padded
    after_gap: bool  # the stream lost samples just before this window
    label: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float  # features + inference
    smoothed_label: str | None = None  # the label after decision smoothing (runtime/smoothing.py)
    smoothed_confidence: float | None = None
    skipped_before: int = 0  # windows skipped just before this one because inference was behind
    wall_time: float | None = None  # time.time() when the decision was made
    warnings: list[str] = field(default_factory=list)  # about this window (digital silence: the label means nothing)
    # The decision vs the model: ``label`` is the DECISION (the model's class, "poor_quality" when the bundle's
    # signal-quality gate rejects the window, "uncertain" when the calibrated confidence is below the bundle's
    # abstain_below); ``model_label`` is always the model's argmax class. ``probabilities``/``confidence`` are
    # calibrated (softmax(logits / T)). Bundles without the sections: quality "unchecked", never abstains.
    model_label: str | None = None
    quality: str = "unchecked"  # "unchecked", "ok" or a runtime.quality.QUALITY_REASONS reason
    quality_score: float | None = None  # the gate's P(ok)
    abstained: bool = False
    abstain_reason: str | None = None  # "poor_quality" or "low_confidence"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (stream times, probabilities, labels, latency, wall-clock time)."""
        record = asdict(self)
        if record["wall_time"] is None:
            record["wall_time"] = time.time()
        return record


@dataclass
class Decision:
    """What the runtime decides for one window from its logits and audio (every backend goes through here)."""

    label: str  # the model's class, POOR_QUALITY or UNCERTAIN
    model_label: str  # argmax of the calibrated probabilities
    confidence: float  # calibrated probability of model_label
    probabilities: np.ndarray  # calibrated, softmax(logits / T)
    quality: str  # "unchecked" (no gate in the bundle), "ok" or a QUALITY_REASONS reason
    quality_score: float | None  # the gate's P(ok)
    abstained: bool
    abstain_reason: str | None  # "poor_quality" or "low_confidence"


def decide_window(labels: Sequence[str], logits: np.ndarray, audio: np.ndarray | None = None,
                  available: int | None = None, calibration: Calibration | None = None,
                  gate: Any | None = None, verdict: Any | None = None) -> Decision:
    """Calibrate ``logits`` (``calibration``; None: plain softmax, never abstains), run the quality ``gate``
    (anything with ``assess(audio, available)``, e.g. runtime.quality.QualityGate; None: "unchecked") on
    ``audio`` when both exist, and abstain: ``poor_quality`` when the gate rejects the window, else
    ``uncertain`` when the calibrated confidence is below ``abstain_below``. ``verdict``: the gate's
    verdict computed earlier (the streaming core assesses a window before inference, while its
    samples are still in the CPU cache); it replaces running the gate here."""
    calibration = calibration or Calibration()
    probs = calibration.probabilities(np.asarray(logits, dtype=np.float64))
    k = int(np.argmax(probs))
    model_label = labels[k]
    quality, score = "unchecked", None
    if verdict is None and gate is not None and audio is not None:
        verdict = gate.assess(audio, available)
    if verdict is not None:
        quality, score = verdict.reason, float(verdict.score)
    label, reason = model_label, None
    if quality not in ("ok", "unchecked"):
        label, reason = POOR_QUALITY, "poor_quality"
    elif calibration.abstains(probs):
        label, reason = UNCERTAIN, "low_confidence"
    return Decision(label, model_label, float(probs[k]), probs, quality, score, reason is not None, reason)


def decide(bundle: Any, logits: np.ndarray, audio: np.ndarray | None = None, available: int | None = None,
           verdict: Any | None = None) -> Decision:
    """``decide_window`` with the bundle's labels, temperature/abstain_below and quality gate (bundles without
    those sections: plain softmax, never abstains, quality "unchecked"); ``verdict`` as there."""
    return decide_window(bundle.labels, logits, audio, available, getattr(bundle, "calibration", None),
                         getattr(bundle, "quality", None), verdict)


def window_warnings(audio: np.ndarray) -> list[str]:
    """What a decision's record should warn about its window: digital silence (no sound to classify)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak >= SILENCE_PEAK:
        return []
    level = "-inf" if peak <= 0 else f"{20 * np.log10(peak):.0f}"
    return [f"silent window (peak {level} dBFS): the label means nothing"]
