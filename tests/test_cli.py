"""The CLI end to end in subprocesses: help, classify on real audio, and bad inputs as one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

COMMANDS = ["simulate", "train", "export", "classify", "listen", "bench", "demo", "bridge", "devices", "doctor"]


def run_cli(*args: str, check: bool = False, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stethoedge", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, **kwargs)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_useful_help(command: str):
    proc = run_cli(command, "--help", check=True)
    assert "usage: stethoedge " + command in proc.stdout
    assert len(proc.stdout.splitlines()) >= 4


def test_classify_real_icbhi_recording(bundle_dir: Path, icbhi_dir: Path, tmp_path: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "101_1b1_Al_sc_Meditron.wav"
    out = tmp_path / "out.jsonl"
    proc = run_cli("classify", str(bundle_dir), str(wav), "--hop", "2", "--jsonl", str(out), check=True)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    # 20 s, first decision at 2 s, a hop of 2 s: windows end at 2, 4, ..., 20 s
    assert [r["end_s"] for r in records] == pytest.approx([2.0 * k for k in range(1, 11)])
    assert [r["padded"] for r in records] == [True] * 3 + [False] * 7
    for r in records:
        assert r["label"] in ("normal", "crackle", "wheeze", "both")
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert proc.stdout.count("\n") == len(records) + 3  # 2 header lines, one per window, the abstention summary
    assert proc.stdout.rstrip("\n").endswith(f"# {len(records)} window(s): {len(records)} decided, 0 abstained "
                                              "(0 poor quality, 0 uncertain)")
    assert all(r["quality"] == "unchecked" and r["abstained"] is False and r["model_label"] == r["label"] for r in records)


def test_classify_4khz_stethoscope_file(bundle_dir: Path, icbhi_dir: Path):
    wav = icbhi_dir / "audio_and_txt_files" / "104_1b1_Al_sc_Litt3200.wav"
    proc = run_cli("classify", str(bundle_dir), str(wav), "--jsonl", "-", check=True)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["end_s"] == pytest.approx(sf.info(str(wav)).duration, abs=1e-3)


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    files = {}
    files["empty"] = tmp / "empty.wav"
    files["empty"].write_bytes(b"")
    files["not-a-wav"] = tmp / "text.wav"
    files["not-a-wav"].write_text("hello, I am not audio\n" * 20)
    files["truncated-header"] = tmp / "trunc.wav"
    files["truncated-header"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00")
    files["nan"] = tmp / "nan.wav"
    x = np.zeros(16000)
    x[5] = np.nan
    sf.write(files["nan"], x, 16000, subtype="FLOAT")
    files["one-sample"] = tmp / "one.wav"
    sf.write(files["one-sample"], np.zeros(1), 16000, subtype="PCM_16")
    files["missing"] = tmp / "missing.wav"
    files["directory"] = tmp / "adir"
    files["directory"].mkdir()
    return files


@pytest.mark.parametrize("case", ["empty", "not-a-wav", "truncated-header", "nan", "one-sample", "missing", "directory"])
def test_bad_audio_gives_one_clear_line(bundle_dir: Path, tmp_path: Path, case: str):
    path = _bad_inputs(tmp_path)[case]
    proc = run_cli("classify", str(bundle_dir), str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_unknown_bundle_version_gives_one_clear_line(bundle_dir: Path, tmp_path: Path, icbhi_dir: Path):
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(bundle_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(manifest))
    wav = icbhi_dir / "audio_and_txt_files" / "102_1b1_Ar_sc_Meditron.wav"
    proc = run_cli("classify", str(bad), str(wav))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "schema version 99 is not supported" in proc.stderr


def test_bench_prints_a_row_per_artifact(bundle_dir: Path, tmp_path: Path):
    proc = run_cli("bench", str(bundle_dir), "--runs", "3", "--json", str(tmp_path / "b.json"), check=True)
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["artifact"] for r in rows] == ["onnx-fp32", "onnx-int8-dynamic"]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["selftest_agreement"] == 1.0
        assert r["artifact"] in proc.stdout


def test_bad_arguments_are_usage_errors(bundle_dir: Path):
    proc = run_cli("classify", str(bundle_dir), "x.wav", "--hop", "-1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "argument --hop: must be a number from 0.1 to 60, got '-1'" in proc.stderr


def test_listen_replay_stops_cleanly_on_sigterm(bundle_dir: Path, tmp_path: Path, rng: np.random.Generator):
    """SIGTERM (systemd's stop): JSON lines complete, the open recording finalised by rename, counters printed."""
    import signal
    import time

    x = (0.2 * rng.standard_normal(16000 * 30)).astype(np.float32)
    wav = tmp_path / "long.wav"
    sf.write(wav, x, 16000, subtype="PCM_16")
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec"
    proc = subprocess.Popen([sys.executable, "-m", "stethoedge", "listen", str(bundle_dir), "--replay", str(wav),
                             "--hop", "1", "--jsonl", str(out), "--record", str(rec), "--segment-seconds", "2",
                             "--allow-degraded"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "# stopped" in stderr and "Traceback" not in stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line complete
    assert len(records) >= 3 and records[0]["end_s"] == pytest.approx(2.0)
    assert all("smoothed_label" in r and "wall_time" in r for r in records)
    counters = dict(kv.split("=") for kv in stdout.split("# stream: ")[1].splitlines()[0].split(", "))
    assert int(counters["windows"]) >= len(records) and int(counters["ring_samples_dropped"]) == 0
    assert not list(rec.glob(".*")), "no partial recording or temporary index after SIGTERM"
    index = json.loads((rec / "index.json").read_text())["segments"]
    audio = np.concatenate([sf.read(rec / s["file"], dtype="float32")[0] for s in index])
    assert audio.size == int(counters["samples_in"]) > 16000 * 2
    np.testing.assert_array_equal(audio, sf.read(wav, dtype="float32")[0][: audio.size])


def test_classify_backend_choice_and_signature_flag(bundle_dir: Path, tmp_path: Path):
    wav = tmp_path / "a.wav"
    sf.write(wav, 0.1 * np.random.default_rng(0).standard_normal(16000 * 3), 16000)
    bad = run_cli("classify", str(bundle_dir), str(wav), "--backend", "nope")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = run_cli("classify", str(bundle_dir), str(wav), "--require-signature", str(tmp_path / "no.pub"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    ok = run_cli("classify", str(bundle_dir), str(wav), "--backend", "onnxruntime", "--smooth", "vote:2",
                 "--jsonl", "-", check=True)
    assert [json.loads(line)["end_s"] for line in ok.stdout.splitlines()] == pytest.approx([2.0, 3.0])


def test_devices_and_doctor_commands_run():
    try:
        import sounddevice  # noqa: F401  (raises OSError without PortAudio)
    except OSError:
        pytest.skip("PortAudio library not installed (apt install libportaudio2): `devices` cannot list anything")
    devices = run_cli("devices", "--json", check=True)
    assert isinstance(json.loads(devices.stdout), list)
    doctor = run_cli("doctor", "--json", check=True)
    report = json.loads(doctor.stdout)
    assert report["backends"]["onnxruntime"]["available"] is True
    assert "install_by_platform" in report["backends"]["tensorrt"]


def test_listen_replay_runs_with_torch_blocked(bundle_dir: Path, tmp_path: Path):
    """The device command never imports torch (nor train/export): a fast replay through listen."""
    x = (0.1 * np.random.default_rng(2).standard_normal(16000 * 6)).astype(np.float32)
    wav = tmp_path / "six.wav"
    sf.write(wav, x, 16000, subtype="PCM_16")
    block = ("import sys; sys.modules['torch'] = None; sys.modules['stethoedge.train'] = None; "
             "sys.modules['stethoedge.export'] = None\n"
             "from stethoedge.cli import main; rc = main(sys.argv[1:])\n"
             "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
             "raise SystemExit(rc)")
    proc = subprocess.run([sys.executable, "-c", block, "listen", str(bundle_dir), "--replay", str(wav), "--fast",
                           "--allow-degraded", "--jsonl", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ends = [json.loads(line)["end_s"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert ends == pytest.approx([2.0, 4.0, 6.0])
