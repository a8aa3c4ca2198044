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

Optional manifest section "confidence" (runtime/confidence.py): temperature + abstention threshold.
Bundles without these sections load unchanged (no abstention, quality "unchecked").
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.confidence import Calibration, validate_confidence
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.outputs import atomic_write_text  # noqa: F401  (re-exported: export/ and train/ import it here)
from stethoedge.runtime.quality import QualityGate

SCHEMA = "stethoedge.bundle"
SCHEMA_VERSION = 2
#: Versions this runtime reads. Version 2 added the "failed" status (+ reason), optional
#: per-artifact "engine" (TensorRT build environment), "failed_artifacts" and "calibration".
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
SELFTEST_NAME = "selftest.npz"
#: Maximum abs difference between numpy features and the training (torch) features of the
#: self-test audio; the parity contract of the feature spec.
FEATURE_TOLERANCE = 1e-4

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "schema_version": int,
    "labels": list,
    "feature_spec": dict,
    "input": dict,
    "output": dict,
    "artifacts": list,
    "default_artifact": str,
    "selftest": dict,
}
_ARTIFACT_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "file": str,
    "format": str,
    "precision": str,
    "sha256": str,
    "size_bytes": int,
    "tolerance": (int, float),
    "status": str,
}
ARTIFACT_STATUSES = ("passed", "failed-verification")
#: Artifacts that could not be built at all are listed under "failed_artifacts" with
#: status "failed" and a reason (they have no file).
#: Artifact formats this runtime knows how to open.
FORMATS = ("onnx", "tflite", "tensorrt")
#: Largest self-test logit tolerance an artifact may state: a bigger (or NaN) one would
#: switch the self-test's logit check off.
MAX_TOLERANCE = 100.0
#: Optional top-level file references ({"file", "sha256"}) read by build-engine on the target.
OPTIONAL_FILES = ("calibration", "calibration_cache")
#: Device-local overlay written by ``build-engine``: TensorRT engines built ON the device, pinned to
#: the signed ONNX's sha256 and the device's TensorRT/CUDA/GPU. The signed manifest is never rewritten,
#: so the owner's manifest.sig stays valid (docs/EXPORT.md, "Engine overlay").
OVERLAY_NAME = "engines.json"
OVERLAY_SCHEMA = "stethoedge.engines"
OVERLAY_SCHEMA_VERSION = 1
#: Build-environment keys every overlay engine must record (compared with the device at backend open).
ENGINE_PINNED_KEYS = ("tensorrt", "cuda", "gpu")


@dataclass(frozen=True)
class Artifact:
    """One model file of a bundle."""

    name: str
    file: str
    format: str
    precision: str
    sha256: str
    size_bytes: int
    tolerance: float  # max abs logit difference to the self-test's expected logits
    status: str
    verification: dict[str, Any]
    engine: dict[str, Any] | None = None  # TensorRT: the versions the engine was built with


@dataclass(frozen=True)
class SelfTest:
    """Reference windows with the training-side features and PyTorch logits."""

    audio: np.ndarray  # (k, window_samples) float32
    features: np.ndarray  # (k, frames, mels) float32, from the torch implementation
    logits: np.ndarray  # (k, classes) float32, PyTorch


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

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
    overlay: dict[str, Any] | None = None

    def artifact(self, name: str | None = None, allow_failed: bool = False) -> Artifact:
        """The named artifact (default: the manifest's default); refuses failed ones unless allowed."""
        name = name or self.manifest["default_artifact"]
        if name not in self.artifacts:
            built = next((f for f in self.manifest.get("failed_artifacts", []) if f["name"] == name), None)
            why = f" ({name} could not be built at export: {built['reason']})" if built else ""
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
        return {**pinned_files(self.manifest), **(overlay_files(self.overlay) if self.overlay else {})}

    def path_of(self, artifact: Artifact) -> Path:
        """Absolute path of an artifact's file."""
        return self.root / artifact.file


def to_json(document: dict[str, Any]) -> str:
    """The one serializer of bundle JSON documents (manifest.json, engines.json): 2-space indent,
    key order kept, trailing newline (byte-identical to what exporters have always written)."""
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


@dataclass(frozen=True)
class Manifest:
    """Typed view of a validated manifest.json. ``data`` is kept whole, so keys this runtime does not
    model (model, source, versions, ...) round-trip unchanged through ``to_dict``/``to_json``."""

    data: dict[str, Any]
    labels: tuple[str, ...]
    artifacts: tuple[Artifact, ...]
    default_artifact: str

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        """Validate (``validate_manifest``: BundleError with the exact problem) and wrap ``data``."""
        validate_manifest(data, where)
        return cls(data, tuple(data["labels"]), tuple(_artifact_of(a) for a in data["artifacts"]),
                   data["default_artifact"])

    @classmethod
    def from_bytes(cls, raw: bytes, where: str | Path = MANIFEST_NAME) -> "Manifest":
        """Parse and validate the exact bytes of a manifest.json (those a signature covers)."""
        return cls.from_dict(_parse_json(raw, Path(where)), str(where))

    @property
    def files(self) -> dict[str, str]:
        """{file name: sha256} of every file this manifest pins (all verified by ``load_bundle``)."""
        return pinned_files(self.data)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the manifest as JSON-ready data."""
        return json.loads(json.dumps(self.data))

    def to_json(self) -> str:
        """manifest.json text (``to_json``, the one serializer)."""
        return to_json(self.data)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_types(obj: dict[str, Any], required: dict[str, Any], where: str) -> None:
    for key, typ in required.items():
        if key not in obj:
            raise BundleError(f"{where}: missing key {key!r}")
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise BundleError(f"{where}: key {key!r} has the wrong type ({type(obj[key]).__name__})")


def validate_manifest(manifest: Any, where: str = MANIFEST_NAME) -> None:
    """Raise BundleError unless ``manifest`` is a well-formed schema-1 manifest."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: not a JSON object")
    if manifest.get("schema") != SCHEMA:
        raise BundleError(f"{where}: not a stethoedge bundle manifest (schema {manifest.get('schema')!r})")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
        raise BundleError(
            f"{where}: bundle schema version {version!r} is not supported by this runtime "
            f"(supports {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); re-export the model or upgrade stethoedge"
        )
    _check_types(manifest, _REQUIRED, where)
    if not manifest["artifacts"]:
        raise BundleError(f"{where}: lists no artifacts")
    names: set[str] = set()
    for i, art in enumerate(manifest["artifacts"]):
        _validate_artifact(art, f"{where}: artifacts[{i}]", names, where)
    failed = manifest.get("failed_artifacts", [])
    if not isinstance(failed, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("reason"), str) for f in failed
    ):
        raise BundleError(f"{where}: failed_artifacts must be a list of objects with a name and a reason")
    if manifest["default_artifact"] not in names:
        raise BundleError(f"{where}: default_artifact {manifest['default_artifact']!r} is not among the artifacts")
    _check_labels(manifest["labels"], where)
    shape = manifest["input"].get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) for s in shape[1:])):
        raise BundleError(f"{where}: input.shape must be [batch, frames, mels]")
    out_shape = manifest["output"].get("shape")
    if not (isinstance(out_shape, list) and len(out_shape) == 2 and _is_int(out_shape[1])):
        raise BundleError(f"{where}: output.shape must be [batch, classes]")
    if out_shape[1] != len(manifest["labels"]):
        raise BundleError(f"{where}: the model outputs {out_shape[1]} classes (output.shape) but there are "
                          f"{len(manifest['labels'])} labels; they must match one to one")
    st = manifest["selftest"]
    if not (isinstance(st.get("file"), str) and _is_sha256(st.get("sha256"))):
        raise BundleError(f"{where}: selftest must name a file and its sha256 (64 hex digits)")
    _check_file_name(st["file"], f"{where}: selftest file")
    for key in OPTIONAL_FILES:
        ref = manifest.get(key)
        if ref is None:
            continue
        if not (isinstance(ref, dict) and isinstance(ref.get("file"), str) and _is_sha256(ref.get("sha256"))):
            raise BundleError(f"{where}: {key} must name a file and its sha256 (64 hex digits)")
        _check_file_name(ref["file"], f"{where}: {key} file")
    if manifest.get("confidence") is not None:
        validate_confidence(manifest["confidence"], where)
    quality = manifest.get("quality")
    if quality is not None:
        if not (isinstance(quality, dict) and isinstance(quality.get("file"), str) and _is_sha256(quality.get("sha256"))):
            raise BundleError(f"{where}: quality must name a file and its sha256 (64 hex digits)")
        _check_file_name(quality["file"], f"{where}: quality file")
    try:
        FeatureSpec.from_dict(manifest["feature_spec"])
    except BundleError as exc:
        raise BundleError(f"{where}: {exc}") from None


def _validate_artifact(art: Any, what: str, names: set[str], where: str) -> None:
    """Check one artifact entry (``what`` prefixes messages); adds its name to ``names``."""
    if not isinstance(art, dict):
        raise BundleError(f"{what} is not an object")
    _check_types(art, _ARTIFACT_REQUIRED, what)
    if art["status"] not in ARTIFACT_STATUSES:
        raise BundleError(f"{what} has unknown status {art['status']!r}")
    if art["format"] not in FORMATS:
        raise BundleError(f"{what} has unknown format {art['format']!r}")
    if not isinstance(art.get("verification", {}), dict):
        raise BundleError(f"{what} verification must be an object")
    if art["format"] == "tensorrt" and not isinstance(art.get("engine"), dict):
        raise BundleError(f"{what} is a TensorRT engine without its 'engine' versions entry")
    if not (isinstance(art["sha256"], str) and len(art["sha256"]) == 64):
        raise BundleError(f"{what} sha256 must be 64 hex digits")
    if art["name"] in names:
        raise BundleError(f"{where}: artifact name {art['name']!r} appears twice")
    _check_file_name(art["file"], f"{what} file")
    tolerance = art["tolerance"]
    if isinstance(tolerance, bool) or not (math.isfinite(tolerance) and 0 <= tolerance <= MAX_TOLERANCE):
        raise BundleError(f"{what} tolerance {tolerance!r} must be a finite number "
                          f"0 <= tolerance <= {MAX_TOLERANCE:g} (max abs logit difference of the self-test)")
    names.add(art["name"])


def pinned_files(manifest: dict[str, Any]) -> dict[str, str]:
    """{file name: sha256} of every file a (validated) manifest pins: artifacts, self-test,
    calibration set, calibration cache, quality gate. ``load_bundle`` verifies all of them."""
    files: dict[str, str] = {}
    refs = [*manifest["artifacts"], manifest["selftest"],
            *(manifest[k] for k in (*OPTIONAL_FILES, "quality") if manifest.get(k) is not None)]
    for ref in refs:
        if files.get(ref["file"], ref["sha256"]) != ref["sha256"]:
            raise BundleError(f"{MANIFEST_NAME}: {ref['file']} is pinned twice with different sha256 values")
        files[ref["file"]] = ref["sha256"]
    return files


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def _check_file_name(name: str, what: str) -> None:
    """A file reference must be a plain file name in the bundle directory: no path, no '..', not absolute."""
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name or "\0" in name:
        raise BundleError(f"{what} {name!r} must be a plain file name inside the bundle directory "
                          "(no absolute path, no directory, no '..')")


def _check_labels(labels: list[Any], where: str) -> None:
    """Labels: at least two unique, non-empty, printable strings without surrounding spaces."""
    if len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise BundleError(f"{where}: labels must be a list of at least two strings")
    for i, label in enumerate(labels):
        if not label.strip() or label != label.strip() or not label.isprintable():
            raise BundleError(f"{where}: labels[{i}] {label!r} must be a non-empty printable name "
                              "without leading or trailing spaces")
    seen: set[str] = set()
    dupes: set[str] = set()
    for label in labels:
        (dupes if label in seen else seen).add(label)
    if dupes:
        raise BundleError(f"{where}: labels must be unique; {', '.join(map(repr, sorted(dupes)))} appears more than once "
                          "(the probabilities of one class would be dropped)")


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


def _artifact_of(art: dict[str, Any]) -> Artifact:
    return Artifact(
        name=art["name"], file=art["file"], format=art["format"], precision=art["precision"],
        sha256=art["sha256"], size_bytes=art["size_bytes"], tolerance=float(art["tolerance"]),
        status=art["status"], verification=dict(art.get("verification", {})), engine=art.get("engine"),
    )


def _parse_json(data: bytes, where: Path) -> Any:
    try:
        # utf-8-sig: a byte-order mark (some Windows editors add one) is harmless; a signature
        # covers the exact bytes, BOM included.
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None


def new_overlay(manifest: dict[str, Any], onnx_artifact: str = "onnx-fp32") -> dict[str, Any]:
    """An empty engines.json overlay pinned to the signed manifest's ``onnx_artifact`` sha256."""
    art = next((a for a in manifest["artifacts"] if a["name"] == onnx_artifact), None)
    if art is None or art["format"] != "onnx":
        raise BundleError(f"{MANIFEST_NAME}: no ONNX artifact {onnx_artifact!r} to build engines from")
    return {"schema": OVERLAY_SCHEMA, "schema_version": OVERLAY_SCHEMA_VERSION,
            "onnx": {"artifact": onnx_artifact, "sha256": art["sha256"]}, "engines": []}


def validate_overlay(overlay: Any, manifest: dict[str, Any], where: str = OVERLAY_NAME) -> None:
    """Raise BundleError unless ``overlay`` is a well-formed engines.json for this (validated) manifest:
    pinned to the sha256 of one of its ONNX artifacts, TensorRT entries only, each recording the
    TensorRT/CUDA/GPU it was built with, never replacing a signed artifact."""
    if not isinstance(overlay, dict) or overlay.get("schema") != OVERLAY_SCHEMA:
        raise BundleError(f"{where}: not a stethoedge engine overlay (schema {OVERLAY_SCHEMA!r})")
    if overlay.get("schema_version") != OVERLAY_SCHEMA_VERSION or isinstance(overlay.get("schema_version"), bool):
        raise BundleError(f"{where}: overlay schema version {overlay.get('schema_version')!r} is not supported "
                          f"(supports {OVERLAY_SCHEMA_VERSION}); rebuild the engines with stethoedge build-engine")
    onnx = overlay.get("onnx")
    if not (isinstance(onnx, dict) and isinstance(onnx.get("artifact"), str) and _is_sha256(onnx.get("sha256"))):
        raise BundleError(f"{where}: onnx must name the signed ONNX artifact and its sha256")
    signed = {a["name"]: a for a in manifest["artifacts"]}
    source = signed.get(onnx["artifact"])
    if source is None or source["format"] != "onnx" or source["sha256"] != onnx["sha256"]:
        raise BundleError(f"{where}: the engines were built from another model (ONNX {onnx['artifact']} sha256 "
                          f"{onnx['sha256'][:12]}... is not in {MANIFEST_NAME}); rebuild them with "
                          f"stethoedge build-engine or delete {OVERLAY_NAME}")
    engines = overlay.get("engines")
    if not isinstance(engines, list):
        raise BundleError(f"{where}: engines must be a list")
    names = set(signed)
    for i, art in enumerate(engines):
        what = f"{where}: engines[{i}]"
        if isinstance(art, dict) and art.get("name") in signed:
            raise BundleError(f"{what} {art['name']!r} would replace a signed artifact; an overlay only adds engines")
        _validate_artifact(art, what, names, where)
        if art["format"] != "tensorrt":
            raise BundleError(f"{what} is {art['format']}; an overlay holds TensorRT engines only")
        env = art["engine"]
        missing = [k for k in ENGINE_PINNED_KEYS if not (isinstance(env.get(k), str) and env[k])]
        if missing:
            raise BundleError(f"{what} does not record the {', '.join(missing)} it was built with")
    cache = overlay.get("calibration_cache")
    if cache is not None:
        if not (isinstance(cache, dict) and isinstance(cache.get("file"), str) and _is_sha256(cache.get("sha256"))):
            raise BundleError(f"{where}: calibration_cache must name a file and its sha256 (64 hex digits)")
        _check_file_name(cache["file"], f"{where}: calibration_cache file")


def overlay_files(overlay: dict[str, Any]) -> dict[str, str]:
    """{file name: sha256} of every file a (validated) overlay pins."""
    refs = [*overlay["engines"], *([overlay["calibration_cache"]] if overlay.get("calibration_cache") else [])]
    return {ref["file"]: ref["sha256"] for ref in refs}


def read_overlay(root: Path, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's engines.json, validated against ``manifest`` with every file it pins verified; None if absent."""
    path = _inside(root, OVERLAY_NAME)
    if not path.exists():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror})") from None
    overlay = _parse_json(data, path)
    validate_overlay(overlay, manifest, str(path))
    signed = pinned_files(manifest)
    for name, sha in overlay_files(overlay).items():
        if name in (MANIFEST_NAME, OVERLAY_NAME) or (name in signed and signed[name] != sha):
            raise BundleError(f"{path}: {name} is a file the signed manifest pins (or the manifest itself); "
                              "an overlay may not re-pin it")
        _verify_file(root, name, sha, OVERLAY_NAME)
    return overlay


def write_overlay(root: Path, overlay: dict[str, Any]) -> Path:
    """Validate ``overlay`` against the bundle's manifest and write engines.json atomically."""
    manifest = _parse_json((root / MANIFEST_NAME).read_bytes(), root / MANIFEST_NAME)
    validate_overlay(overlay, manifest, str(root / OVERLAY_NAME))
    path = root / OVERLAY_NAME
    atomic_write_text(path, to_json(overlay))
    return path


def load_bundle(path: str | os.PathLike, require_signature: str | os.PathLike | None = None) -> Bundle:
    """Load and verify a bundle directory: schema, sha256 of every pinned file, self-test shapes.

    manifest.json is read ONCE: those bytes are signature-checked (``require_signature``: path of
    an Ed25519 public key, PEM; see ``stethoedge.runtime.signing``) and parsed. Every file the
    manifest pins (``pinned_files``) is verified, then the optional engines.json overlay
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
    manifest = Manifest.from_bytes(data, manifest_path).data
    spec = FeatureSpec.from_dict(manifest["feature_spec"])
    if list(manifest["input"]["shape"][1:]) != list(spec.input_shape):
        raise BundleError(
            f"{manifest_path}: input shape {manifest['input']['shape']} disagrees with the feature spec {spec.input_shape}"
        )
    labels = tuple(manifest["labels"])
    for name, sha in pinned_files(manifest).items():  # artifacts, self-test, calibration set/cache, quality
        _verify_file(root, name, sha)
    artifacts = {art["name"]: _artifact_of(art) for art in manifest["artifacts"]}
    st = manifest["selftest"]
    selftest = load_selftest(root / st["file"], spec, len(labels))
    calibration = Calibration.from_manifest(manifest)
    quality = None
    if manifest.get("quality") is not None:
        quality = QualityGate.from_file(root / manifest["quality"]["file"])
    overlay = read_overlay(root, manifest)
    if overlay is not None:
        artifacts.update({art["name"]: _artifact_of(art) for art in overlay["engines"]})
    return Bundle(root, manifest, spec, labels, artifacts, selftest, calibration, quality, overlay)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Validate and write manifest.json atomically (the only writer of manifests: exporter, bundle-update)."""
    path = root / MANIFEST_NAME
    atomic_write_text(path, Manifest.from_dict(manifest, str(path)).to_json())
    return path
