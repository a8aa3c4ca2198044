"""Calibrated confidence and abstention: the bundle manifest's optional ``"confidence"`` section.

``{"method": "temperature", "temperature": T, "abstain_below": p, "fitted_on": "...",
"ece_val_before": ..., "ece_val_after": ...}`` (written by ``stethoedge bundle-update``, fitted by
train/confidence.py on validation windows only). Probabilities are softmax(logits / T); a window
whose calibrated top-1 probability is below ``abstain_below`` is labelled ``"uncertain"``.
A bundle without the section gets T = 1 and no abstention (the behaviour before the section).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from stethoedge.runtime.errors import BundleError

METHODS = ("temperature",)
T_MIN, T_MAX = 0.05, 20.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_confidence(section: Any, where: str) -> None:
    """Raise BundleError unless ``section`` is a well-formed ``"confidence"`` manifest section."""
    if not isinstance(section, dict):
        raise BundleError(f"{where}: confidence must be an object")
    if section.get("method") not in METHODS:
        raise BundleError(f"{where}: confidence.method {section.get('method')!r} must be one of {', '.join(METHODS)}")
    t = section.get("temperature")
    if not (_number(t) and T_MIN < t <= T_MAX):
        raise BundleError(f"{where}: confidence.temperature {t!r} must be a finite number in ({T_MIN}, {T_MAX:g}]")
    p = section.get("abstain_below", 0.0)
    if not (_number(p) and 0.0 <= p <= 1.0):
        raise BundleError(f"{where}: confidence.abstain_below {p!r} must be a finite number in [0, 1]")
    for key in ("ece_val_before", "ece_val_after"):
        if key in section and not _number(section[key]):
            raise BundleError(f"{where}: confidence.{key} must be a finite number")


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling and the abstention threshold (identity and never abstaining by default)."""

    temperature: float = 1.0
    abstain_below: float = 0.0
    present: bool = False

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Calibration:
        """The manifest's confidence section (already validated), or the identity when it has none."""
        section = manifest.get("confidence")
        if section is None:
            return cls()
        validate_confidence(section, "manifest")
        return cls(float(section["temperature"]), float(section.get("abstain_below", 0.0)), True)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities softmax(logits / T) over the last axis (float64)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    def abstains(self, probabilities: np.ndarray) -> bool:
        """True when the calibrated top-1 probability is below the threshold."""
        return bool(float(np.max(probabilities)) < self.abstain_below)
