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
