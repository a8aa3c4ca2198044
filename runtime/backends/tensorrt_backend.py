"""TensorRT backend: runs an engine built ON the target (``stethoedge build-engine``).

A serialized engine only runs on the TensorRT version (and GPU) that built it. The bundle's
artifact entry records the build environment (``engine``: tensorrt, cuda, jetpack/l4t, gpu);
before deserializing, that entry is compared with this device and a mismatch is refused with
the exact rebuild command. Execution goes through polygraphy's TrtRunner (device buffers via
its own CUDA wrapper), so the runtime needs no pycuda or torch.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from stethoedge.runtime.bundle import Artifact, Bundle
from stethoedge.runtime.errors import BackendError, BundleError

INSTALL = ("JetPack ships TensorRT (python3-libnvinfer) and trtexec (/usr/src/tensorrt/bin); "
           "then pip install polygraphy. Not available on Raspberry Pi (no NVIDIA GPU).")
#: Keys of the engine entry that must match the device exactly for an engine to be loaded.
MATCH_KEYS = ("tensorrt", "cuda_major", "gpu")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def jetson_release() -> dict[str, str | None]:
    """L4T release (/etc/nv_tegra_release) and JetPack version (dpkg nvidia-jetpack) when on a Jetson."""
    l4t = None
    text = _read("/etc/nv_tegra_release")
    if text:
        m = re.search(r"R(\d+)\s+\(release\),\s+REVISION:\s+([\d.]+)", text)
        l4t = f"{m.group(1)}.{m.group(2)}" if m else text.splitlines()[0]
    jetpack = None
    if shutil.which("dpkg-query"):
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], capture_output=True,
                                 text=True, timeout=10)
            jetpack = out.stdout.strip() or None if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            jetpack = None
    return {"l4t": l4t, "jetpack": jetpack}


def cuda_version() -> str | None:
    """CUDA toolkit version from /usr/local/cuda/version.json (JetPack, desktop installs), if any."""
    text = _read("/usr/local/cuda/version.json")
    if text:
        try:
            return str(json.loads(text)["cuda"]["version"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def tensorrt_version() -> str | None:
    """Version of the importable ``tensorrt`` module, or None."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(tensorrt.__version__)


def device_environment(gpu: str | None = None) -> dict[str, Any]:
    """This device's TensorRT build/run environment, as recorded in an engine entry."""
    cuda = cuda_version()
    env: dict[str, Any] = {"tensorrt": tensorrt_version(), "cuda": cuda,
                           "cuda_major": cuda.split(".")[0] if cuda else None, "gpu": gpu}
    env.update(jetson_release())
    return env


def rebuild_command(bundle_root: str | os.PathLike, precision: str) -> str:
    """The command that rebuilds an engine of ``precision`` for this device from the bundle's ONNX."""
    return f"stethoedge build-engine {bundle_root} --precision {precision}"


def check_engine_compatible(entry: dict[str, Any], device: dict[str, Any], bundle_root: str | os.PathLike,
                            precision: str) -> None:
    """Refuse (BundleError with the rebuild command) when the engine was built for another environment.

    TensorRT engines are tied to the exact TensorRT version, the CUDA major version and the GPU
    model; a key the device cannot report (None) is not held against the engine, except TensorRT.
    """
    if not device.get("tensorrt"):
        raise BackendError(f"TensorRT is not installed on this device; {INSTALL}")
    problems = []
    for key in MATCH_KEYS:
        built, here = entry.get(key), device.get(key)
        if key != "tensorrt" and (built is None or here is None):
            continue
        if str(built) != str(here):
            problems.append(f"{key} {built} (engine) vs {here} (this device)")
    if problems:
        raise BundleError(
            "TensorRT engine was built for another environment: " + "; ".join(problems)
            + f". Rebuild it here with: {rebuild_command(bundle_root, precision)}"
        )


def gpu_name() -> str | None:
    """Name of CUDA device 0 through polygraphy's CUDA wrapper, or None without a GPU."""
    try:
        from polygraphy import cuda as pcuda  # type: ignore[import-not-found]

        return str(pcuda.wrapper().get_device_name()) if hasattr(pcuda.wrapper(), "get_device_name") else None
    except Exception:  # no driver, no libcudart: simply unknown
        return None


class TensorRTBackend:
    """A bundle's TensorRT engine artifact, refused unless built for this device."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, artifact: Artifact, threads: int | None = None) -> None:
        if artifact.format != "tensorrt":
            raise BackendError(f"artifact {artifact.name} is {artifact.format}, not a TensorRT engine")
        check_engine_compatible(artifact.engine or {}, device_environment(gpu=gpu_name()), bundle.root,
                                artifact.precision)
        try:
            from polygraphy.backend.common import BytesFromPath
            from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        except ImportError:
            raise BackendError(f"the TensorRT backend needs polygraphy: {INSTALL}") from None
        self.artifact = artifact
        try:
            self.runner = TrtRunner(EngineFromBytes(BytesFromPath(str(bundle.path_of(artifact)))))
            self.runner.activate()
        except Exception as exc:  # TensorRT raises plain RuntimeErrors with multi-line logs
            raise BackendError(f"TensorRT could not load {artifact.file}: {str(exc).splitlines()[0]}; "
                               f"rebuild with: {rebuild_command(bundle.root, artifact.precision)}") from None
        self.input_name = bundle.manifest["input"]["name"]

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for features (batch, frames, mels)."""
        out = self.runner.infer({self.input_name: np.ascontiguousarray(features, dtype=np.float32)})
        return np.asarray(next(iter(out.values())), dtype=np.float32)
