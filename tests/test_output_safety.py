"""Outputs never destroy anything (issue 15): devices, FIFOs and symlinks are written through, an
output that is an input is refused, missing directories are not created, non-empty --out refused.

The CLI runs as a real subprocess (the installed ``stethoedge`` script) on a real recording, with
real FIFOs (a reader thread), symlinks and hard links in tmp_path.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stethoedge.runtime.errors import OutputError
from stethoedge.runtime.outputs import (
    atomic_write_bytes, atomic_write_text, check_output_dir, is_temporary_name, open_output, output_path,
    refuse_same_file, resolve_output,
)

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("stethoedge")
SHIPPED = REPO / "models" / "respiratory-mn04"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = [str(CLI)] if CLI.exists() else [sys.executable, "-m", "stethoedge"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """Exit 2 and a stderr of exactly one ``error: ...`` line (so no traceback); returns that line."""
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.endswith("\n"), proc.stderr
    return proc.stderr.rstrip("\n")


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    """A 12 s recording: the real ICBHI sample when present, otherwise breathing-like noise."""
    from conftest import icbhi_sample_dir

    out = tmp_path / "rec.wav"
    root = icbhi_sample_dir()
    if root is not None:
        first = sorted((root / "audio_and_txt_files").glob("*.wav"))[0]
        data, rate = sf.read(first, frames=12 * sf.info(first).samplerate)
        sf.write(out, data, rate, subtype="PCM_16")
    else:
        rng = np.random.default_rng(3)
        sf.write(out, 0.05 * rng.standard_normal(16000 * 12), 16000, subtype="PCM_16")
    return out


class FifoReader:
    """Reads everything written into a FIFO on a thread (a writer's open blocks until a reader opens)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path, self.data = path, b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with open(self.path, "rb") as f:
            self.data = f.read()

    def result(self, timeout: float = 60) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "nothing ever closed the FIFO"
        return self.data


def _is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


# ------------------------------------------------------------------ devices, FIFOs, symlinks (CLI)
def test_classify_jsonl_into_a_fifo_writes_through(wav: Path, tmp_path: Path):
    reader = FifoReader(tmp_path / "pipe")
    proc = run_cli("classify", str(wav), "--jsonl", str(tmp_path / "pipe"))
    assert proc.returncode == 0, proc.stderr
    lines = reader.result().decode().splitlines()
    assert len(lines) >= 3 and all(json.loads(line)["label"] for line in lines)
    assert _is_fifo(tmp_path / "pipe"), "the FIFO was replaced by a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe", "rec.wav"]  # no temporary left


def test_classify_jsonl_through_a_symlink_writes_the_target(wav: Path, tmp_path: Path):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(target.name)
    proc = run_cli("classify", str(wav), "--jsonl", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == target.name, "the link was replaced"
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(records) >= 3 and "old" not in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # permission bits kept


def test_dev_null_stays_a_character_device(wav: Path, tmp_path: Path):
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    # Pre-flight on things we own: were the rules wrong, this fails before /dev/null is touched.
    os.mkfifo(tmp_path / "probe")
    assert resolve_output(tmp_path / "probe").kind == "stream"
    assert resolve_output("/dev/null").kind == "stream"
    proc = run_cli("classify", str(wav), "--jsonl", "/dev/null")
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode), "/dev/null was replaced by a regular file"
    assert not any(p.name.startswith(".null") for p in Path("/dev").iterdir())


@pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(), reason="the shipped bundle is not in this checkout")
def test_bench_json_into_a_fifo(tmp_path: Path):
    artifact = json.loads((SHIPPED / "manifest.json").read_text())["default_artifact"]
    reader = FifoReader(tmp_path / "bench.json")
    proc = run_cli("bench", str(SHIPPED), "--runs", "2", "--artifact", artifact, "--json", str(tmp_path / "bench.json"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(reader.result())
    assert [r["artifact"] for r in rows] == [artifact] and rows[0]["p50_ms"] > 0
    assert _is_fifo(tmp_path / "bench.json")


# ------------------------------------------------------------------ an output that is an input (CLI)
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_classify_refuses_to_write_over_its_recording(wav: Path, tmp_path: Path, how: str):
    before = wav.read_bytes()
    out = wav
    if how == "symlink":
        out = tmp_path / "out.jsonl"
        out.symlink_to(wav)
    elif how == "hard link":
        out = tmp_path / "out.jsonl"
        os.link(wav, out)
    line = one_line_error(run_cli("classify", str(wav), "--jsonl", str(out)))
    assert "refusing to overwrite an input" in line and str(wav) in line
    assert wav.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"rec.wav", out.name})


def test_classify_batch_refuses_an_output_that_is_one_of_its_recordings(wav: Path, tmp_path: Path):
    before = wav.read_bytes()
    line = one_line_error(run_cli("classify-batch", str(tmp_path), "--jsonl", str(wav)))
    assert "refusing to overwrite an input" in line
    assert wav.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["rec.wav"]


def test_listen_replay_refuses_its_recording_as_jsonl_or_record_dir(wav: Path, tmp_path: Path):
    before = wav.read_bytes()
    line = one_line_error(run_cli("listen", "--replay", str(wav), "--fast", "--jsonl", str(wav)))
    assert "refusing to overwrite an input" in line
    line = one_line_error(run_cli("listen", "--replay", str(wav), "--fast", "--record", str(wav)))
    assert "not a directory" in line
    assert wav.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["rec.wav"]


@pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(), reason="the shipped bundle is not in this checkout")
def test_bench_refuses_to_write_over_a_bundle_file(tmp_path: Path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(SHIPPED, bundle)
    manifest = (bundle / "manifest.json").read_bytes()
    line = one_line_error(run_cli("bench", str(bundle), "--runs", "2", "--csv", str(bundle / "manifest.json")))
    assert "refusing to overwrite an input" in line
    assert (bundle / "manifest.json").read_bytes() == manifest


# ------------------------------------------------------------------ missing directories, non-empty --out
def test_missing_parent_directory_is_refused_and_not_created(wav: Path, tmp_path: Path):
    line = one_line_error(run_cli("classify", str(wav), "--jsonl", str(tmp_path / "no" / "such" / "out.jsonl")))
    assert f"{tmp_path / 'no' / 'such'} does not exist" in line
    line = one_line_error(run_cli("classify", str(wav), "--record", str(tmp_path / "no" / "rec")))
    assert f"{tmp_path / 'no'} does not exist" in line
    assert [p.name for p in tmp_path.iterdir()] == ["rec.wav"]


def test_simulate_refuses_a_non_empty_out_and_leaves_it_untouched(tmp_path: Path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    for extra in ([], ["--overwrite"]):
        line = one_line_error(run_cli("simulate", "--out", str(mine), "--patients", "1", "--recordings", "1",
                                      "--duration", "8", *extra))
        assert "not empty" in line
        assert [p.name for p in mine.iterdir()] == ["thesis.tex"] and (mine / "thesis.tex").read_text() == "precious"

    sim = tmp_path / "sim"
    args = ["simulate", "--out", str(sim), "--patients", "1", "--recordings", "1", "--duration", "8"]
    assert run_cli(*args).returncode == 0
    files = {p: p.read_bytes() for p in sim.rglob("*") if p.is_file()}
    line = one_line_error(run_cli(*args, "--seed", "1"))
    assert "--overwrite" in line
    assert {p: p.read_bytes() for p in sim.rglob("*") if p.is_file()} == files  # nothing deleted or rewritten
    assert run_cli(*args, "--seed", "1", "--overwrite").returncode == 0
    assert json.loads((sim / "simulation.json").read_text())["seed"] == 1
    line = one_line_error(run_cli("simulate", "--out", str(tmp_path / "a" / "b"), "--patients", "1"))
    assert f"{tmp_path / 'a'} does not exist" in line and not (tmp_path / "a").exists()


def test_export_never_replaces_its_own_run(tmp_path: Path):
    from stethoedge.export.exporter import export_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"weights")
    for out in (run, tmp_path):  # the run itself, or a directory holding it, even with --force
        with pytest.raises(OutputError, match="refusing|contains the input"):
            export_run(run, out, force=True)
    assert (run / "checkpoint.pt").read_bytes() == b"weights"
    with pytest.raises(OutputError, match="does not exist"):
        export_run(run, tmp_path / "missing" / "bundle")


# ------------------------------------------------------------------ the helper itself
def test_new_files_are_0644_and_existing_files_keep_their_mode(tmp_path: Path):
    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "new.txt", "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o644
    (tmp_path / "mine.txt").write_text("x")
    (tmp_path / "mine.txt").chmod(0o600)
    atomic_write_bytes(tmp_path / "mine.txt", b"yz")
    assert (tmp_path / "mine.txt").read_bytes() == b"yz"
    assert stat.S_IMODE((tmp_path / "mine.txt").stat().st_mode) == 0o600
    with output_path(tmp_path / "mine.txt") as tmp:
        tmp.write_bytes(b"via a path")
        tmp.chmod(0o666)  # a library creating its file with its own mode
    assert stat.S_IMODE((tmp_path / "mine.txt").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "new.txt"]


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path: Path):
    target = tmp_path / "keep.json"
    target.write_text("precious")
    with pytest.raises(RuntimeError):
        with open_output(target, "w") as f:
            f.write("half")
            raise RuntimeError("converter crashed")
    with pytest.raises(RuntimeError):
        with output_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("converter crashed")
    assert target.read_text() == "precious" and [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_output_path_streams_into_a_fifo(tmp_path: Path):
    reader = FifoReader(tmp_path / "pipe.npz")
    with output_path(tmp_path / "pipe.npz") as tmp:
        assert tmp.name == "pipe.npz" and not tmp.exists()
        np.savez(tmp, x=np.arange(5))
    import io

    with np.load(io.BytesIO(reader.result())) as data:
        assert data["x"].tolist() == [0, 1, 2, 3, 4]
    assert _is_fifo(tmp_path / "pipe.npz")


def test_links_loops_dangling_links_directories(tmp_path: Path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OutputError, match="symbolic link loop"):
        atomic_write_text(tmp_path / "a", "x")
    (tmp_path / "gone").symlink_to(tmp_path / "missing" / "file.txt")
    with pytest.raises(OutputError, match=r"dangling symbolic link .* does not exist"):
        atomic_write_text(tmp_path / "gone", "x")
    (tmp_path / "later").symlink_to("created.txt")  # dangling, but into an existing directory: the target is made
    atomic_write_text(tmp_path / "later", "made")
    assert (tmp_path / "later").is_symlink() and (tmp_path / "created.txt").read_text() == "made"
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write_text(tmp_path, "x")
    assert resolve_output("-").kind == "stdout"


def test_same_file_checks_follow_links_and_inodes(tmp_path: Path):
    src = tmp_path / "in.wav"
    src.write_bytes(b"RIFF")
    os.link(src, tmp_path / "hard")
    (tmp_path / "soft").symlink_to(src)
    for out in (src, tmp_path / "hard", tmp_path / "soft"):
        with pytest.raises(OutputError, match="refusing to overwrite an input"):
            refuse_same_file(out, [src])
    refuse_same_file(tmp_path / "other", [src])  # a new file is never an input
    refuse_same_file("/dev/null", ["/dev/null"])  # written through, never replaced: not refused
    (tmp_path / "data").mkdir()
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(tmp_path, [tmp_path / "data"], replace=True)
    check_output_dir(tmp_path / "fresh", [tmp_path / "data"], replace=True)
    assert is_temporary_name(".manifest.json.tmp-k2j3_x1") and not is_temporary_name("manifest.json")


def test_keygen_refuses_one_file_for_both_keys(tmp_path: Path):
    pytest.importorskip("cryptography")
    line = one_line_error(run_cli("keygen", str(tmp_path / "k.pem"), str(tmp_path / "k.pem")))
    assert "two different files" in line and list(tmp_path.iterdir()) == []
