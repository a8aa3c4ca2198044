"""The bundle manifest as types (issue 13): ``Manifest``, ``Artifact``, ``FileRef``, ``EngineEnv`` ...

``Manifest.from_json(data, "manifest.json")`` is the one verifier (the schema comes from the type
hints through runtime/typed_json.py; ranges, enums, sha256 and file-name safety are declared next to
each field; cross-field rules in ``problem()``); ``to_json(manifest)`` is the one writer (exporter,
bundle-update, build-engine's engines.json overlay). Keys this runtime does not model (model,
source, versions, an artifact's export_seconds ...) are kept in ``extra`` and written back unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stethoedge.runtime.confidence import ConfidenceSection
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.typed_json import Record, constrained, finite, parse_json, to_json

SCHEMA = "stethoedge.bundle"
SCHEMA_VERSION = 2
#: Versions this runtime reads. Version 2 added the "failed" status (+ reason), optional
#: per-artifact "engine" (TensorRT build environment), "failed_artifacts" and "calibration".
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
ARTIFACT_STATUSES = ("passed", "failed-verification")
#: Artifact formats this runtime knows how to open.
FORMATS = ("onnx", "tflite", "tensorrt")
#: Largest self-test logit tolerance an artifact may state: a bigger (or NaN) one would
#: switch the self-test's logit check off.
MAX_TOLERANCE = 100.0
#: Optional top-level file references ({"file", "sha256"}) read by build-engine on the target.
OPTIONAL_FILES = ("calibration", "calibration_cache")
OVERLAY_NAME = "engines.json"
OVERLAY_SCHEMA = "stethoedge.engines"
OVERLAY_SCHEMA_VERSION = 1
#: Build-environment keys every overlay engine must record (compared with the device at backend open).
ENGINE_PINNED_KEYS = ("tensorrt", "cuda", "gpu")
#: Keys of the engine entry that must match the device exactly for an engine to be loaded: the
#: TensorRT version, the CUDA version (full, then major for entries that only recorded the major)
#: and the GPU name. A key the engine recorded that the device cannot report is refused.
MATCH_KEYS = ("tensorrt", "cuda", "cuda_major", "gpu")

_OMIT = {"omit_none": True}  # an optional section: absent, never written as null


def is_sha256(value: Any) -> bool:
    """64 hex digits."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower())


def is_plain_file_name(name: Any) -> bool:
    """A plain file name in the bundle directory: no path, no '..', not absolute, not empty."""
    return isinstance(name, str) and bool(name) and name not in (".", "..") and Path(name).name == name and not any(
        c in name for c in "/\\\0")


def _file_field() -> Any:
    return constrained(is_plain_file_name, "{v} must be a plain file name inside the bundle directory "
                                           "(no absolute path, no directory, no '..')")


def _sha_field() -> Any:
    return constrained(is_sha256, "{v} must be 64 hex digits")


@dataclass(frozen=True)
class FileRef(Record):
    """A file of the bundle pinned by its sha256 (selftest, calibration set/cache, quality gate)."""

    LAYOUT = ("file", "sha256")
    file: str = _file_field()
    sha256: str = _sha_field()


def compare_engine_env(recorded: Any, current: Any) -> list[str]:
    """Mismatches between the environment an engine was built in and this device's (pure function;
    dicts or ``EngineEnv``).

    Every key of ``MATCH_KEYS`` the engine recorded must equal the device's value; a recorded key
    the device cannot determine (None) is a mismatch too ("unknown"), never a silent pass. Keys the
    engine did not record (older entries) are skipped, except TensorRT and the GPU, which are required.
    """
    recorded, current = _env_dict(recorded), _env_dict(current)
    problems = []
    for key in MATCH_KEYS:
        built, here = recorded.get(key), current.get(key)
        if built in (None, "") and key not in ("tensorrt", "gpu"):
            continue
        if built in (None, ""):
            problems.append(f"{key} not recorded by the engine (built before GPU checks; rebuild it)")
        elif here in (None, ""):
            problems.append(f"{key} {built} (engine) vs unknown (this device cannot report its {key})")
        elif str(built).strip() != str(here).strip():
            problems.append(f"{key} {built} (engine) vs {here} (this device)")
    return problems


def _env_dict(env: Any) -> dict[str, Any]:
    return env.to_dict() if isinstance(env, EngineEnv) else dict(env or {})


@dataclass(frozen=True)
class EngineEnv(Record):
    """The environment a TensorRT engine is tied to (recorded in its entry as ``engine``)."""

    LAYOUT = ("tensorrt", "cuda", "cuda_major", "gpu", "l4t", "jetpack")
    tensorrt: str | None = None
    cuda: str | None = None
    cuda_major: str | None = None
    gpu: str | None = None
    l4t: str | None = None
    jetpack: str | None = None

    @classmethod
    def current(cls) -> "EngineEnv":
        """This device's environment (GPU name included)."""
        from stethoedge.runtime.backends.tensorrt_backend import device_environment, gpu_name

        return cls.from_dict(device_environment(gpu=gpu_name()))

    @classmethod
    def from_dict(cls, data: Any) -> "EngineEnv":
        """From an engine entry or ``device_environment()`` (values as strings; builder, max_batch ... ignored)."""
        data = _env_dict(data)
        return EngineEnv(**{k: (None if data.get(k) is None else str(data[k])) for k in EngineEnv.LAYOUT})

    def to_dict(self) -> dict[str, Any]:
        """The environment keys only, as ``device_environment`` reports them."""
        return {k: getattr(self, k) for k in EngineEnv.LAYOUT}

    def mismatches(self, built: Any) -> list[str]:
        """``compare_engine_env(built, self)``: why an engine built in ``built`` cannot run here."""
        return compare_engine_env(built, self)


@dataclass(frozen=True)
class EngineEntry(EngineEnv):
    """A TensorRT artifact's ``engine`` entry: its build environment plus how it was built.
    Reads like the dict it used to be (``entry["gpu"]``, ``entry.get("onnx_sha256")``)."""

    LAYOUT = (*EngineEnv.LAYOUT, "builder", "max_batch", "onnx_sha256", "build_seconds", "calibration_cache")
    builder: str | None = None
    max_batch: int | None = None
    onnx_sha256: str | None = None
    build_seconds: float | None = None
    calibration_cache: str | None = None

    @property
    def env(self) -> EngineEnv:
        """The environment part (what the device is compared with)."""
        return EngineEnv.from_dict(self)

    def to_dict(self) -> dict[str, Any]:
        """The whole entry as JSON data."""
        return Record.to_dict(self)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``entry.get(key)`` as on the JSON object."""
        return self.to_dict().get(key, default)


@dataclass(frozen=True)
class Artifact(Record):
    """One model file of a bundle (``artifacts[i]`` of manifest.json, ``engines[i]`` of engines.json)."""

    LAYOUT = ("name", "file", "format", "precision", "sha256", "size_bytes", "tolerance", "status", "calibrated_on",
              "export_seconds", "verification", "engine")
    name: str
    file: str = _file_field()
    format: str = constrained(lambda v: v in FORMATS, f"has unknown format {{v}} (this runtime opens {', '.join(FORMATS)})")
    precision: str = field()
    sha256: str = _sha_field()
    size_bytes: int = constrained(lambda v: v >= 0, "{v} must be an integer >= 0 (the file size in bytes)")
    #: max abs logit difference to the self-test's expected logits
    tolerance: float = constrained(lambda v: finite(v) and 0 <= v <= MAX_TOLERANCE,
                                   f"{{v}} must be a finite number 0 <= tolerance <= {MAX_TOLERANCE:g} "
                                   "(max abs logit difference of the self-test)")
    status: str = constrained(lambda v: v in ARTIFACT_STATUSES,
                              f"has unknown status {{v}} (one of {', '.join(ARTIFACT_STATUSES)})")
    verification: dict[str, Any] = field(default_factory=dict, metadata={"expect": "must be an object"})
    #: TensorRT: the versions the engine was built with
    engine: EngineEntry | None = field(default=None, metadata=_OMIT)

    def problem(self) -> str | None:
        if self.format == "tensorrt" and self.engine is None:
            return "is a TensorRT engine without its 'engine' versions entry"
        return None


@dataclass(frozen=True)
class FailedArtifact(Record):
    """An artifact that could not be built at export (no file): ``failed_artifacts[i]``."""

    LAYOUT = ("name", "format", "precision", "status", "reason")
    name: str
    reason: str
    format: str | None = None
    precision: str | None = None
    status: str | None = None


@dataclass(frozen=True)
class InputSpec(Record):
    """The model input: ``[batch, frames, mels]`` float32 features."""

    LAYOUT = ("name", "shape", "dtype")
    shape: tuple[int | None, int, int] = field(metadata={"expect": "must be [batch, frames, mels]"})
    name: str = "features"
    dtype: str = "float32"


@dataclass(frozen=True)
class OutputSpec(Record):
    """The model output: ``[batch, classes]`` float32 logits."""

    LAYOUT = ("name", "shape", "dtype", "kind")
    shape: tuple[int | None, int] = field(metadata={"expect": "must be [batch, classes]"})
    name: str = "logits"
    dtype: str = "float32"
    kind: str = "logits"


def label_problem(labels: tuple[str, ...]) -> str | None:
    """At least two unique, non-empty, printable names without surrounding spaces (or the problem)."""
    if len(labels) < 2:
        return "must be a list of at least two strings"
    for i, label in enumerate(labels):
        if not label.strip() or label != label.strip() or not label.isprintable():
            return f"[{i}] {label!r} must be a non-empty printable name without leading or trailing spaces"
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        return (f"must be unique; {', '.join(map(repr, dupes))} appears more than once "
                "(the probabilities of one class would be dropped)")
    return None


def _read_spec(value: Any) -> FeatureSpec:
    return FeatureSpec.from_dict(value)


def _names_problem(artifacts: tuple[Artifact, ...], where: str = "artifact") -> str | None:
    seen: set[str] = set()
    for art in artifacts:
        if art.name in seen:
            return f"{where} name {art.name!r} appears twice"
        seen.add(art.name)
    return None


@dataclass(frozen=True)
class Manifest(Record):
    """manifest.json, typed. ``files`` lists every file it pins (all verified by ``load_bundle``)."""

    LAYOUT = ("schema", "schema_version", "created", "labels", "feature_spec", "input", "output", "artifacts",
              "failed_artifacts", "default_artifact", "selftest", "model", "source", "gate", "versions",
              *OPTIONAL_FILES, "confidence", "quality")
    labels: tuple[str, ...] = field(metadata={"check": label_problem, "expect": "must be a list of at least two strings"})
    feature_spec: FeatureSpec = field(metadata={"read": _read_spec, "write": FeatureSpec.to_dict})
    input: InputSpec = field()
    output: OutputSpec = field()
    artifacts: tuple[Artifact, ...] = field(metadata={"check": lambda v: None if v else "must list at least one artifact"})
    default_artifact: str = field()
    selftest: FileRef = field()
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION
    failed_artifacts: tuple[FailedArtifact, ...] = field(
        default=(), metadata={"expect": "must be a list of objects with a name and a reason"})
    #: INT8 representative set (calibration.npz) and TensorRT calibration cache, for build-engine
    calibration: FileRef | None = field(default=None, metadata=_OMIT)
    calibration_cache: FileRef | None = field(default=None, metadata=_OMIT)
    #: calibrated confidence + abstention (runtime/confidence.py)
    confidence: ConfidenceSection | None = field(default=None, metadata=_OMIT)
    #: signal-quality gate file (runtime/quality.py)
    quality: FileRef | None = field(default=None, metadata=_OMIT)

    @classmethod
    def precheck(cls, value: Any) -> str | None:
        if not isinstance(value, dict):
            return "not a JSON object"
        if value.get("schema") != SCHEMA:
            return f"not a stethoedge bundle manifest (schema {value.get('schema')!r})"
        version = value.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS or isinstance(version, bool):
            return (f"bundle schema version {version!r} is not supported by this runtime (supports "
                    f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); re-export the model or upgrade stethoedge")
        return None

    def problem(self) -> str | None:
        dupes = _names_problem(self.artifacts)
        if dupes:
            return dupes
        if self.default_artifact not in {a.name for a in self.artifacts}:
            return f"default_artifact {self.default_artifact!r} is not among the artifacts"
        if self.output.shape[1] != len(self.labels):
            return (f"the model outputs {self.output.shape[1]} classes (output.shape) but there are "
                    f"{len(self.labels)} labels; they must match one to one")
        if tuple(self.input.shape[1:]) != tuple(self.feature_spec.input_shape):
            return (f"input shape {list(self.input.shape)} disagrees with the feature spec "
                    f"{self.feature_spec.input_shape}")
        return pin_problem(self.file_refs)

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_NAME) -> "Manifest":
        """Validate ``data`` (BundleError with the exact problem and key path) and type it."""
        return cls.from_json(data, str(where))

    @classmethod
    def from_bytes(cls, raw: bytes, where: str | Path = MANIFEST_NAME) -> "Manifest":
        """Parse and validate the exact bytes of a manifest.json (those a signature covers)."""
        return cls.from_json(parse_json(raw, where), str(where))

    @property
    def data(self) -> dict[str, Any]:
        """The JSON object this manifest was read from (built in code: its JSON form)."""
        return self.source if isinstance(self.source, dict) else self.to_dict()

    @property
    def artifact_names(self) -> tuple[str, ...]:
        """The names of the (signed) artifacts, in manifest order."""
        return tuple(a.name for a in self.artifacts)

    @property
    def file_refs(self) -> tuple[Artifact | FileRef, ...]:
        """Every pinned file reference: artifacts, self-test, calibration set/cache, quality gate."""
        optional = (self.calibration, self.calibration_cache, self.quality)
        return (*self.artifacts, self.selftest, *(r for r in optional if r is not None))

    @property
    def files(self) -> dict[str, str]:
        """{file name: sha256} of every file this manifest pins (all verified by ``load_bundle``)."""
        return pin_table(self.file_refs, MANIFEST_NAME)

    def failed(self, name: str) -> FailedArtifact | None:
        """The failed_artifacts entry of ``name`` (could not be built at export), or None."""
        return next((f for f in self.failed_artifacts if f.name == name), None)

    def artifact(self, name: str) -> Artifact | None:
        """The signed artifact ``name``, or None."""
        return next((a for a in self.artifacts if a.name == name), None)

    def to_json(self) -> str:
        """manifest.json text (``typed_json.to_json``, the one serializer)."""
        return to_json(self)


def pin_problem(refs: Any) -> str | None:
    """The problem of file references that pin one file with two sha256 values, or None."""
    files: dict[str, str] = {}
    for ref in refs:
        if files.setdefault(ref.file, ref.sha256) != ref.sha256:
            return f"{ref.file} is pinned twice with different sha256 values"
    return None


def pin_table(refs: Any, where: str) -> dict[str, str]:
    """{file: sha256} of file references; one file pinned with two sha256 values is a BundleError."""
    problem = pin_problem(refs)
    if problem:
        raise BundleError(f"{where}: {problem}")
    return {ref.file: ref.sha256 for ref in refs}


@dataclass(frozen=True)
class OverlaySource(Record):
    """The signed ONNX artifact an overlay's engines were built from."""

    LAYOUT = ("artifact", "sha256")
    artifact: str
    sha256: str = _sha_field()


@dataclass(frozen=True)
class Overlay(Record):
    """engines.json: TensorRT engines built on this device, pinned to the signed ONNX's sha256."""

    LAYOUT = ("schema", "schema_version", "onnx", "engines", "calibration_cache")
    onnx: OverlaySource = field(metadata={"expect": "must name the signed ONNX artifact and its sha256"})
    engines: tuple[Artifact, ...] = ()
    calibration_cache: FileRef | None = field(default=None, metadata=_OMIT)
    schema: str = OVERLAY_SCHEMA
    schema_version: int = OVERLAY_SCHEMA_VERSION

    @classmethod
    def precheck(cls, value: Any) -> str | None:
        if not isinstance(value, dict) or value.get("schema") != OVERLAY_SCHEMA:
            return f"not a stethoedge engine overlay (schema {OVERLAY_SCHEMA!r})"
        version = value.get("schema_version")
        if version != OVERLAY_SCHEMA_VERSION or isinstance(version, bool):
            return (f"overlay schema version {version!r} is not supported (supports {OVERLAY_SCHEMA_VERSION}); "
                    "rebuild the engines with stethoedge build-engine")
        if not isinstance(value.get("engines"), list):
            return "engines must be a list"
        return None

    def problem(self) -> str | None:
        return _names_problem(self.engines, "engine") or pin_problem(self.engines)

    @property
    def files(self) -> dict[str, str]:
        """{file name: sha256} of every file this overlay pins."""
        cache = (self.calibration_cache,) if self.calibration_cache is not None else ()
        return pin_table((*self.engines, *cache), OVERLAY_NAME)

    def with_engine(self, entry: Artifact) -> "Overlay":
        """This overlay with ``entry`` added (replacing an engine of the same name)."""
        from dataclasses import replace

        return replace(self, engines=(*(e for e in self.engines if e.name != entry.name), entry))
