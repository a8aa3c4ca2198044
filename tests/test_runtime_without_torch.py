"""The device path never needs torch (nor train/ or export/)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCK = "import sys; sys.modules['torch'] = None; sys.modules['stethoedge.train'] = None; sys.modules['stethoedge.export'] = None\n"


def test_classify_runs_with_torch_blocked(bundle_dir: Path, icbhi_dir: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "103_2b2_Ar_mc_LittC2SE.wav"
    code = BLOCK + (
        "from stethoedge.runtime.engine import Classifier\n"
        "from stethoedge.runtime.sources import FileSource\n"
        "from stethoedge.runtime.bench import bench_bundle\n"
        f"clf = Classifier.open({str(bundle_dir)!r})\n"
        f"results = list(clf.classify(FileSource({str(wav)!r})))\n"
        "assert len(results) == 10, len(results)\n"
        f"assert len(bench_bundle({str(bundle_dir)!r}, runs=2)) == 2\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_cli_classify_with_torch_blocked(bundle_dir: Path, icbhi_dir: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "105_1b1_Tc_sc_Meditron.wav"
    code = BLOCK + f"from stethoedge.cli import main; raise SystemExit(main(['classify', {str(bundle_dir)!r}, {str(wav)!r}]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") >= 10


def test_runtime_modules_import_nothing_from_other_stages():
    runtime = Path(__file__).resolve().parents[1] / "runtime"
    for py in runtime.rglob("*.py"):
        text = py.read_text()
        for stage in ("train", "export", "calibration", "firmware_bridge"):
            assert f"stethoedge.{stage}" not in text, f"{py} imports stethoedge.{stage}"
        assert "import torch" not in text, py


DATA_MODULES = ("icbhi", "sprsound", "folders", "metrics", "evaluation")


def test_data_layer_and_calibration_import_with_torch_blocked():
    """stethoedge.data and the calibration sets need neither torch nor train/ nor export/."""
    code = BLOCK + "".join(f"import stethoedge.data.{m}\n" for m in DATA_MODULES) + (
        "import stethoedge.calibration.window_set, stethoedge.calibration.representative_set\n"
        "from stethoedge.data.metrics import evaluate\n"
        "import numpy as np\n"
        "assert evaluate(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0]))['specificity'] == 1.0\n"
        "print(sorted(m for m in ('torch', 'stethoedge.train', 'stethoedge.export') if sys.modules.get(m) is not None))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_old_train_names_are_the_data_modules():
    """The stethoedge.train.<module> shims alias the moved modules (one object: patches reach both)."""
    import importlib

    for m in DATA_MODULES:
        assert importlib.import_module(f"stethoedge.train.{m}") is importlib.import_module(f"stethoedge.data.{m}")


def test_bench_with_data_runs_with_torch_blocked(bundle_dir: Path, icbhi_dir: Path):
    """`stethoedge bench --data` (accuracy next to latency) on the device side: no torch, no train/."""
    code = BLOCK + (
        "from stethoedge.cli import main\n"
        f"rc = main(['bench', {str(bundle_dir)!r}, '--data', {str(icbhi_dir)!r}, '--data-windows', '8', '--runs', '2'])\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "raise SystemExit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
