"""stethoedge: respiratory-sound classification for digital stethoscopes and edge boards.

The repository keeps one folder per stage (runtime/, train/, export/, calibration/,
firmware_bridge/); installed, each stage is a subpackage of the single ``stethoedge``
namespace, so nothing lands in site-packages as a bare ``runtime`` or ``export``. Shared,
torch-free code without a stage of its own (``stethoedge.data``: dataset parsers and metrics)
lives inside stethoedge/ (a top-level data/ folder is where the README's commands write data).
"""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
STAGES = ("runtime", "train", "export", "calibration", "firmware_bridge")


def _stage_packages() -> dict[str, str]:
    """Map ``stethoedge.<stage>[.<sub>]`` to its folder for every package folder of a stage."""
    mapping = {"stethoedge": "stethoedge", "stethoedge.models": "models"}
    # Subpackages inside stethoedge/ itself (stethoedge.data: the torch-free data layer).
    for init in sorted((HERE / "stethoedge").glob("*/__init__.py")):
        mapping[f"stethoedge.{init.parent.name}"] = init.parent.relative_to(HERE).as_posix()
    for stage in STAGES:
        for init in sorted((HERE / stage).rglob("__init__.py")):
            folder = init.parent.relative_to(HERE)
            if any(part.startswith((".", "_")) or part == "tests" for part in folder.parts[1:]):
                continue
            dotted = ".".join(("stethoedge",) + folder.parts)
            mapping[dotted] = folder.as_posix()
    return mapping


PACKAGE_DIR = _stage_packages()

RUNTIME = [
    "numpy>=1.24",
    "scipy>=1.10",
    "soundfile>=0.12",
    "soxr>=0.3",  # band-limited resampling, also as a stream (ResampleStream) for live capture
    "onnxruntime>=1.17",
    "sounddevice>=0.4.6",
    "pyserial>=3.5",
    "cryptography>=42",  # Ed25519 bundle signatures (--require-signature)
]
TRAIN = [
    # torch: any 2.x from 2.3 on; the CPU build 2.13.0 satisfies it (pin torch==2.13.0 first on CPU
    # machines, or an unpinned install pulls the CUDA wheels).
    "torch>=2.3,<3",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "safetensors>=0.4",
    # Pretrained AST directories (config.json + weights) and LoRA; both read LOCAL files only.
    "transformers==5.23.0",
    "peft==0.21.2",
    "tomli>=2; python_version < '3.11'",  # recipes (.toml) on 3.10 (JetPack 6); 3.11+ has tomllib
]
TFLITE = ["ai-edge-litert>=2.0"]
EXPORT = [
    "onnx>=1.16", "onnxruntime>=1.17", "onnxscript>=0.1",
    "litert-torch==0.10.0",  # PyTorch -> LiteRT (.tflite) directly; brings jax and ai-edge-quantizer
    "polygraphy>=0.49",  # ONNX lint before TensorRT builds on the target
    "onnx-graphsurgeon>=0.5",  # needed by `polygraphy check lint`
] + TFLITE
# atheris: coverage-guided fuzzing of the parsers (benchmarks/fuzz_*.py, tests/test_fuzzers.py).
FUZZ = ["atheris>=2.3"]
REPORT = ["matplotlib>=3.7"]  # the exam's HTML/PNG report (stethoedge exam --html/--png); not in the runtime extra
# vermin: tests/test_python_floor.py checks the code against python_requires (3.10).
DEV = ["pytest>=8", "hypothesis>=6.100", "kaldi-native-fbank>=1.20", "vermin>=1.6"] + FUZZ

setup(
    name="stethoedge",
    version="0.1.0",
    description="Edge-deployable respiratory-sound classifier for digital stethoscopes",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=sorted(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={
        "stethoedge.train": ["recipes/*.toml"],
        "stethoedge.firmware_bridge": ["PROTOCOL.md", "c/*.c", "c/*.h", "c/Makefile"],
        # The shipped, verified bundle(s): `stethoedge classify recording.wav` needs no bundle argument.
        "stethoedge.models": ["*/*.json", "*/*.onnx", "*/*.tflite", "*/*.npz", "*/*.md", "*/*.sig"],
    },
    install_requires=["numpy>=1.24"],
    extras_require={
        "runtime": RUNTIME,
        "tflite": TFLITE,
        "train": TRAIN + RUNTIME,
        "export": EXPORT + TRAIN + RUNTIME,
        "dev": DEV,
        "fuzz": FUZZ,
        "report": REPORT,
        "all": sorted(set(RUNTIME + TRAIN + EXPORT + TFLITE + DEV + REPORT)),
    },
    entry_points={"console_scripts": ["stethoedge=stethoedge.cli:main"]},
)
