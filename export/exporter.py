"""``export_run``: a training run -> a verified bundle directory (written atomically).

Artifacts: ``onnx-fp32`` (model.onnx) and ``onnx-int8-dynamic`` (model.int8.onnx). Each is run by
ONNX Runtime on held-out windows of the run's test split and gated against PyTorch; the bundle's
self-test vector (real windows, their torch features and PyTorch logits) lets every device check
its front end and interpreter at start-up.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stethoedge.calibration.window_set import WindowSet, build_window_set
from stethoedge.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, quantize_int8_dynamic
from stethoedge.export.verify import Gate, pick_selftest, verify_artifact
from stethoedge.runtime.bundle import (
    SCHEMA, SCHEMA_VERSION, SELFTEST_NAME, atomic_write_text, load_bundle, sha256_file, write_manifest,
)
from stethoedge.runtime.errors import DataError, StethoedgeError
from stethoedge.train.checkpoint import load_checkpoint
from stethoedge.train.dataset import fbank_batches
from stethoedge.train.icbhi import list_recordings
from stethoedge.train.model import count_parameters

#: name -> (file, precision, self-test tolerance floor in logits)
ONNX_ARTIFACTS = {
    "onnx-fp32": ("model.onnx", "fp32", 1e-3),
    "onnx-int8-dynamic": ("model.int8.onnx", "int8-dynamic", 5e-2),
}


@dataclass
class ExportResult:
    """Where the bundle went and what each artifact measured."""

    bundle: Path
    manifest: dict[str, Any]
    report: str


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("stethoedge", "torch", "onnx", "onnxruntime", "numpy", "scipy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def heldout_windows(run: Path, spec, data: str | None, max_windows: int, seed: int) -> WindowSet:
    """Balanced windows from the run's test split (validation if it has none): never trained on."""
    splits_path = run / "splits.json"
    if not splits_path.is_file():
        raise DataError(f"{run}: no splits.json; is this a training run directory?")
    splits = json.loads(splits_path.read_text())
    root = Path(data or splits["data"])
    if not root.is_dir():
        raise DataError(f"{root}: the run's data directory is gone; pass --data DIR")
    for split in ("test", "val"):
        stems = set(splits.get(split, []))
        recs = [r for r in list_recordings(root) if r.stem in stems]
        if recs:
            ws = build_window_set(recs, spec, max_windows=max_windows, seed=seed, purpose=f"verification ({split} split)")
            ws.provenance["split"] = split
            ws.provenance["data"] = str(root)
            return ws
    raise DataError(f"{root}: none of the run's test or validation recordings were found")


def _report(manifest: dict[str, Any]) -> str:
    lines = [f"# Export report: {manifest['source']['run']}", "", f"created {manifest['created']}", "",
             "| artifact | status | size MB | windows | top-1 agreement | max logit diff | Score delta |",
             "|---|---|---|---|---|---|---|"]
    for art in manifest["artifacts"]:
        v = art["verification"]
        delta = f"{100 * v['score_delta']:+.1f} pt" if "score_delta" in v else "n/a"
        lines.append(f"| {art['name']} | {art['status']} | {art['size_bytes'] / 1e6:.2f} | {v['windows']} | "
                     f"{100 * v['top1_agreement']:.1f} % | {v['max_logit_diff']:.2e} | {delta} |")
    return "\n".join(lines) + "\n"


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished bundle into place; an existing one is replaced only with ``force``."""
    if out.exists():
        if not force:
            raise StethoedgeError(f"{out} already exists; pass --force to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_run(run: str | os.PathLike, out: str | os.PathLike, data: str | None = None, max_windows: int = 64,
               selftest_windows: int = 4, gate: Gate = Gate(), allow_degraded: bool = False, force: bool = False,
               seed: int = 0) -> ExportResult:
    """Export a run's checkpoint to a verified bundle at ``out``."""
    import onnxruntime as ort

    run, out = Path(run), Path(out)
    ckpt = load_checkpoint(run)
    spec = ckpt.spec
    held = heldout_windows(run, spec, data, max_windows, seed)
    # Reference = PyTorch on the training-side (torch) features of the held-out audio.
    torch_features = fbank_batches(held.audio, spec).numpy()
    with torch.no_grad():
        reference = ckpt.model(torch.from_numpy(torch_features)).numpy().astype(np.float64)
    chosen = pick_selftest(reference, selftest_windows)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the device's service user must read the bundle
    try:
        np.savez(tmp / SELFTEST_NAME, audio=held.audio[chosen], features=torch_features[chosen],
                 logits=reference[chosen].astype(np.float32))
        export_onnx(ckpt.model, tmp / ONNX_ARTIFACTS["onnx-fp32"][0], spec.input_shape)
        quantize_int8_dynamic(tmp / ONNX_ARTIFACTS["onnx-fp32"][0], tmp / ONNX_ARTIFACTS["onnx-int8-dynamic"][0])
        artifacts = []
        for name, (file, precision, tol_floor) in ONNX_ARTIFACTS.items():
            session = ort.InferenceSession(str(tmp / file), providers=["CPUExecutionProvider"])
            run_fn = lambda x, s=session: s.run(None, {INPUT_NAME: x.astype(np.float32)})[0]  # noqa: E731
            result = verify_artifact(run_fn, torch_features, reference, held.labels, gate)
            st_logits = run_fn(torch_features[chosen])
            st_diff = float(np.max(np.abs(st_logits - reference[chosen])))
            st_ok = bool(np.all(st_logits.argmax(1) == reference[chosen].argmax(1)))
            result["selftest_max_logit_diff"] = st_diff
            passed = result["passed"] and st_ok
            artifacts.append({
                "name": name, "file": file, "format": "onnx", "precision": precision,
                "sha256": sha256_file(tmp / file), "size_bytes": (tmp / file).stat().st_size,
                "tolerance": max(tol_floor, 4.0 * st_diff), "status": "passed" if passed else "failed-verification",
                "verification": result,
            })
        passed = [a["name"] for a in artifacts if a["status"] == "passed"]
        if not passed and not allow_degraded:
            raise StethoedgeError(
                "every artifact failed verification against PyTorch: "
                + "; ".join(f"{a['name']}: agreement {a['verification']['top1_agreement']:.1%}" for a in artifacts)
                + " (re-run with --allow-degraded to write it anyway)"
            )
        default = "onnx-int8-dynamic" if "onnx-int8-dynamic" in passed else (passed[0] if passed else artifacts[0]["name"])
        manifest = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "labels": list(ckpt.labels), "feature_spec": spec.to_dict(),
            "input": {"name": INPUT_NAME, "shape": [None, *spec.input_shape], "dtype": "float32"},
            "output": {"name": OUTPUT_NAME, "shape": [None, len(ckpt.labels)], "dtype": "float32", "kind": "logits"},
            "artifacts": artifacts, "default_artifact": default,
            "selftest": {"file": SELFTEST_NAME, "sha256": sha256_file(tmp / SELFTEST_NAME), "windows": int(len(chosen))},
            "model": {"architecture": "AST", "config": ckpt.config.to_dict(), "parameters": count_parameters(ckpt.model)},
            "source": {"run": str(run.resolve()), "checkpoint_epoch": ckpt.meta.get("epoch"),
                       "verification_set": held.provenance},
            "versions": _versions(),
        }
        write_manifest(tmp, manifest)
        report = _report(manifest)
        atomic_write_text(tmp / "export_report.md", report)
        load_bundle(tmp)  # the bundle must load with the runtime's own checks before it is installed
        _install(tmp, out, force)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, manifest, report)
