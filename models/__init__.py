"""Trained bundles shipped with stethoedge (``stethoedge.models``); torch-free.

``DEFAULT_BUNDLE`` is the model a user gets without naming a bundle: EfficientAT mn04 (AudioSet)
fine-tuned on real recordings (SPRSound + ICBHI); see MODEL_CARD.md at the repository root.
"""
from __future__ import annotations

from pathlib import Path

from stethoedge.runtime.errors import BundleError

HERE = Path(__file__).resolve().parent
DEFAULT_NAME = "respiratory-mn04"


def bundle_path(name: str = DEFAULT_NAME) -> Path:
    """Directory of a shipped bundle; BundleError if this installation lacks it."""
    path = HERE / name
    if not (path / "manifest.json").is_file():
        shipped = sorted(p.name for p in HERE.iterdir() if (p / "manifest.json").is_file())
        raise BundleError(f"no shipped bundle {name!r} in {HERE} (shipped: {', '.join(shipped) or 'none'}); "
                          "pass a bundle directory from `stethoedge export`")
    return path


def default_bundle() -> Path:
    """The bundle used when a command is given none."""
    return bundle_path(DEFAULT_NAME)
