"""Installed, everything lives under ``stethoedge.*``: no bare runtime/export/train in site-packages."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_has_one_top_level_package_and_installs(tmp_path: Path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("stethoedge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"stethoedge", next(t for t in tops if t.endswith(".dist-info"))}, tops
    for stage in ("runtime", "train", "export", "calibration", "firmware_bridge"):
        assert f"stethoedge/{stage}/__init__.py" in names
    for module in ("__init__", "icbhi", "sprsound", "folders", "metrics", "evaluation"):  # the torch-free data layer
        assert f"stethoedge/data/{module}.py" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == ["stethoedge"]
    code = ("import stethoedge.runtime.features as f, stethoedge.cli, stethoedge.data.icbhi as d, stethoedge.train.icbhi as t; "
            "assert d is t; print(f.__file__)")
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
