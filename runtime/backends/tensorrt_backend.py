"""TensorRT backend: runs an engine built ON the target (``stethoedge build-engine``).

A serialized engine only runs on the TensorRT version (and GPU) that built it. The engine's
artifact entry (signed manifest, or the device's engines.json overlay) records the build
environment (``engine``: tensorrt, cuda, jetpack/l4t, gpu); before deserializing, that entry is
compared with this device (``compare_engine_env``) and a mismatch is refused with the exact
rebuild command. Execution goes through polygraphy's TrtRunner (device buffers via
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
#: EngineEnv (the typed engine environment) and the comparison live with the manifest types; re-exported here.
from stethoedge.runtime.manifest import MATCH_KEYS, EngineEnv, compare_engine_env  # noqa: F401

INSTALL = ("JetPack ships TensorRT (python3-libnvinfer) and trtexec (/usr/src/tensorrt/bin); "
           "then pip install polygraphy. Not available on Raspberry Pi (no NVIDIA GPU).")


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


def check_engine_compatible(entry: EngineEnv | dict[str, Any], device: EngineEnv | dict[str, Any],
                            bundle_root: str | os.PathLike, precision: str) -> None:
    """Refuse (BundleError with the rebuild command) when the engine was built for another environment.

    TensorRT engines are tied to the exact TensorRT version, the CUDA version and the GPU model
    (``compare_engine_env``); a device that cannot report one of them cannot prove it matches.
    """
    device = EngineEnv.from_dict(device)
    if not device.tensorrt:
        raise BackendError(f"TensorRT is not installed on this device; {INSTALL}")
    problems = compare_engine_env(entry, device)
    if problems:
        raise BundleError(
            "TensorRT engine was built for another environment: " + "; ".join(problems)
            + f". Rebuild it here with: {rebuild_command(bundle_root, precision)}"
        )


def _gpu_name_nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader", "-i", "0"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines and lines[0].strip() else None


def _gpu_name_cudart() -> str | None:
    """cudaGetDeviceProperties(0).name through libcudart (ctypes; ``name`` is the struct's first field,
    char[256], in every CUDA version). Covers Jetsons whose JetPack has no nvidia-smi."""
    import ctypes
    import ctypes.util

    candidates = [ctypes.util.find_library("cudart"), "libcudart.so", "/usr/local/cuda/lib64/libcudart.so"]
    for lib in filter(None, candidates):
        try:
            cudart = ctypes.CDLL(lib)
        except OSError:
            continue
        props = ctypes.create_string_buffer(8192)  # > sizeof(cudaDeviceProp) of any CUDA release
        for symbol in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            fn = getattr(cudart, symbol, None)
            if fn is not None and fn(props, 0) == 0:
                name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()
                return name or None
    return None


def gpu_name() -> str | None:
    """Name of GPU 0 (``nvidia-smi --query-gpu=name``, else libcudart's device properties), None if unknown.

    (polygraphy's CUDA wrapper has no device-name query: it exposes malloc/memcpy/streams only.)
    """
    try:
        return _gpu_name_nvidia_smi() or _gpu_name_cudart()
    except Exception:  # a broken driver install: unknown, and compare_engine_env refuses "unknown"
        return None


class TensorRTBackend:
    """A bundle's TensorRT engine artifact, refused unless built for this device."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, artifact: Artifact, threads: int | None = None) -> None:
        if artifact.format != "tensorrt":
            raise BackendError(f"artifact {artifact.name} is {artifact.format}, not a TensorRT engine")
        here = EngineEnv.from_dict(device_environment(gpu=gpu_name()))
        check_engine_compatible(artifact.engine or EngineEnv(), here, bundle.root, artifact.precision)
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
        self.input_name = bundle.typed_manifest.input.name

    def run(self, features: np.ndarray) -> np.ndarray:
        """Logits (batch, classes) for features (batch, frames, mels)."""
        out = self.runner.infer({self.input_name: np.ascontiguousarray(features, dtype=np.float32)})
        return np.asarray(next(iter(out.values())), dtype=np.float32)
