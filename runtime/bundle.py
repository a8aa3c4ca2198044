"""The model bundle: a directory with model files, manifest.json and a self-test vector.

The runtime owns this format (export/ writes it through these helpers). Loading verifies the
schema, every file's sha256 and the self-test arrays' shapes, so a tampered, truncated or
foreign bundle is refused with one clear message before any model runs.

Layout::

    BUNDLE/manifest.json    schema, feature spec, labels, input/output, artifacts (+ sha256), versions
    BUNDLE/selftest.npz     audio (k, window_samples), features (k, frames, mels), logits (k, classes)
    BUNDLE/<artifact files> model.onnx, model.int8.onnx, ...
    BUNDLE/quality.npz      optional signal-quality gate (manifest "quality": file + sha256; runtime/quality.py)
    BUNDLE/calibration.npz  optional INT8 representative set (+ calibration.cache), pinned like every file
    BUNDLE/engines.json     optional, device-local: TensorRT engines built by build-engine, pinned to the
                            signed ONNX's sha256 (the signed manifest.json is never rewritten on a device)

``manifest.json`` is read once: the signature (when required) and the parser see the same bytes.
Every file the manifest pins (``pinned_files`` / ``Manifest.files``) is verified on load.

The manifest and the overlay are types (runtime/manifest.py: ``Manifest``, ``Artifact``, ``FileRef``,
``EngineEntry``, ``Overlay`` ...; ``Bundle.typed_manifest``): ``Manifest.from_dict``/``from_bytes`` is
the one verifier (schema from the type hints, runtime/typed_json.py) and ``to_json`` the one
serializer; ``write_manifest``/``write_overlay`` validate through the former and write with the latter.

Optional manifest section "confidence" (runtime/confidence.py): temperature + abstention threshold.
Bundles without these sections load unchanged (no abstention, quality "unchecked").
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.confidence import Calibration
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.manifest import (  # noqa: F401  (the manifest types and constants, re-exported here)
    ARTIFACT_STATUSES, ENGINE_PINNED_KEYS, FORMATS, MANIFEST_NAME, MAX_TOLERANCE, OPTIONAL_FILES, OVERLAY_NAME,
    OVERLAY_SCHEMA, OVERLAY_SCHEMA_VERSION, SCHEMA, SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, Artifact, EngineEntry,
    EngineEnv, FailedArtifact, FileRef, InputSpec, Manifest, OutputSpec, Overlay, OverlaySource,
)
from stethoedge.runtime.outputs import atomic_write_text  # noqa: F401  (re-exported: export/ and train/ import it here)
from stethoedge.runtime.quality import QualityGate
from stethoedge.runtime.typed_json import dump, parse_json, to_json  # noqa: F401  (to_json: the one serializer)

SELFTEST_NAME = "selftest.npz"
#: Maximum abs difference between numpy features and the training (torch) features of the
#: self-test audio; the parity contract of the feature spec.
FEATURE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SelfTest:
    """Reference windows with the training-side features and PyTorch logits."""

    audio: np.ndarray  # (k, window_samples) float32
    features: np.ndarray  # (k, frames, mels) float32, from the torch implementation
    logits: np.ndarray  # (k, classes) float32, PyTorch


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle. ``typed_manifest`` is the manifest as types (runtime/manifest.py);
    ``manifest`` the same document as the JSON dict it was read from (kept for compatibility)."""

    root: Path
    manifest: dict[str, Any]
    spec: FeatureSpec
    labels: tuple[str, ...]
    artifacts: dict[str, Artifact]
    selftest: SelfTest
    #: calibrated confidence + abstention (manifest "confidence"; identity when absent)
    calibration: Calibration = field(default_factory=Calibration)
    #: signal-quality gate (manifest "quality"; None: windows are "unchecked")
    quality: QualityGate | None = None
    #: the verified engines.json overlay (device-built TensorRT engines), None when absent
    overlay: Overlay | None = None
    #: the typed manifest (built from ``manifest`` when not given)
    typed_manifest: Manifest = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.typed_manifest is None:
            object.__setattr__(self, "typed_manifest", Manifest.from_dict(self.manifest, str(self.root / MANIFEST_NAME)))

    def artifact(self, name: str | None = None, allow_failed: bool = False) -> Artifact:
        """The named artifact (default: the manifest's default); refuses failed ones unless allowed."""
        name = name or self.typed_manifest.default_artifact
        if name not in self.artifacts:
            built = self.typed_manifest.failed(name)
            why = f" ({name} could not be built at export: {built.reason})" if built else ""
            raise BundleError(f"{self.root}: no artifact {name!r}{why}; it has {', '.join(self.artifacts)} "
                              "(choose one with --artifact)")
        art = self.artifacts[name]
        if art.status != "passed" and not allow_failed:
            raise BundleError(
                f"{self.root}: artifact {name!r} failed verification at export ({art.status}); "
                "pick another with --artifact or pass --allow-degraded"
            )
        return art

    @property
    def files(self) -> dict[str, str]:
        """{file name: sha256} of every file the runtime may read: the manifest's pins plus the overlay's."""
        return {**self.typed_manifest.files, **(self.overlay.files if self.overlay else {})}

    def path_of(self, artifact: Artifact) -> Path:
        """Absolute path of an artifact's file."""
        return self.root / artifact.file


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> Manifest:
    """The typed manifest; BundleError (one line, key path) unless ``manifest`` is a well-formed manifest."""
    return Manifest.from_dict(manifest, where)


def pinned_files(manifest: Manifest | dict[str, Any]) -> dict[str, str]:
    """{file name: sha256} of every file a manifest pins: artifacts, self-test, calibration set,
    calibration cache, quality gate (``Manifest.files``). ``load_bundle`` verifies all of them."""
    return _typed(manifest).files


def _typed(manifest: Manifest | dict[str, Any]) -> Manifest:
    return manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refused when it (a symlink) resolves outside the bundle directory."""
    path = root / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"{root}: {name} cannot be resolved ({exc})") from None
    if not real.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: {name} is a link to {real}, outside the bundle directory; refusing to read it")
    return path


def _verify_file(root: Path, name: str, expected_sha: str, pinned_by: str = "the manifest") -> Path:
    """``root / name`` after checking it is inside the bundle and matches ``expected_sha``."""
    path = _inside(root, name)
    if not path.is_file():
        raise BundleError(f"{root}: file {name!r} named in {pinned_by} is missing")
    actual = sha256_file(path)
    if actual != expected_sha:
        raise BundleError(f"{root}: {name} does not match its sha256 in {pinned_by} (tampered or corrupted)")
    return path


def read_verified(root: Path, name: str, expected_sha: str) -> bytes:
    """The bytes of a pinned file, read once and checked against ``expected_sha`` (no check-then-read race)."""
    path = _inside(root, name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{root}: cannot read {name!r} named in the manifest ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != expected_sha:
        raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (tampered or corrupted)")
    return data


def load_selftest(path: Path, spec: FeatureSpec, n_classes: int) -> SelfTest:
    """Read and shape-check selftest.npz (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float32) for k in ("audio", "features", "logits")}
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable self-test file ({exc})") from None
    k = arrays["audio"].shape[0]
    if arrays["audio"].shape != (k, spec.window_samples) or k == 0:
        raise BundleError(f"{path}: self-test audio has shape {arrays['audio'].shape}")
    if arrays["features"].shape != (k, *spec.input_shape):
        raise BundleError(f"{path}: self-test features have shape {arrays['features'].shape}, expected {(k, *spec.input_shape)}")
    if arrays["logits"].shape != (k, n_classes):
        raise BundleError(f"{path}: self-test logits have shape {arrays['logits'].shape}")
    return SelfTest(**arrays)


def new_overlay(manifest: Manifest | dict[str, Any], onnx_artifact: str = "onnx-fp32") -> Overlay:
    """An empty engines.json overlay pinned to the signed manifest's ``onnx_artifact`` sha256."""
    art = _typed(manifest).artifact(onnx_artifact)
    if art is None or art.format != "onnx":
        raise BundleError(f"{MANIFEST_NAME}: no ONNX artifact {onnx_artifact!r} to build engines from")
    return Overlay(onnx=OverlaySource(onnx_artifact, art.sha256))


def validate_overlay(overlay: Any, manifest: Manifest | dict[str, Any], where: str = OVERLAY_NAME) -> Overlay:
    """The typed overlay; BundleError unless ``overlay`` (JSON data or an ``Overlay``) is a well-formed
    engines.json for this manifest: pinned to the sha256 of one of its ONNX artifacts, TensorRT entries
    only, each recording the TensorRT/CUDA/GPU it was built with, never replacing a signed artifact."""
    typed = Overlay.from_json(dump(overlay) if isinstance(overlay, Overlay) else overlay, where)
    signed = {a.name: a for a in _typed(manifest).artifacts}
    source = signed.get(typed.onnx.artifact)
    if source is None or source.format != "onnx" or source.sha256 != typed.onnx.sha256:
        raise BundleError(f"{where}: the engines were built from another model (ONNX {typed.onnx.artifact} sha256 "
                          f"{typed.onnx.sha256[:12]}... is not in {MANIFEST_NAME}); rebuild them with "
                          f"stethoedge build-engine or delete {OVERLAY_NAME}")
    for i, art in enumerate(typed.engines):
        what = f"{where}: engines[{i}]"
        if art.name in signed:
            raise BundleError(f"{what} {art.name!r} would replace a signed artifact; an overlay only adds engines")
        if art.format != "tensorrt":
            raise BundleError(f"{what} is {art.format}; an overlay holds TensorRT engines only")
        missing = [k for k in ENGINE_PINNED_KEYS if not getattr(art.engine, k)]
        if missing:
            raise BundleError(f"{what} does not record the {', '.join(missing)} it was built with")
    return typed


def overlay_files(overlay: Overlay | dict[str, Any]) -> dict[str, str]:
    """{file name: sha256} of every file an overlay pins (``Overlay.files``)."""
    return (overlay if isinstance(overlay, Overlay) else Overlay.from_json(overlay, OVERLAY_NAME)).files


def read_overlay(root: Path, manifest: Manifest | dict[str, Any]) -> Overlay | None:
    """The bundle's engines.json, validated against ``manifest`` with every file it pins verified; None if absent."""
    path = _inside(root, OVERLAY_NAME)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    overlay = validate_overlay(parse_json(data, path), manifest, str(path))
    signed = pinned_files(manifest)
    for name, sha in overlay.files.items():
        if name in (MANIFEST_NAME, OVERLAY_NAME) or (name in signed and signed[name] != sha):
            raise BundleError(f"{path}: {name} is a file the signed manifest pins (or the manifest itself); "
                              "an overlay may not re-pin it")
        _verify_file(root, name, sha, OVERLAY_NAME)
    return overlay


def write_overlay(root: Path, overlay: Overlay | dict[str, Any]) -> Path:
    """Validate ``overlay`` against the bundle's manifest and write engines.json atomically (``to_json``)."""
    manifest = Manifest.from_bytes((root / MANIFEST_NAME).read_bytes(), root / MANIFEST_NAME)
    path = root / OVERLAY_NAME
    atomic_write_text(path, to_json(validate_overlay(overlay, manifest, str(path))))
    return path


def load_bundle(path: str | os.PathLike, require_signature: str | os.PathLike | None = None) -> Bundle:
    """Load and verify a bundle directory: schema, sha256 of every pinned file, self-test shapes.

    manifest.json is read ONCE: those bytes are signature-checked (``require_signature``: path of
    an Ed25519 public key, PEM; see ``stethoedge.runtime.signing``) and parsed into a ``Manifest``.
    Every file it pins (``Manifest.files``) is verified, then the optional engines.json overlay
    (device-built TensorRT engines, ``read_overlay``) is verified and merged into ``artifacts``.
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{root}: no {MANIFEST_NAME}; not a stethoedge bundle")
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot read ({exc.strerror})") from None
    if require_signature is not None:
        from stethoedge.runtime.signing import verify_manifest_bytes

        verify_manifest_bytes(root, data, require_signature)
    manifest = Manifest.from_bytes(data, manifest_path)
    for name, sha in manifest.files.items():  # artifacts, self-test, calibration set/cache, quality
        _verify_file(root, name, sha)
    artifacts = {art.name: art for art in manifest.artifacts}
    selftest = load_selftest(root / manifest.selftest.file, manifest.feature_spec, len(manifest.labels))
    quality = QualityGate.from_file(root / manifest.quality.file) if manifest.quality is not None else None
    overlay = read_overlay(root, manifest)
    if overlay is not None:
        artifacts.update({art.name: art for art in overlay.engines})
    return Bundle(root, manifest.data, manifest.feature_spec, manifest.labels, artifacts, selftest,
                  Calibration.from_section(manifest.confidence), quality, overlay, manifest)


def write_manifest(root: Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Validate and write manifest.json atomically: the only writer of manifests (exporter, bundle-update),
    through the one verifier (``Manifest.from_dict``) and the one serializer (``to_json``)."""
    path = root / MANIFEST_NAME
    atomic_write_text(path, Manifest.from_dict(dump(manifest), str(path)).to_json())
    return path
