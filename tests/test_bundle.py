"""Bundles are verified on load: sha256, schema version, shapes, self-test of features and logits."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stethoedge.runtime.backends import open_backend
from stethoedge.runtime.bundle import load_bundle, sha256_file
from stethoedge.runtime.engine import Classifier
from stethoedge.runtime.errors import BundleError


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(bundle_dir, dst)
    return dst


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_healthy_bundle_loads_and_passes_selftest(bundle_dir: Path):
    bundle = load_bundle(bundle_dir)
    assert set(bundle.artifacts) == {"onnx-fp32", "onnx-int8-dynamic"}
    assert bundle.spec.input_shape == (798, 128)
    for name in bundle.artifacts:
        backend = open_backend(bundle, name, allow_failed=True)
        assert backend.run(bundle.selftest.features).shape == bundle.selftest.logits.shape


def test_tampered_model_is_refused(bundle_copy: Path):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx does not match its sha256"):
        load_bundle(bundle_copy)


def test_missing_file_is_refused(bundle_copy: Path):
    (bundle_copy / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [0, 3, "1", None, True])
def test_unknown_schema_version_is_refused(bundle_copy: Path, version):
    _edit_manifest(bundle_copy, lambda m: m.__setitem__("schema_version", version))
    with pytest.raises(BundleError, match="schema version"):
        load_bundle(bundle_copy)


def test_not_json_and_not_a_bundle(bundle_copy: Path, tmp_path: Path):
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_input_shape_disagreeing_with_spec_is_refused(bundle_copy: Path):
    _edit_manifest(bundle_copy, lambda m: m["input"].__setitem__("shape", [None, 500, 128]))
    with pytest.raises(BundleError, match="disagrees with the feature spec"):
        load_bundle(bundle_copy)


def test_path_escape_in_artifact_file_is_refused(bundle_copy: Path):
    _edit_manifest(bundle_copy, lambda m: m["artifacts"][0].__setitem__("file", "../model.onnx"))
    with pytest.raises(BundleError, match="plain file name"):
        load_bundle(bundle_copy)


def _rewrite_selftest(bundle: Path, **arrays) -> None:
    path = bundle / "selftest.npz"
    with np.load(path) as data:
        content = {k: data[k] for k in data.files}
    content.update(arrays)
    np.savez(path, **content)
    _edit_manifest(bundle, lambda m: m["selftest"].__setitem__("sha256", sha256_file(path)))


def test_interpreter_that_answers_wrongly_is_refused(bundle_copy: Path):
    """A consistent bundle whose expected logits disagree with what the runtime computes (as a
    broken interpreter would) must refuse to run, not classify."""
    bundle = load_bundle(bundle_copy)
    wrong = bundle.selftest.logits[:, ::-1] + 5.0
    _rewrite_selftest(bundle_copy, logits=wrong)
    with pytest.raises(BundleError, match="self-test .* FAILED"):
        Classifier.open(bundle_copy, artifact="onnx-fp32", allow_degraded=True)


def test_feature_drift_is_refused(bundle_copy: Path):
    bundle = load_bundle(bundle_copy)
    _rewrite_selftest(bundle_copy, features=bundle.selftest.features + 1e-3)
    with pytest.raises(BundleError, match="features differ from training"):
        Classifier.open(bundle_copy, allow_degraded=True)


def test_schema_version_1_bundles_still_load(bundle_copy: Path):
    _edit_manifest(bundle_copy, lambda m: m.__setitem__("schema_version", 1))
    assert load_bundle(bundle_copy).manifest["schema_version"] == 1


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["artifacts"][0].__setitem__("format", "coreml"), "unknown format 'coreml'"),
    (lambda m: m["artifacts"][1].__setitem__("name", m["artifacts"][0]["name"]), "appears twice"),
    (lambda m: m["artifacts"][0].__setitem__("sha256", "abc"), "64 hex digits"),
    (lambda m: m["artifacts"][0].__setitem__("status", "failed"), "unknown status"),
    (lambda m: m["artifacts"][0].__setitem__("verification", []), "verification must be an object"),
    (lambda m: m.__setitem__("failed_artifacts", [{"name": "tflite-int8"}]), "failed_artifacts must be"),
    (lambda m: m["artifacts"][0].pop("sha256"), "missing key 'sha256'"),
    (lambda m: m.__setitem__("default_artifact", "tflite-fp32"), "not among the artifacts"),
])
def test_schema_violations_are_refused(bundle_copy: Path, edit, message):
    _edit_manifest(bundle_copy, edit)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)
