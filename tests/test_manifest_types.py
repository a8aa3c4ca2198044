"""Issue 13.1: the manifest is a typed object with one writer and one verifier.

``Manifest`` / ``Artifact`` / ``FileRef`` / ``EngineEntry`` / ``ConfidenceSection`` / ``Overlay`` are
dataclasses; their JSON schema comes from the type hints (runtime/typed_json.py), so a string where an
integer belongs, a bool where a number belongs, a missing key or an unknown enum value is refused
from the type, in one line naming the key path. The shipped bundle round-trips byte for byte.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from stethoedge.runtime.bundle import (
    Artifact, EngineEntry, FileRef, Manifest, Overlay, OverlaySource, load_bundle, sha256_file, to_json, write_manifest,
)
from stethoedge.runtime.confidence import ConfidenceSection
from stethoedge.runtime.errors import BundleError
from stethoedge.runtime.typed_json import Record, constrained, dump

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "respiratory-mn04"
RAW = (SHIPPED / "manifest.json").read_bytes()


def _data() -> dict[str, Any]:
    return json.loads(RAW)


@pytest.fixture
def shipped(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(SHIPPED, dst)
    return dst


# ---- one serializer: the shipped manifest round-trips byte for byte -------------------------------

def test_shipped_manifest_round_trips_through_the_types():
    m = Manifest.from_bytes(RAW)
    assert to_json(m).encode() == RAW and m.to_json().encode() == RAW
    assert isinstance(m.selftest, FileRef) and isinstance(m.confidence, ConfidenceSection)
    assert m.input.shape == (None, 798, 128) and m.output.shape == (None, 4) and m.labels[0] == "normal"
    assert m.artifacts[0].extra["export_seconds"] == _data()["artifacts"][0]["export_seconds"]  # unmodelled keys kept ...
    assert {"created", "model", "source", "gate", "versions"} <= set(m.extra)  # ... at every level
    assert m.quality.extra["threshold"] == _data()["quality"]["threshold"] and m.confidence.extra["abstain_rule"]
    assert m.feature_spec == load_bundle(SHIPPED).spec


def test_removing_and_adding_sections_keeps_everything_else(shipped: Path):
    m = Manifest.from_bytes(RAW)
    stripped = replace(m, confidence=None, quality=None)
    data = json.loads(to_json(stripped))
    assert "confidence" not in data and "quality" not in data
    assert list(data) == [k for k in _data() if k not in ("confidence", "quality")]
    again = replace(stripped, confidence=m.confidence)
    assert json.loads(to_json(again))["confidence"] == _data()["confidence"]


def test_a_manifest_built_in_code_reads_back_equal(shipped: Path):
    old = Manifest.from_bytes(RAW)
    built = Manifest(labels=old.labels, feature_spec=old.feature_spec, input=old.input, output=old.output,
                     artifacts=tuple(replace(a, source=None) for a in old.artifacts), default_artifact="onnx-fp32",
                     selftest=FileRef(old.selftest.file, old.selftest.sha256), extra={"created": "now"})
    text = to_json(built)
    data = json.loads(text)
    assert list(data)[:4] == ["schema", "schema_version", "created", "labels"]  # the exporter's key order
    assert data["failed_artifacts"] == [] and "confidence" not in data and "calibration" not in data
    assert Manifest.from_json(data, "x") == built
    write_manifest(shipped, built)
    assert load_bundle(shipped).typed_manifest == built


def test_load_bundle_exposes_the_typed_manifest():
    bundle = load_bundle(SHIPPED)
    m = bundle.typed_manifest
    assert isinstance(m, Manifest) and m.default_artifact == bundle.manifest["default_artifact"]
    assert bundle.artifacts["onnx-fp32"] is m.artifacts[0] and bundle.calibration.temperature == m.confidence.temperature


# ---- one verifier: errors come from the types -----------------------------------------------------

def _refused(edit, where: str = "manifest.json") -> str:
    data = _data()
    edit(data)
    with pytest.raises(BundleError) as info:
        Manifest.from_dict(data)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{where}: "), message
    return message


@pytest.mark.parametrize("edit, expected", [
    (lambda m: m["artifacts"][0].update(size_bytes="2885182"),
     "artifacts[0] size_bytes '2885182' must be an integer >= 0"),
    (lambda m: m["artifacts"][0].update(size_bytes=True), "artifacts[0] size_bytes True must be an integer >= 0"),
    (lambda m: m["artifacts"][0].update(name=None), "artifacts[0] name must be a string, got null"),
    (lambda m: m.update(labels=["a", "b", "c", 4]), "labels must be a list of at least two strings"),
    (lambda m: m["artifacts"][1].update(tolerance=False), "artifacts[1] tolerance False must be a finite number"),
    (lambda m: m["artifacts"][0].pop("precision"), "artifacts[0]: missing key 'precision'"),
    (lambda m: m.pop("default_artifact"), "manifest.json: missing key 'default_artifact'"),
    (lambda m: m["artifacts"][0].update(status="maybe"), "artifacts[0] status has unknown status 'maybe'"),
    (lambda m: m["selftest"].update(sha256="xyz"), "selftest.sha256 'xyz' must be 64 hex digits"),
    (lambda m: m["selftest"].update(file=7), "selftest.file 7 must be a plain file name"),
    (lambda m: m["input"].update(shape=[None, "798", 128]), "input.shape must be [batch, frames, mels]"),
    (lambda m: m["input"].update(name=3), "input.name must be a string, got the number 3"),
    (lambda m: m["confidence"].update(temperature="0.7"), "confidence.temperature '0.7' must be a finite number"),
    (lambda m: m["confidence"].update(abstain_below=True), "confidence.abstain_below True must be a finite number"),
    (lambda m: m["quality"].update(file="a/b.npz"), "quality.file 'a/b.npz' must be a plain file name"),
    (lambda m: m.update(failed_artifacts=[{"name": "x", "reason": 3}]), "failed_artifacts must be a list of objects"),
    (lambda m: m.update(artifacts={}), "artifacts must be a list, got an object"),
    (lambda m: m.update(calibration={"file": "c.npz", "sha256": "0" * 64, "windows": "2"}), None),  # extras: any JSON
])
def test_type_errors_name_the_key_path(edit, expected: str | None):
    if expected is None:
        data = _data()
        edit(data)
        assert Manifest.from_dict(data).calibration.extra == {"windows": "2"}
        return
    assert expected in _refused(edit)


def test_nested_engine_entry_errors_name_the_full_path():
    entry = {"tensorrt": "10.3.0", "cuda": "12.6", "gpu": "Orin", "max_batch": "8"}
    engine = {"name": "tensorrt-fp16", "file": "m.engine", "format": "tensorrt", "precision": "fp16",
              "sha256": "1" * 64, "size_bytes": 1, "tolerance": 0.05, "status": "passed", "engine": entry}
    message = _refused(lambda m: m["artifacts"].append(engine))
    assert "artifacts[2] engine.max_batch must be an integer or null, got a string '8'" in message
    entry["max_batch"] = 8
    message = _refused(lambda m: m["artifacts"].append({**engine, "engine": {**entry, "gpu": 1}}))
    assert "artifacts[2] engine.gpu must be a string or null, got the number 1" in message
    data = _data()
    data["artifacts"].append(engine)
    art = Manifest.from_dict(data).artifacts[2]
    assert isinstance(art.engine, EngineEntry) and art.engine["gpu"] == "Orin" and art.engine.env.gpu == "Orin"


def test_overlay_is_typed_and_round_trips(shipped: Path):
    onnx = Manifest.from_bytes(RAW).artifacts[0]
    overlay = Overlay(onnx=OverlaySource(onnx.name, onnx.sha256))
    data = json.loads(to_json(overlay))
    assert data == {"schema": "stethoedge.engines", "schema_version": 1,
                    "onnx": {"artifact": "onnx-fp32", "sha256": onnx.sha256}, "engines": []}
    assert Overlay.from_json(data, "engines.json") == overlay
    with pytest.raises(BundleError, match=r"engines.json: onnx must name the signed ONNX artifact"):
        Overlay.from_json({**data, "onnx": {"artifact": "onnx-fp32"}}, "engines.json")


# ---- the generic reader itself --------------------------------------------------------------------

@dataclass(frozen=True)
class _Inner(Record):
    n: int


@dataclass(frozen=True)
class _Sample(Record):
    s: str
    f: float
    b: bool
    pair: tuple[int, str]
    many: tuple[_Inner, ...]
    table: dict[str, float]
    maybe: int | None = None
    ranged: int = constrained(lambda v: 0 <= v <= 9, "{v} must be 0..9", default=0)
    tags: tuple[str, ...] = field(default=())


GOOD = {"s": "x", "f": 1, "b": False, "pair": [1, "a"], "many": [{"n": 1}, {"n": 2, "z": True}], "table": {"a": 0.5}}


def test_generic_reader_checks_every_kind_of_hint():
    rec = _Sample.from_json(GOOD, "doc.json")
    assert rec.f == 1 and isinstance(rec.f, int)  # a JSON integer in a float field is kept as written
    assert rec.pair == (1, "a") and rec.many[1].extra == {"z": True} and rec.maybe is None
    assert dump(rec) == GOOD  # absent defaults stay absent, extras come back
    bad = [({"b": 0}, "doc.json: b must be true or false, got the number 0"),
           ({"f": True}, "doc.json: f must be a number, got true"),
           ({"s": None}, "doc.json: s must be a string, got null"),
           ({"pair": [1, 2]}, "doc.json: pair[1] must be a string, got the number 2"),
           ({"pair": [1]}, "doc.json: pair must be a list of 2, got a list"),
           ({"many": [{"n": 1}, {"n": 1.5}]}, "doc.json: many[1] n must be an integer, got the number 1.5"),
           ({"many": [{}]}, "doc.json: many[0]: missing key 'n'"),
           ({"table": {"a": "x"}}, "doc.json: table.a must be a number, got a string 'x'"),
           ({"maybe": "1"}, "doc.json: maybe must be an integer or null, got a string '1'"),
           ({"ranged": 10}, "doc.json: ranged 10 must be 0..9"),
           ({"ranged": "1"}, "doc.json: ranged '1' must be 0..9"),
           ({"tags": "a"}, "doc.json: tags must be a list, got a string 'a'")]
    for change, message in bad:
        with pytest.raises(BundleError) as info:
            _Sample.from_json({**GOOD, **change}, "doc.json")
        assert str(info.value) == message
    with pytest.raises(BundleError, match="doc.json: must be an object, got a list"):
        _Sample.from_json([], "doc.json")


# ---- every file the manifest lists is verified on load -------------------------------------------

def test_every_pinned_file_is_verified_on_load(shipped: Path):
    names = sorted(Manifest.from_bytes(RAW).files)
    assert names == sorted(load_bundle(shipped).files) == ["model.fp16.tflite", "model.onnx", "quality.npz",
                                                           "selftest.npz"]
    for name in names:
        original = (shipped / name).read_bytes()
        (shipped / name).write_bytes(original + b"\0")
        with pytest.raises(BundleError, match=f"{name} does not match its sha256 in the manifest"):
            load_bundle(shipped)
        (shipped / name).unlink()
        with pytest.raises(BundleError, match=f"'{name}' named in the manifest is missing"):
            load_bundle(shipped)
        (shipped / name).write_bytes(original)
    assert sha256_file(shipped / "model.onnx") == Manifest.from_bytes(RAW).artifact("onnx-fp32").sha256


def test_one_file_pinned_twice_with_two_hashes_is_refused():
    message = _refused(lambda m: m.update(calibration={"file": "model.onnx", "sha256": "0" * 64}))
    assert "model.onnx is pinned twice with different sha256 values" in message


def test_artifact_is_a_record():
    art = Manifest.from_bytes(RAW).artifacts[1]
    assert isinstance(art, Artifact) and art.format == "tflite" and art.engine is None
    assert "engine" not in art.to_dict() and art.to_dict() == _data()["artifacts"][1]
