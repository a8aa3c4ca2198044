"""Add or replace a bundle's optional sections: calibrated confidence and the signal-quality gate.

``stethoedge bundle-update BUNDLE --confidence REPORT.json --quality quality.npz (--out NEW | --in-place)``

The new bundle is built in a temporary directory beside its destination (every file copied, the
manifest rewritten, the quality file copied and pinned by sha256), loaded and verified again
(schema, every sha256, the gate's file) and its default artifact's self-test run; only then is it
moved into place (``install_dir``). A signed bundle (``manifest.sig``) is refused unless
``drop_signature``: the signature would no longer match the new manifest (re-sign it after).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from stethoedge.runtime.bundle import MANIFEST_NAME, FileRef, load_bundle, sha256_file, write_manifest
from stethoedge.runtime.confidence import ConfidenceSection, validate_confidence
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.outputs import install_dir, signals_held, temp_dir_beside
from stethoedge.runtime.quality import QualityGate

QUALITY_FILE = "quality.npz"
SIGNATURE_NAME = "manifest.sig"


def read_confidence(path: str | os.PathLike) -> ConfidenceSection:
    """The confidence section from a train/confidence.py report (its ``manifest_section``) or a bare section."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the confidence report ({exc})") from None
    section = data.get("manifest_section", data) if isinstance(data, dict) else data
    return validate_confidence(section, str(path))


def update_bundle(bundle: str | os.PathLike, out: str | os.PathLike | None = None,
                  confidence: ConfidenceSection | dict[str, Any] | None = None, quality: str | os.PathLike | None = None,
                  remove: tuple[str, ...] = (), drop_signature: bool = False, force: bool = False,
                  run_selftest: bool = True) -> Path:
    """Write ``bundle`` with the given sections to ``out`` (None: in place); returns the destination.

    ``remove``: section names ("confidence", "quality") to drop. ``force``: replace an existing ``out``.
    """
    src = Path(bundle)
    old = load_bundle(src)  # the source must itself be valid
    dest = src if out is None else Path(out)
    if (src / SIGNATURE_NAME).exists() and not drop_signature:
        raise BundleError(f"{src} is signed ({SIGNATURE_NAME}); its signature would no longer match the updated "
                          "manifest: pass --drop-signature and sign the result again")
    if out is not None and dest.resolve() == src.resolve():
        dest = src
    if dest != src and os.path.lexists(dest) and not force:
        raise BundleError(f"{dest} already exists; pass --force to replace it")
    gate = QualityGate.from_file(quality) if quality is not None else None  # refuse a bad file before copying
    manifest = old.typed_manifest
    for key in remove:
        if key not in ("confidence", "quality"):
            raise BundleError(f"cannot remove {key!r}; only confidence or quality")
    manifest = replace(manifest, **{key: None for key in remove})
    old_quality = old.typed_manifest.quality
    tmp: Path | None = None
    try:
        with signals_held():  # no leaked temporary if a signal lands between creating and owning it
            tmp = temp_dir_beside(dest)
        for f in src.iterdir():
            if f.is_file() and f.name not in (MANIFEST_NAME, SIGNATURE_NAME) and not (
                    "quality" in remove and old_quality is not None and f.name == old_quality.file):
                shutil.copy2(f, tmp / f.name)
        if confidence is not None:
            if not isinstance(confidence, ConfidenceSection):
                confidence = validate_confidence(confidence, "confidence")
            manifest = replace(manifest, confidence=confidence)
        if gate is not None:
            gate.to_file(tmp / QUALITY_FILE)  # re-written by this runtime: no foreign bytes in the bundle
            manifest = replace(manifest, quality=FileRef(QUALITY_FILE, sha256_file(tmp / QUALITY_FILE), extra={
                "fitted_on": gate.fitted_on, "threshold": gate.threshold}))
        write_manifest(tmp, manifest)
        new = load_bundle(tmp)
        if run_selftest:
            from stethoedge.runtime.backends import open_backend

            open_backend(new, None, "auto", threads=1)  # opening runs the default artifact's self-test
        install_dir(tmp, dest, replace=True if dest == src else force, what="bundle-update")
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
