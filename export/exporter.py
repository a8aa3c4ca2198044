"""``export_run``: a training run -> a verified bundle directory (written atomically).

Artifacts (export/formats.py): ONNX fp32 / fp16 / int8-dynamic / int8-static (QDQ on
MatMul/Conv/Gemm) and TFLite fp32 / fp16 / int8-dynamic / int8 through litert-torch. Static INT8
is calibrated on ONE representative set (class-balanced windows of the run's training split,
calibration/representative_set.py). Every artifact is run by its real runtime (ONNX Runtime,
the LiteRT interpreter) on the run's VALIDATION-split windows and gated against PyTorch
(export/verify.py); the gate decides which artifacts pass and so the default artifact. The test
split is only measured and reported (``verification.report_test``): choosing on it would make the
reported test figures optimistic. The bundle's self-test vector lets every device re-check at start-up.
TensorRT engines are built on the target from the bundle (export/tensorrt_build.py).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import time
import traceback
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from stethoedge.calibration.window_set import WindowSet, balanced_indices, build_window_set
from stethoedge.export.formats import KINDS, ArtifactKind, resolve_formats
from stethoedge.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from stethoedge.export.report import render_report
from stethoedge.export.verify import Gate, pick_selftest, verify_artifact
from stethoedge.runtime.bundle import (
    MAX_TOLERANCE, SELFTEST_NAME, Artifact, FailedArtifact, FileRef, InputSpec, Manifest, OutputSpec, atomic_write_text,
    dump, load_bundle, sha256_file, write_manifest,
)
from stethoedge.runtime.errors import DataError, StethoedgeError
from stethoedge.runtime.outputs import check_output_dir, install_dir, signals_held, temp_dir_beside
from stethoedge.train.checkpoint import architecture_of, load_checkpoint
from stethoedge.train.dataset import fbank_batches
from stethoedge.data.folders import list_dataset
from stethoedge.runtime.labels import CLASSES
from stethoedge.train.model import count_parameters

log = logging.getLogger(__name__)
CALIBRATION_NAME = "calibration.npz"
#: PT2E's HistogramObserver costs ~1.5 s per window on the 5.5 M student (2 cores); the TFLite
#: static int8 calibrates on a class-balanced subset of the representative set of at most this size.
TFLITE_CALIBRATION_MAX = 64
#: Kept for callers of the first version: the two ONNX artifacts it built.
ONNX_ARTIFACTS = {n: (KINDS[n].file, KINDS[n].precision, KINDS[n].tolerance) for n in ("onnx-fp32", "onnx-int8-dynamic")}


@dataclass
class ExportResult:
    """Where the bundle went and what each artifact measured."""

    bundle: Path
    manifest: dict[str, Any]
    report: str


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("stethoedge", "torch", "onnx", "onnxruntime", "numpy", "scipy", "litert-torch", "ai-edge-litert",
                "ai-edge-quantizer"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


#: The split the gate runs on: it decides pass/fail and so the default artifact.
GATE_SPLIT = "val"
#: The split that is only measured and reported (``verification.report_test``), never used to choose.
REPORT_SPLIT = "test"


def _run_splits(run: Path, data: str | None) -> tuple[dict[str, Any], Path]:
    """The run's splits.json (written by ``train`` and ``train-edge``) and its data directory."""
    splits_path = run / "splits.json"
    if not splits_path.is_file():
        raise DataError(f"{run}: no splits.json; is this a training run directory?")
    splits = json.loads(splits_path.read_text())
    where = data or splits.get("data")
    if not where:
        raise DataError(f"{run}: splits.json names no data directory; pass --data DIR")
    root = Path(where)
    if not root.is_dir():
        raise DataError(f"{root}: the run's data directory is gone; pass --data DIR")
    return splits, root


def split_windows(run: Path, spec, data: str | None, split: str, max_windows: int, seed: int) -> WindowSet | None:
    """Class-balanced windows of the run's ``split`` recordings (None when none of them is found)."""
    splits, root = _run_splits(run, data)
    stems = set(splits.get(split) or [])
    recs = [r for r in list_dataset(root, tuple(splits.get("labels") or CLASSES)) if r.stem in stems]  # run's label set
    if not recs:
        return None
    role = "gate" if split == GATE_SPLIT else "reported only, never gates"
    ws = build_window_set(recs, spec, max_windows=max_windows, seed=seed, purpose=f"verification ({split} split, {role})")
    ws.provenance["split"] = split
    ws.provenance["data"] = root.resolve().name  # the dataset folder, not this machine's path
    return ws


def heldout_windows(run: Path, spec, data: str | None, max_windows: int, seed: int) -> WindowSet:
    """The gate's windows: the run's validation split (patients never trained on; never the test split)."""
    ws = split_windows(run, spec, data, GATE_SPLIT, max_windows, seed)
    if ws is None:
        raise DataError(f"{run}: none of the run's validation recordings were found; the gate runs on the "
                        "validation split (the test split is only reported, never used to choose an artifact)")
    return ws


def _build(kind: ArtifactKind, model: torch.nn.Module, tmp: Path, input_shape: tuple[int, int],
           calibration: tuple[np.ndarray, np.ndarray] | None) -> Path:
    """Write one artifact file into ``tmp`` (``calibration``: representative features and labels)."""
    path = tmp / kind.file
    if kind.format == "onnx":
        from stethoedge.export import onnx_export

        fp32 = tmp / KINDS["onnx-fp32"].file
        if kind.precision != "fp32" and not fp32.is_file():
            onnx_export.export_onnx(model, fp32, input_shape)
        if kind.precision == "fp32":
            return fp32 if fp32.is_file() else onnx_export.export_onnx(model, fp32, input_shape)
        if kind.precision == "fp16":
            return onnx_export.convert_fp16(fp32, path)
        if kind.precision == "int8-dynamic":
            return onnx_export.quantize_int8_dynamic(fp32, path)
        from stethoedge.calibration.ort_reader import WindowSetReader

        return onnx_export.quantize_int8_static(fp32, path, WindowSetReader(calibration[0], INPUT_NAME))
    if kind.format == "tflite":
        from stethoedge.export.tflite_export import export_tflite

        if calibration is not None and kind.calibrated and len(calibration[0]) > TFLITE_CALIBRATION_MAX:
            calibration = (calibration[0][balanced_indices(calibration[1], TFLITE_CALIBRATION_MAX)], calibration[1])

        return export_tflite(model, path, input_shape, kind.precision,
                             calibration=calibration[0] if calibration is not None else None,
                             fp32_file=tmp / KINDS["tflite-fp32"].file)
    raise StethoedgeError(f"{kind.name}: TensorRT engines are built on the target; "
                          "copy the bundle there and run: stethoedge build-engine BUNDLE --precision "
                          + kind.precision)


_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")


def portable(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute path string replaced by its last component, so a
    shipped manifest records the names of runs, datasets and checkpoints, never the build machine's paths."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and _ABSOLUTE.match(value):
        return re.split(r"[\\/]", value.rstrip("/\\"))[-1] or "(path)"
    return value


def _calibrated_on(kind: ArtifactKind, rep: WindowSet | None) -> str | None:
    if not kind.calibrated or rep is None:
        return None
    n = min(len(rep), TFLITE_CALIBRATION_MAX) if kind.format == "tflite" else len(rep)
    return f"{n} windows of the representative set"


def artifact_runner(fmt: str, path: Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``features -> logits`` through the artifact's real runtime (ONNX Runtime / LiteRT interpreter)."""
    if fmt == "onnx":
        from stethoedge.runtime.backends.onnxruntime_backend import OnnxModel

        return OnnxModel(path, threads=threads, providers=["CPUExecutionProvider"]).run
    if fmt == "tflite":
        from stethoedge.runtime.backends.litert_backend import TFLiteModel

        return TFLiteModel(path, threads=threads).run
    raise StethoedgeError(f"no runner for {fmt} artifacts at export time")


def _verify(kind: ArtifactKind, path: Path, features: np.ndarray, reference: np.ndarray, labels: np.ndarray,
            chosen: np.ndarray, gate: Gate,
            report: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Gate on the validation windows; measure (never gate) on ``report`` = test (features, reference, labels)."""
    run_fn = artifact_runner(kind.format, path)
    result = verify_artifact(run_fn, features, reference, labels, gate)
    result["gated_on"] = GATE_SPLIT
    st_logits = run_fn(features[chosen])
    st_diff = float(np.max(np.abs(st_logits - reference[chosen])))
    result["selftest_max_logit_diff"] = st_diff
    result["selftest_top1_ok"] = bool(np.all(st_logits.argmax(1) == reference[chosen].argmax(1)))
    if report is not None:
        measured = verify_artifact(run_fn, *report, gate)
        result["report_test"] = {"split": REPORT_SPLIT, "gates": False,
                                 **{k: v for k, v in measured.items() if k not in ("passed", "gate")}}
    return result


def _save_calibration(tmp: Path, rep: WindowSet, keep: int) -> FileRef:
    """The representative set's first ``keep`` windows (fp16 features) for TensorRT INT8 on the target."""
    idx = np.arange(min(keep, len(rep)))
    path = tmp / CALIBRATION_NAME
    with signals_held(), open(path, "wb") as f:
        np.savez_compressed(f, features=rep.features[idx].astype(np.float16), labels=rep.labels[idx],
                            provenance=np.array(json.dumps(rep.provenance)))
    return FileRef(CALIBRATION_NAME, sha256_file(path), extra={
        "windows": int(len(idx)), "representative_windows": len(rep), "class_counts": rep.provenance.get("class_counts"),
        "provenance": rep.provenance})


def _manifest_notes(run: Path, ckpt: Any, held: WindowSet, reported: WindowSet | None, gate: Gate,
                    allow_degraded: bool) -> dict[str, Any]:
    """The manifest keys the runtime does not model: model, source, gate, versions (``Manifest.extra``)."""
    return {
        "model": {"architecture": architecture_of(ckpt.model), "config": ckpt.config.to_dict(),
                  "parameters": count_parameters(ckpt.model)},
        # The run's folder name only: a shipped manifest must not carry the build machine's paths.
        "source": {"run": run.resolve().name, "checkpoint_epoch": ckpt.meta.get("epoch"),
                   "trained_on": ckpt.meta.get("trained_on"), "verification_set": held.provenance,
                   **({"report_set": reported.provenance} if reported is not None else {}),
                   # the whole training configuration (train/run_config.py RunConfig), paths made portable
                   **({"run_config": ckpt.meta["run_config"]} if ckpt.meta.get("run_config") else {})},
        "gate": {"min_agreement": gate.min_agreement, "max_score_drop": gate.max_score_drop,
                 "allow_degraded": allow_degraded, "gated_on": GATE_SPLIT},
        "versions": _versions(),
    }


@dataclass
class _Inputs:
    """What an export starts from, loaded and cross-checked before anything is built."""

    run: Path
    ckpt: Any  # LoadedCheckpoint: model, spec, labels, meta
    held: WindowSet  # the gate's windows (validation split)
    reported: WindowSet | None  # the test split's windows, measured and reported only
    features: np.ndarray  # PyTorch-side features of ``held``
    reference: np.ndarray  # PyTorch logits of ``held``
    report: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # (features, logits, labels) of ``reported``
    chosen: np.ndarray  # the self-test windows (indices into ``held``)
    rep: WindowSet | None  # the representative set, when a calibrated artifact is requested


def _reference_of(ckpt: Any, ws: WindowSet) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch on the training-side (torch) features of ``ws``'s audio: (features, logits)."""
    feats = fbank_batches(ws.audio, ckpt.spec).numpy()
    with torch.no_grad():
        return feats, ckpt.model(torch.from_numpy(feats)).numpy().astype(np.float64)


def _representative_set(run: Path, spec: Any, data: str | None, calibration_set: str | os.PathLike | None,
                        calibration_windows: int, seed: int, seen: set[str]) -> WindowSet:
    """The saved ``calibration_set`` or class-balanced training windows; never a verification recording."""
    if calibration_set is not None:
        rep = WindowSet.load(calibration_set)
    else:
        from stethoedge.calibration.representative_set import representative_set_for_run

        rep = representative_set_for_run(run, spec, data, calibration_windows, seed)
    if set(rep.provenance.get("recordings", [])) & seen:
        raise DataError("the representative set shares recordings with the verification windows")
    return rep


def _load_inputs(run: Path, data: str | None, names: list[str], max_windows: int, selftest_windows: int, seed: int,
                 report_windows: int | None, calibration_set: str | os.PathLike | None,
                 calibration_windows: int) -> _Inputs:
    """The checkpoint, the gate (validation) and report (test) windows with PyTorch's logits, the representative set."""
    ckpt = load_checkpoint(run)
    spec = ckpt.spec
    held = heldout_windows(run, spec, data, max_windows, seed)
    n_report = max_windows if report_windows is None else report_windows
    reported = split_windows(run, spec, data, REPORT_SPLIT, n_report, seed) if n_report > 0 else None
    if reported is not None and set(reported.provenance["recordings"]) & set(held.provenance["recordings"]):
        raise DataError("the run's validation and test splits share recordings; the gate would see test audio")
    torch_features, reference = _reference_of(ckpt, held)
    report = (*_reference_of(ckpt, reported), reported.labels) if reported is not None else None
    chosen = pick_selftest(reference, selftest_windows)
    rep = None
    if any(KINDS[n].calibrated for n in names):
        seen = set(held.provenance.get("recordings", [])) | set(reported.provenance["recordings"] if reported else [])
        rep = _representative_set(run, spec, data, calibration_set, calibration_windows, seed, seen)
    return _Inputs(run, ckpt, held, reported, torch_features, reference, report, chosen, rep)


def _write_selftest(tmp: Path, inputs: _Inputs) -> None:
    """The bundle's self-test vector: audio, features and PyTorch logits of the chosen validation windows."""
    chosen = inputs.chosen
    with signals_held():
        np.savez(tmp / SELFTEST_NAME, audio=inputs.held.audio[chosen], features=inputs.features[chosen],
                 logits=inputs.reference[chosen].astype(np.float32))


def _build_and_verify(name: str, inputs: _Inputs, tmp: Path, gate: Gate) -> Artifact | FailedArtifact:
    """One artifact built into ``tmp`` and run by its runtime against PyTorch; a failure is recorded, not raised."""
    kind, rep = KINDS[name], inputs.rep
    t0 = time.perf_counter()
    try:
        path = _build(kind, inputs.ckpt.model, tmp, inputs.ckpt.spec.input_shape,
                      (rep.features, rep.labels) if rep is not None else None)
        seconds = time.perf_counter() - t0
        result = _verify(kind, path, inputs.features, inputs.reference, inputs.held.labels, inputs.chosen, gate,
                         inputs.report)
    except Exception as exc:  # a converter failing must not sink the other formats
        log.debug("building %s failed:\n%s", name, traceback.format_exc())
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        (tmp / kind.file).unlink(missing_ok=True)
        return FailedArtifact(name, reason[:500], kind.format, kind.precision, "failed")
    passed = result["passed"] and result["selftest_top1_ok"]
    return Artifact(
        name, kind.file, kind.format, kind.precision, sha256_file(path), path.stat().st_size,
        # capped: the runtime refuses a tolerance above MAX_TOLERANCE (it would switch the check off)
        min(MAX_TOLERANCE, max(kind.tolerance, 4.0 * result["selftest_max_logit_diff"])),
        "passed" if passed else "failed-verification", verification=result,
        extra={"calibrated_on": _calibrated_on(kind, rep), "export_seconds": round(seconds, 2)},
    )


def _build_artifacts(names: list[str], inputs: _Inputs, tmp: Path,
                     gate: Gate) -> tuple[list[Artifact], list[FailedArtifact]]:
    """Every requested artifact, built and verified in catalogue order: (built, failed to build)."""
    artifacts: list[Artifact] = []
    failed: list[FailedArtifact] = []
    for name in names:
        made = _build_and_verify(name, inputs, tmp, gate)
        (failed if isinstance(made, FailedArtifact) else artifacts).append(made)
    return artifacts, failed


def _default_artifact(artifacts: list[Artifact], failed: list[FailedArtifact], allow_degraded: bool) -> str:
    """The gate's verdict: the default artifact among those that passed (an error when none was built or passed)."""
    passed = [a.name for a in artifacts if a.status == "passed"]
    if not artifacts:
        raise StethoedgeError("no artifact could be built: " + "; ".join(f"{f.name}: {f.reason}" for f in failed))
    if not passed and not allow_degraded:
        raise StethoedgeError(
            "every artifact failed verification against PyTorch: "
            + "; ".join(f"{a.name}: agreement {a.verification['top1_agreement']:.1%}" for a in artifacts)
            + " (re-run with --allow-degraded to write it anyway)"
        )
    # Chosen among artifacts that passed the VALIDATION gate; report_test never enters the choice.
    preference = ["onnx-int8-dynamic", "onnx-fp32", *KINDS]
    return next((n for n in preference if n in passed), artifacts[0].name)


def _manifest(inputs: _Inputs, tmp: Path, artifacts: list[Artifact], failed: list[FailedArtifact], default: str,
              gate: Gate, allow_degraded: bool, bundle_calibration_windows: int) -> dict[str, Any]:
    """The manifest's JSON form (the bundle's calibration file written on the way); no machine paths in it."""
    ckpt, spec, rep = inputs.ckpt, inputs.ckpt.spec, inputs.rep
    typed = Manifest(
        labels=tuple(ckpt.labels), feature_spec=spec,
        input=InputSpec((None, *spec.input_shape), INPUT_NAME),
        output=OutputSpec((None, len(ckpt.labels)), OUTPUT_NAME),
        artifacts=tuple(artifacts), failed_artifacts=tuple(failed), default_artifact=default,
        selftest=FileRef(SELFTEST_NAME, sha256_file(tmp / SELFTEST_NAME), extra={"windows": int(len(inputs.chosen))}),
        calibration=(_save_calibration(tmp, rep, bundle_calibration_windows)
                     if rep is not None and bundle_calibration_windows > 0 else None),
        extra={"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               **_manifest_notes(inputs.run, ckpt, inputs.held, inputs.reported, gate, allow_degraded)},
    )
    # the one serializer's JSON form; a shipped manifest names runs/datasets, never this machine's paths
    return portable(dump(typed))


def _publish(tmp: Path, out: Path, manifest: dict[str, Any], artifacts: list[Artifact], force: bool) -> str:
    """Drop strays, write manifest and report, load the bundle with the runtime's checks, install it; the report."""
    keep = {a.file for a in artifacts} | {SELFTEST_NAME, CALIBRATION_NAME}
    for stray in tmp.iterdir():  # e.g. the fp32 ONNX a quantizer started from, when not requested
        if stray.name not in keep:
            stray.unlink()
    write_manifest(tmp, manifest)
    report = render_report(manifest)
    atomic_write_text(tmp / "export_report.md", report)
    load_bundle(tmp)  # the bundle must load with the runtime's own checks before it is installed
    install_dir(tmp, out, replace=force, what="this export")
    return report


def export_run(run: str | os.PathLike, out: str | os.PathLike, data: str | None = None, max_windows: int = 64,
               selftest_windows: int = 4, gate: Gate = Gate(), allow_degraded: bool = False, force: bool = False,
               seed: int = 0, formats: str | list[str] | None = None, calibration_windows: int = 300,
               bundle_calibration_windows: int = 32, calibration_set: str | os.PathLike | None = None,
               report_windows: int | None = None) -> ExportResult:
    """Export a run's checkpoint to a verified bundle at ``out``.

    The gate runs on ``max_windows`` validation-split windows; ``report_windows`` test-split windows
    (default ``max_windows``; 0: none) are measured and reported only.

    ``formats``: artifact names (or "all", the default: everything this machine can build).
    Static INT8 artifacts are calibrated on ``calibration_set`` (a saved WindowSet) or on
    ``calibration_windows`` class-balanced windows of the run's training split.
    """
    run, out = Path(run), Path(out)
    names = resolve_formats(formats)
    if os.path.lexists(out) and not force:  # fail before minutes of conversion, not after
        raise StethoedgeError(f"{out} already exists; pass --force to replace it")
    # runtime/outputs.py: its parent must exist; never the run, nor (replaced with --force) a directory holding inputs
    out = check_output_dir(out, inputs=[run, data, calibration_set], replace=True)
    inputs = _load_inputs(run, data, names, max_windows, selftest_windows, seed, report_windows, calibration_set,
                          calibration_windows)
    tmp: Path | None = None
    try:
        with signals_held():  # a SIGTERM between creating the temporary and owning it must not leak it
            tmp = temp_dir_beside(out)
        _write_selftest(tmp, inputs)
        artifacts, failed = _build_artifacts(names, inputs, tmp, gate)
        default = _default_artifact(artifacts, failed, allow_degraded)
        manifest = _manifest(inputs, tmp, artifacts, failed, default, gate, allow_degraded, bundle_calibration_windows)
        report = _publish(tmp, out, manifest, artifacts, force)
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, report)
