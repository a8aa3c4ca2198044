"""The fuzzers of benchmarks/ run, and the coverage-guided engine really is coverage-guided.

Each parser fuzzer is run for a small fixed number of inputs (the real campaigns are the
60 s runs reported in docs/RELIABILITY.md); a crash makes the script exit non-zero.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def _atheris_or_skip() -> None:
    try:
        import atheris  # noqa: F401
    except ImportError:
        pytest.skip("atheris is not installed (pip install 'stethoedge[fuzz]'; it is part of [dev] and [all])")


@pytest.mark.parametrize("script", ["fuzz_sprsound.py", "fuzz_annotation.py", "fuzz_bridge.py", "fuzz_wav.py"])
def test_coverage_guided_fuzzer_runs_clean(script: str, tmp_path: Path) -> None:
    """atheris/libFuzzer over instrumented stethoedge code: no crash, and coverage was measured."""
    _atheris_or_skip()
    r = _run(script, "--engine", "atheris", "--iterations", "300", "--crashes", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "atheris (coverage-guided)" in r.stderr
    done = [line for line in r.stderr.splitlines() if "DONE" in line and "cov:" in line]
    assert done, r.stderr[-2000:]
    edges = int(done[-1].split("cov:")[1].split()[0])
    assert edges > 10, done[-1]
    assert not list(tmp_path.iterdir()), "a crash was saved"


def test_coverage_guided_fuzzer_catches_a_planted_crash(tmp_path: Path) -> None:
    """The engine reports an exception outside the allowed typed errors as a crash and saves the input."""
    _atheris_or_skip()
    script = tmp_path / "fuzz_planted.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from fuzz_common import run_fuzzer\n"
        "def target(data):\n"
        "    if data[:2] == b'ok' and len(data) > 3:\n"
        "        raise KeyError('planted')\n"
        "    raise ValueError('typed')\n"
        "raise SystemExit(run_fuzzer('planted', [b'ok!!', b'zz'], target, (ValueError,)))\n")
    crashes = tmp_path / "crashes"
    r = subprocess.run([sys.executable, str(script), "--engine", "atheris", "--iterations", "200",
                        "--crashes", str(crashes)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode != 0
    out = r.stdout + r.stderr  # atheris prints the Python traceback on stdout, libFuzzer on stderr
    assert "KeyError" in out and "planted" in out
    assert [p.name for p in crashes.iterdir() if p.name.startswith("crash-")]


def test_blind_mutation_engine_still_runs(tmp_path: Path) -> None:
    """The dependency-free engine (``--engine mutate``) counts outcomes and finds no crash in the SPRSound parser."""
    r = _run("fuzz_sprsound.py", "--engine", "mutate", "--iterations", "400")
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert "0 distinct crashes" in r.stdout and "DataError=" in r.stdout
