"""``stethoedge doctor``: what this device can run, and what to install for the rest.

Reports the Python and platform, the versions of the runtime's libraries, every inference
backend (``backends.available_backends()``) with its execution providers, PortAudio and the
audio input devices, and for each missing piece the install line for Raspberry Pi OS (aarch64)
and JetPack. With a bundle, it also opens the bundle on every available backend that can run
one of its artifacts, which runs the start-up self-test there.
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from stethoedge.runtime.errors import StethoedgeError

LIBRARIES = ("numpy", "scipy", "soundfile", "soxr", "onnxruntime", "onnxruntime-gpu", "ai-edge-litert",
             "tflite-runtime", "tensorrt", "polygraphy", "sounddevice", "pyserial", "cryptography")

AUDIO_INSTALL = {
    "pi-os": "sudo apt install libportaudio2 (sounddevice needs it); pip install sounddevice",
    "jetpack": "sudo apt install libportaudio2; pip install sounddevice",
}
GENERIC_INSTALL = {
    "onnxruntime": {"pi-os": "pip install onnxruntime (aarch64 wheel on PyPI)",
                    "jetpack": "pip install the onnxruntime-gpu wheel built for your JetPack (Jetson Zoo / "
                               "pypi.jetson-ai-lab index) for the CUDA and TensorRT execution providers"},
    "litert": {"pi-os": "pip install ai-edge-litert (or tflite-runtime as a fallback)",
               "jetpack": "pip install ai-edge-litert"},
    "tensorrt": {"pi-os": "not available (TensorRT needs an NVIDIA GPU); use onnxruntime or litert",
                 "jetpack": "TensorRT comes with JetPack (sudo apt install nvidia-jetpack, python3-libnvinfer); "
                            "pip install polygraphy"},
}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def detect_board() -> str:
    """'jetson', 'raspberry-pi' or 'generic', from the device tree / L4T release file."""
    if os.path.exists("/etc/nv_tegra_release"):
        return "jetson"
    try:
        with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as fh:
            model = fh.read().lower()
    except OSError:
        return "generic"
    if "jetson" in model or "nvidia" in model:
        return "jetson"
    return "raspberry-pi" if "raspberry pi" in model else "generic"


def backend_report() -> dict[str, dict[str, Any]]:
    """Every backend: available, version, detail, install hint (from the backends package when it has them)."""
    try:
        from stethoedge.runtime.backends import available_backends
    except ImportError:  # an older backends package without available_backends()
        available_backends = None
    report: dict[str, dict[str, Any]] = {}
    if available_backends is not None:
        try:
            report = available_backends()
        except Exception as exc:  # doctor must still report what it can
            report = {"error": {"available": False, "version": None, "detail": f"available_backends() failed: {exc}",
                                "install": ""}}
    for name, hints in GENERIC_INSTALL.items():
        entry = report.setdefault(name, {"available": False, "version": None, "detail": "not checked", "install": ""})
        entry["install_by_platform"] = hints
    return report


def audio_report() -> dict[str, Any]:
    """PortAudio version and input devices, or why they are not available."""
    from stethoedge.runtime.capture import import_sounddevice, input_devices

    try:
        sd = import_sounddevice()
    except StethoedgeError as exc:
        return {"available": False, "portaudio": None, "devices": [], "detail": str(exc), "install": AUDIO_INSTALL}
    try:
        devices = input_devices()
    except StethoedgeError as exc:
        return {"available": True, "portaudio": sd.get_portaudio_version()[1], "devices": [], "detail": str(exc),
                "install": AUDIO_INSTALL}
    detail = f"{len(devices)} input device(s)" if devices else "no input devices (no sound card or audio server)"
    return {"available": True, "portaudio": sd.get_portaudio_version()[1], "devices": devices, "detail": detail,
            "install": AUDIO_INSTALL}


def bundle_report(path: str) -> dict[str, Any]:
    """Open ``path`` on each available backend that has an artifact for it (runs the self-test)."""
    from stethoedge.runtime.backends import open_backend
    from stethoedge.runtime.bundle import load_bundle

    out: dict[str, Any] = {}
    try:
        bundle = load_bundle(path)
    except StethoedgeError as exc:
        return {"error": str(exc)}
    for art in bundle.artifacts.values():
        try:
            backend = open_backend(bundle, art.name, "auto", allow_failed=True)
            out[art.name] = f"self-test passed on {backend.name}"
        except StethoedgeError as exc:
            out[art.name] = f"not usable here: {exc}"
    return out


def bundle_error(report: dict[str, Any]) -> str | None:
    """Why the report's bundle is unusable here (it does not load, or no artifact passed its self-test), or None.

    ``stethoedge doctor --bundle`` prints the whole report, then this line as its error (exit 2).
    """
    if "bundle" not in report:
        return None
    result = report["bundle"]
    if isinstance(result.get("error"), str) and len(result) == 1:
        return result["error"]
    if not any(str(v).startswith("self-test passed") for v in result.values()):
        return ("no artifact of the bundle passed its self-test on this device ("
                + "; ".join(f"{k}: {v}" for k, v in result.items()) + ")")
    return None


def run_doctor(bundle: str | None = None) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.machine()} ({platform.platform()})",
        "board": detect_board(),
        "libraries": {name: _version(name) for name in LIBRARIES},
        "torch_imported": "torch" in sys.modules and sys.modules["torch"] is not None,
        "backends": backend_report(),
        "audio": audio_report(),
    }
    if bundle is not None:
        report["bundle"] = bundle_report(bundle)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text of ``run_doctor()``."""
    target = {"jetson": "jetpack", "raspberry-pi": "pi-os"}.get(report["board"])
    lines = [f"python {report['python']} on {report['platform']}; board: {report['board']}", "", "libraries:"]
    for name, version in report["libraries"].items():
        lines.append(f"  {name:<16} {version or '-'}")
    lines += ["", "backends:"]
    for name, b in report["backends"].items():
        state = f"ok {b.get('version') or ''}".strip() if b.get("available") else "MISSING"
        lines.append(f"  {name:<12} {state:<12} {b.get('detail', '')}")
        if not b.get("available"):
            hints = b.get("install_by_platform", {})
            for plat in ([target] if target else ["pi-os", "jetpack"]):
                if plat in hints:
                    lines.append(f"      install ({plat}): {hints[plat]}")
    audio = report["audio"]
    lines += ["", f"audio: {'PortAudio ' + str(audio['portaudio']) if audio['available'] else 'MISSING'}; {audio['detail']}"]
    for d in audio["devices"]:
        lines.append(f"  {'*' if d['default'] else ' '}{d['index']:>3} {d['name']} ({d['hostapi']}, default "
                     f"{d['default_rate']} Hz; accepts {','.join(map(str, d['rates'])) or 'none probed'})")
    if not audio["available"]:
        for plat in ([target] if target else ["pi-os", "jetpack"]):
            lines.append(f"      install ({plat}): {audio['install'][plat]}")
    if "bundle" in report:
        lines += ["", "bundle:"]
        lines += [f"  {k}: {v}" for k, v in report["bundle"].items()]
    return "\n".join(lines)
