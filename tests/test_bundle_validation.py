"""Hand-edited manifests of the shipped bundle (models/respiratory-mn04): every feature-spec field,
labels, tolerances and file references are validated on load with one clear line (issue 15), what
is harmless (a UTF-8 BOM, an in-bundle symlink) still loads, and an artifact is looked up by name
or chosen for ``--backend`` with a message that lists the bundle's artifacts."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from stethoedge.models import default_bundle
from stethoedge.runtime.backends import artifact_for_backend, open_backend
from stethoedge.runtime.bench import bench_bundle
from stethoedge.runtime.bundle import MAX_TOLERANCE, load_bundle, sha256_file
from stethoedge.runtime.errors import BackendError, BundleError
from stethoedge.runtime.feature_spec import FeatureSpec
from stethoedge.runtime.signing import generate_keypair, sign_bundle

STETHOEDGE = Path(sys.executable).with_name("stethoedge")


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A private copy of the shipped bundle (onnx-fp32 default, tflite-fp16), to hand-edit."""
    dst = tmp_path / "bundle"
    shutil.copytree(default_bundle(), dst)
    return dst


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seconds of a quiet 440 Hz tone at 16 kHz."""
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(3 * 16000) / 16000.0
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32), 16000)
    return path


def _edit(bundle: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))  # json writes NaN/Infinity literals, as a hand edit could


def _spec(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda m: m["feature_spec"].update(changes)


def _cli(*args: str | os.PathLike, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(STETHOEDGE), *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=300, env=env)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit 2, no traceback, stderr exactly one line starting with 'error: '; returns that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------ item 3: every feature-spec field
#: (field, bad value, words the message must contain). At least one case per FeatureSpec field.
BAD_SPECS = [
    ("kind", "mfcc", "'kaldi-fbank' or 'efficientat-mel'"),
    ("sample_rate", 8000, "16000"),
    ("sample_rate", 16000.0, "should be int"),
    ("window_seconds", 0.0, "0 < window_seconds <= 60"),
    ("window_seconds", 1e308, "0 < window_seconds <= 60"),
    ("window_seconds", 10**400, "not finite"),
    ("window_seconds", 0.02, "at least one 25 ms frame"),
    ("n_mels", 0, "1..257"),
    ("n_mels", 300, "1..257"),
    ("frame_length_ms", 0.01, "0.125 <= frame_length_ms <= 1000"),
    ("frame_length_ms", 5000.0, "0.125 <= frame_length_ms <= 1000"),
    ("frame_shift_ms", 0.0, "frame_shift_ms <= frame_length_ms (25)"),
    ("frame_shift_ms", 30.0, "frame_shift_ms <= frame_length_ms (25)"),
    ("window_type", "hamming", "'hanning' or 'povey'"),
    ("preemphasis", 1.5, "0 <= preemphasis <= 1"),
    ("preemphasis", -0.1, "0 <= preemphasis <= 1"),
    ("remove_dc_offset", 1, "should be bool"),
    ("dither", 1.0, "never dithers"),
    ("low_freq_hz", -1.0, "0 <= low_freq_hz < 16000"),
    ("low_freq_hz", 16000.0, "0 <= low_freq_hz < 16000"),
    ("high_freq_hz", 17000.0, "high_freq_hz <= 16000"),
    ("high_freq_hz", -16000.0, "-16000 < high_freq_hz <= 0"),
    ("log_floor", 0.0, "0 < log_floor <= 1"),
    ("log_floor", 5.0, "0 < log_floor <= 1"),
    ("norm_mean", 1e9, "norm_mean <= 1e+06"),
    ("norm_mean", float("nan"), "not finite"),
    ("norm_std", 0.0, "1e-06 <= norm_std"),
    ("norm_std", 1e-9, "1e-06 <= norm_std"),
    ("mel_rate_hz", 8000.0, "16000 <= mel_rate_hz <= 192000"),
    ("mel_rate_hz", -1.0, "16000 <= mel_rate_hz <= 192000"),
    ("mel_rate_hz", 1e6, "16000 <= mel_rate_hz <= 192000"),
    ("lowpass_hz", -5.0, "lowpass_hz <= 8000"),
    ("lowpass_hz", 9000.0, "lowpass_hz <= 8000"),
]


def test_every_feature_spec_field_has_a_refused_value():
    covered = {field for field, _, _ in BAD_SPECS}
    assert covered == {f.name for f in fields(FeatureSpec)}


@pytest.mark.parametrize("field, value, words", BAD_SPECS, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_SPECS])
def test_out_of_range_feature_spec_field_is_a_bundle_error_naming_it(bundle: Path, field: str, value, words: str):
    _edit(bundle, _spec(**{field: value}))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    message = str(info.value)
    assert "\n" not in message and words in message, message
    assert field in message or "not finite" in message, message


def test_mel_band_is_checked_against_the_mel_layout_not_the_audio_rate(bundle: Path):
    """The shipped efficientat-mel spec lays 0..15 kHz bands out at 32 kHz: 9 kHz is inside that
    layout; at the audio's own 16 kHz layout (mel_rate_hz 0) it is above Nyquist."""
    assert FeatureSpec.from_dict({**load_bundle(bundle).spec.to_dict(), "high_freq_hz": 9000.0}).high_freq_hz == 9000.0
    _edit(bundle, _spec(high_freq_hz=9000.0, mel_rate_hz=0.0))
    with pytest.raises(BundleError, match=r"high_freq_hz 9000.0 is invalid; allowed: low_freq_hz \(0\) < high_freq_hz <= 8000"):
        load_bundle(bundle)


def test_efficientat_only_fields_are_refused_where_the_front_end_would_ignore_them():
    kaldi = FeatureSpec().to_dict()
    with pytest.raises(BundleError, match="lowpass_hz 4000.0 is invalid; allowed: 0 for kaldi-fbank"):
        FeatureSpec.from_dict({**kaldi, "lowpass_hz": 4000.0})
    with pytest.raises(BundleError, match="mel_rate_hz 32000.0 is invalid; allowed: 0 for kaldi-fbank"):
        FeatureSpec.from_dict({**kaldi, "mel_rate_hz": 32000.0})
    assert FeatureSpec.from_dict(kaldi) == FeatureSpec()


def test_kaldi_fbank_band_is_checked_at_the_audio_rate(bundle: Path):
    """Issue 15's case: a kaldi-fbank spec at 16 kHz with a 9 kHz band edge (the shipped
    manifest's mel_rate_hz belongs to efficientat-mel and does not widen a Kaldi layout)."""
    _edit(bundle, _spec(kind="kaldi-fbank", high_freq_hz=9000.0))
    with pytest.raises(BundleError, match=r"high_freq_hz 9000.0 is invalid; allowed: .* <= 8000 \(Nyquist of the 16000"):
        load_bundle(bundle)


def test_harmless_spellings_of_valid_values_still_load(bundle: Path):
    """Integers for float fields and an explicit dither of 0 are accepted."""
    _edit(bundle, _spec(dither=0, high_freq_hz=15000, norm_std=2.5, window_seconds=8))
    assert load_bundle(bundle).spec.dither == 0.0


def test_cli_bad_mel_band_is_one_line_exit_2(bundle: Path, wav: Path):
    _edit(bundle, _spec(high_freq_hz=9000.0, low_freq_hz=-1.0, mel_rate_hz=0.0))
    line = _one_error_line(_cli("classify", bundle, wav))
    assert "low_freq_hz" in line and "allowed: 0 <= low_freq_hz < 8000" in line


# ------------------------------------------------------------------ item 4: labels
@pytest.mark.parametrize("labels, words", [
    (["normal", "crackle", "wheeze", "wheeze"], "labels must be unique; 'wheeze'"),
    (["normal", "crackle", "", "both"], "labels[2] ''"),
    (["normal", "crackle", "wheeze\n", "both"], "labels[2] 'wheeze\\n'"),
    (["normal", " crackle", "wheeze", "both"], "labels[1] ' crackle'"),
    (["normal", "crackle", "wheeze", 3], "at least two strings"),
    (["normal", "crackle", "wheeze"], "outputs 4 classes (output.shape) but there are 3 labels"),
    (["normal", "crackle", "wheeze", "both", "stridor"], "outputs 4 classes (output.shape) but there are 5 labels"),
])
def test_bad_labels_are_refused(bundle: Path, labels: list, words: str):
    _edit(bundle, lambda m: m.__setitem__("labels", labels))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    assert words in str(info.value), info.value


def test_model_output_size_must_match_the_labels(bundle: Path):
    """A consistent manifest and self-test for 5 labels over the real 4-class ONNX model: the
    self-test on ONNX Runtime finds the model's output size."""
    with np.load(bundle / "selftest.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["logits"] = np.concatenate([arrays["logits"], np.zeros((len(arrays["logits"]), 1), np.float32)], axis=1)
    np.savez(bundle / "selftest.npz", **arrays)

    def five_classes(m: dict[str, Any]) -> None:
        m["labels"].append("stridor")
        m["output"]["shape"][1] = 5
        m["selftest"]["sha256"] = sha256_file(bundle / "selftest.npz")

    _edit(bundle, five_classes)
    loaded = load_bundle(bundle)
    with pytest.raises(BundleError, match="the model outputs 4 classes but the bundle has 5 labels"):
        open_backend(loaded, "onnx-fp32")


def test_cli_duplicate_labels_one_line(bundle: Path, wav: Path):
    _edit(bundle, lambda m: m.__setitem__("labels", ["normal", "crackle", "crackle", "both"]))
    assert "labels must be unique" in _one_error_line(_cli("classify", bundle, wav))


# ------------------------------------------------------------------ item 5: tolerance, files, BOM, dither
@pytest.mark.parametrize("tolerance", [float("nan"), float("inf"), -0.1, MAX_TOLERANCE * 10, True])
def test_tolerance_must_be_finite_and_bounded(bundle: Path, tolerance):
    _edit(bundle, lambda m: m["artifacts"][0].__setitem__("tolerance", tolerance))
    with pytest.raises(BundleError, match=r"artifacts\[0\] tolerance .* must be a finite number 0 <= tolerance <= 100"):
        load_bundle(bundle)


def test_tolerance_at_the_bound_loads(bundle: Path):
    _edit(bundle, lambda m: m["artifacts"][0].__setitem__("tolerance", MAX_TOLERANCE))
    assert load_bundle(bundle).artifacts["onnx-fp32"].tolerance == MAX_TOLERANCE


def test_cli_nan_tolerance_one_line(bundle: Path, wav: Path):
    _edit(bundle, lambda m: m["artifacts"][0].__setitem__("tolerance", float("nan")))
    assert "artifacts[0] tolerance nan must be a finite number" in _one_error_line(_cli("classify", bundle, wav))


@pytest.mark.parametrize("where", ["selftest", "artifact", "calibration", "calibration_cache"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "empty", "subdir"])
def test_file_references_must_be_plain_names_in_the_bundle(bundle: Path, tmp_path: Path, where: str, how: str):
    outside = tmp_path / "outside.npz"
    shutil.copy(bundle / "selftest.npz", outside)  # same bytes, same sha256: only the path is wrong
    name = {"dotdot": "../outside.npz", "absolute": str(outside), "empty": "", "subdir": "sub/selftest.npz"}[how]
    sha = sha256_file(outside)

    def point(m: dict[str, Any]) -> None:
        if where == "selftest":
            m["selftest"]["file"] = name
        elif where == "artifact":
            m["artifacts"][0]["file"] = name
        else:
            m[where] = {"file": name, "sha256": sha}

    _edit(bundle, point)
    with pytest.raises(BundleError, match="must be a plain file name inside the bundle directory"):
        load_bundle(bundle)


@pytest.mark.parametrize("which", ["model.onnx", "selftest.npz"])
def test_symlink_escaping_the_bundle_is_refused(bundle: Path, tmp_path: Path, which: str):
    outside = tmp_path / f"elsewhere-{which}"
    shutil.move(bundle / which, outside)
    (bundle / which).symlink_to(outside)  # the sha256 still matches: only the location gives it away
    with pytest.raises(BundleError, match=f"{which} is a link to .*, outside the bundle directory"):
        load_bundle(bundle)


def test_calibration_symlink_escaping_the_bundle_is_refused(bundle: Path, tmp_path: Path):
    target = tmp_path / "someone-elses.npz"
    target.write_bytes(b"not ours")
    (bundle / "calibration.npz").symlink_to(target)
    _edit(bundle, lambda m: m.__setitem__("calibration", {"file": "calibration.npz", "sha256": "0" * 64}))
    with pytest.raises(BundleError, match=f"calibration.npz is a link to {target}, outside the bundle"):
        load_bundle(bundle)


def test_symlink_inside_the_bundle_is_harmless(bundle: Path):
    (bundle / "model.onnx").rename(bundle / "model-v1.onnx")
    (bundle / "model.onnx").symlink_to("model-v1.onnx")
    assert open_backend(load_bundle(bundle), "onnx-fp32").name == "onnxruntime"


def test_cli_selftest_outside_the_bundle_one_line(bundle: Path, tmp_path: Path, wav: Path):
    shutil.copy(bundle / "selftest.npz", tmp_path / "selftest.npz")
    _edit(bundle, lambda m: m["selftest"].__setitem__("file", "../selftest.npz"))
    assert "plain file name" in _one_error_line(_cli("classify", bundle, wav))


def test_utf8_bom_is_accepted_and_a_signature_over_it_still_verifies(bundle: Path, tmp_path: Path):
    manifest = bundle / "manifest.json"
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    assert load_bundle(bundle).labels == ("normal", "crackle", "wheeze", "both")
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    sign_bundle(bundle, tmp_path / "k.pem")
    assert load_bundle(bundle, require_signature=tmp_path / "k.pub").artifacts
    manifest.write_bytes(manifest.read_bytes()[3:])  # the same JSON without its BOM is other bytes: not signed
    with pytest.raises(BundleError, match="signature check FAILED"):
        load_bundle(bundle, require_signature=tmp_path / "k.pub")


def test_cli_dither_is_refused_with_the_reason(bundle: Path, wav: Path):
    _edit(bundle, _spec(dither=1.0))
    line = _one_error_line(_cli("classify", bundle, wav))
    assert "dither 1.0 is invalid; allowed: 0 only (the runtime front end never dithers" in line


# ------------------------------------------------------------------ item 11a: unknown artifact names
def test_bench_unknown_artifact_lists_the_artifacts(bundle: Path):
    with pytest.raises(BundleError, match="no artifact 'nope'.*it has onnx-fp32, tflite-fp16"):
        bench_bundle(bundle, runs=1, artifacts=["onnx-fp32", "nope"])


@pytest.mark.parametrize("command", ["bench", "classify"])
def test_cli_unknown_artifact_one_line(bundle: Path, wav: Path, command: str):
    args = [bundle] if command == "bench" else [bundle, wav]
    line = _one_error_line(_cli(command, *args, "--artifact", "nope"))
    assert "no artifact 'nope'" in line and "onnx-fp32, tflite-fp16" in line


def test_unknown_artifact_that_failed_to_build_says_why(bundle: Path):
    _edit(bundle, lambda m: m.__setitem__("failed_artifacts", [
        {"name": "tflite-int8", "format": "tflite", "precision": "int8", "status": "failed", "reason": "converter crashed"}]))
    with pytest.raises(BundleError, match="tflite-int8 could not be built at export: converter crashed"):
        load_bundle(bundle).artifact("tflite-int8")


# ------------------------------------------------------------------ item 12: --backend picks an artifact
@pytest.mark.parametrize("backend, artifact", [("litert", "tflite-fp16"), ("onnxruntime", "onnx-fp32")])
def test_backend_without_artifact_picks_one_it_can_run(bundle: Path, backend: str, artifact: str):
    opened = open_backend(load_bundle(bundle), backend=backend)
    assert (opened.name, opened.artifact.name) == (backend, artifact)


def test_default_artifact_is_preferred_when_the_backend_runs_it(bundle: Path):
    _edit(bundle, lambda m: m.__setitem__("default_artifact", "tflite-fp16"))
    loaded = load_bundle(bundle)
    assert artifact_for_backend(loaded, "litert") == "tflite-fp16"
    assert artifact_for_backend(loaded, "onnxruntime") == "onnx-fp32"


def test_backend_with_only_a_failed_artifact_needs_allow_degraded(bundle: Path):
    _edit(bundle, lambda m: m["artifacts"][1].__setitem__("status", "failed-verification"))
    loaded = load_bundle(bundle)
    with pytest.raises(BackendError, match="add --artifact tflite-fp16 --allow-degraded"):
        artifact_for_backend(loaded, "litert")
    assert artifact_for_backend(loaded, "litert", allow_failed=True) == "tflite-fp16"


def test_backend_with_no_artifact_of_its_format_lists_them(bundle: Path):
    with pytest.raises(BackendError, match=r"the bundle has onnx-fp32 \(onnx\), tflite-fp16 \(tflite\); build an engine"):
        open_backend(load_bundle(bundle), backend="tensorrt")
    with pytest.raises(BackendError, match="cannot run tflite artifact tflite-fp16; .* add --artifact onnx-fp32"):
        open_backend(load_bundle(bundle), "tflite-fp16", backend="onnxruntime")


def test_cli_readme_litert_example_runs(bundle: Path, wav: Path):
    proc = _cli("classify", bundle, wav, "--backend", "litert")
    assert proc.returncode == 0, proc.stderr
    assert "artifact tflite-fp16 on litert" in proc.stdout
    probabilities = [line for line in proc.stdout.splitlines() if "normal=" in line]
    assert probabilities and all(len(line.split("=")) == 5 for line in probabilities)  # four classes each


def test_cli_tensorrt_without_engine_one_line(bundle: Path, wav: Path):
    line = _one_error_line(_cli("classify", bundle, wav, "--backend", "tensorrt"))
    assert "onnx-fp32 (onnx), tflite-fp16 (tflite)" in line and "build-engine" in line


def test_probabilities_of_the_shipped_labels_sum_to_one(bundle: Path, wav: Path):
    """The regression behind item 4: with unique labels every class keeps its probability."""
    proc = _cli("classify", bundle, wav, "--jsonl", "-")
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        probs = json.loads(line)["probabilities"]
        assert len(probs) == 4 and math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
