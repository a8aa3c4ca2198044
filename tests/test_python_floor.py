"""The Python floor: setup.py says >= 3.10 (JetPack 6 ships 3.10), so the code must run on 3.10.

vermin (the dev extra) checks every package folder for 3.11+ stdlib modules, members and syntax;
``ast`` with ``feature_version=(3, 10)`` re-checks the grammar of the runtime, the part that runs
on the device. Both checks are shown to fail on a 3.11-only file, so they cannot pass vacuously.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "export", "train", "calibration", "firmware_bridge", "stethoedge", "models")
FLOOR = (3, 10)
#: vermin mistakes attribute accesses such as ``kind.file`` for the Python 2 ``file`` builtin, which
#: only adds an "incompatible versions" note; excluding it keeps the verdict clean.
VERMIN_ARGS = ("--no-tips", "--violations", f"-t={FLOOR[0]}.{FLOOR[1]}-", "--exclude", "file", "--no-config-file")


def _vermin(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    """Run vermin (the dev extra's) from this interpreter over ``paths``."""
    code = "import sys; from vermin import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *VERMIN_ARGS, *map(str, paths)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_vermin_finds_nothing_above_the_floor():
    out = _vermin(*(REPO / p for p in PACKAGES))
    assert "No module named" not in out.stderr, "vermin is missing: pip install 'stethoedge[dev]'"
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Target versions not met" not in out.stdout, out.stdout
    found = re.search(r"Minimum required versions:\s*([\d.]+)", out.stdout)
    assert found, out.stdout
    assert tuple(int(x) for x in found.group(1).split(".")) <= FLOOR, out.stdout


def test_vermin_check_can_fail(tmp_path: Path):
    """The same invocation flags a 3.11-only module (the tomllib the train CLI once imported bare)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import tomllib\n")
    out = _vermin(bad)
    assert out.returncode != 0 and "tomllib" in out.stdout, out.stdout + out.stderr


def _runtime_modules() -> list[Path]:
    return sorted((REPO / "runtime").rglob("*.py"))


@pytest.mark.parametrize("path", _runtime_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_runtime_parses_with_the_310_grammar(path: Path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=FLOOR)


def test_310_grammar_check_can_fail():
    with pytest.raises(SyntaxError):  # except* (PEP 654) is 3.11 syntax
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=FLOOR)


def test_toml_reader_falls_back_to_tomli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """On 3.10 there is no tomllib: the train CLI must read recipes through tomli, not report a missing extra."""
    import types

    from stethoedge import cli_train

    fake = types.ModuleType("tomli")
    fake.loads = lambda text: {"epochs": 3}  # type: ignore[attr-defined]
    fake.TOMLDecodeError = ValueError  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tomllib", None)  # import tomllib -> ModuleNotFoundError, as on 3.10
    monkeypatch.setitem(sys.modules, "tomli", fake)
    assert cli_train._toml_module() is fake
    recipe = tmp_path / "r.toml"
    recipe.write_text("epochs = 3\n")
    assert cli_train.load_config_file(str(recipe)) == {"epochs": 3}


def test_setup_pins_tomli_for_310_in_the_train_extra():
    setup_py = (REPO / "setup.py").read_text()
    train = re.search(r"^TRAIN = \[(.*?)^\]", setup_py, re.S | re.M)
    assert train and "tomli>=2; python_version < '3.11'" in train.group(1)
    assert re.search(r"^DEV = \[[^\]]*\"vermin", setup_py, re.M), "vermin belongs to the dev extra"
