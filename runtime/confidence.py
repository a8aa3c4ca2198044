"""Calibrated confidence and abstention: the bundle manifest's optional ``"confidence"`` section.

``{"method": "temperature", "temperature": T, "abstain_below": p, "fitted_on": "...",
"ece_val_before": ..., "ece_val_after": ...}`` (written by ``stethoedge bundle-update``, fitted by
train/confidence.py on validation windows only). Probabilities are softmax(logits / T); a window
whose calibrated top-1 probability is below ``abstain_below`` is labelled ``"uncertain"``.
A bundle without the section gets T = 1 and no abstention (the behaviour before the section).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stethoedge.runtime.typed_json import Record, constrained, finite

METHODS = ("temperature",)
T_MIN, T_MAX = 0.05, 20.0


@dataclass(frozen=True)
class ConfidenceSection(Record):
    """The manifest's ``"confidence"`` section, typed (schema and ranges checked by ``from_json``)."""

    LAYOUT = ("method", "temperature", "abstain_below", "fitted_on", "abstain_rule", "ece_val_before", "ece_val_after")
    temperature: float = constrained(lambda t: finite(t) and T_MIN < t <= T_MAX,
                                     f"{{v}} must be a finite number in ({T_MIN}, {T_MAX:g}]")
    method: str = constrained(lambda m: m in METHODS, f"{{v}} must be one of {', '.join(METHODS)}")
    abstain_below: float = constrained(lambda p: finite(p) and 0.0 <= p <= 1.0, "{v} must be a finite number in [0, 1]",
                                       default=0.0)
    fitted_on: str | None = None
    ece_val_before: float | None = constrained(lambda e: e is None or finite(e), "must be a finite number", default=None)
    ece_val_after: float | None = constrained(lambda e: e is None or finite(e), "must be a finite number", default=None)


def validate_confidence(section: Any, where: str) -> ConfidenceSection:
    """The ``"confidence"`` section as a ConfidenceSection; BundleError ``where: confidence.<key> ...`` unless well-formed."""
    return ConfidenceSection.from_json(section, where, "confidence")


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling and the abstention threshold (identity and never abstaining by default)."""

    temperature: float = 1.0
    abstain_below: float = 0.0
    present: bool = False

    @classmethod
    def from_manifest(cls, manifest: Any) -> Calibration:
        """The confidence section of a manifest (a typed ``Manifest`` or its JSON dict), or the identity."""
        section = getattr(manifest, "confidence", None) if not isinstance(manifest, dict) else manifest.get("confidence")
        if section is None:
            return cls()
        return cls.from_section(section if isinstance(section, ConfidenceSection) else
                                validate_confidence(section, "manifest"))

    @classmethod
    def from_section(cls, section: ConfidenceSection | None) -> Calibration:
        """The calibration a (typed) confidence section describes; the identity for None."""
        if section is None:
            return cls()
        return cls(float(section.temperature), float(section.abstain_below), True)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities softmax(logits / T) over the last axis (float64)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def abstains(self, probabilities: np.ndarray) -> bool:
        """True when the calibrated top-1 probability is below the threshold."""
        return bool(float(np.max(probabilities)) < self.abstain_below)
