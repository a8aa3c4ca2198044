"""Soak test of `stethoedge listen`: replay a long recording as fast as possible through the real CLI.

Writes a synthetic breathing-like recording of ``--minutes`` (default 60) to a temporary WAV
(in blocks, so this script stays small too), runs ``stethoedge listen BUNDLE --replay WAV --fast
--jsonl OUT`` in a subprocess with torch blocked, samples the subprocess's resident memory
(VmRSS) every 0.2 s, and reports: peak RSS (target <= 150 MB), RSS growth from the end of
warm-up to the end (target < 5 MB), windows, skipped windows, dropped samples (target 0),
and the per-window latency p50/p95/p99 (features + inference) from the JSON lines.

Usage: python benchmarks/bench_listen_soak.py BUNDLE [--minutes 60] [--hop 2] [--artifact NAME]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

BLOCK_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['stethoedge.train'] = None; "
               "sys.modules['stethoedge.export'] = None\n"
               "from stethoedge.cli import main; raise SystemExit(main(sys.argv[1:]))")


def write_recording(path: Path, minutes: float, rate: int = 16000) -> int:
    """Breathing-modulated noise with a heartbeat-like thump, written block by block; returns samples."""
    g = np.random.default_rng(0)
    total = int(minutes * 60 * rate)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as f:
        for start in range(0, total, rate * 10):
            n = min(rate * 10, total - start)
            t = (start + np.arange(n)) / rate
            breath = 0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t)
            x = 0.08 * g.standard_normal(n) * breath + 0.05 * np.sin(2 * np.pi * 60 * t) * (np.sin(2 * np.pi * 1.2 * t) > 0.9)
            f.write(x.astype(np.float32))
    return total


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def main() -> None:
    """Run the soak and print one report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--hop", type=float, default=2.0)
    p.add_argument("--artifact", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", default=None, help="keep the JSON lines here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav, out = Path(tmp) / "soak.wav", Path(tmp) / "soak.jsonl"
        total = write_recording(wav, args.minutes)
        cmd = [sys.executable, "-c", BLOCK_TORCH, "listen", args.bundle, "--replay", str(wav), "--fast",
               "--hop", str(args.hop), "--jsonl", str(out), "--threads", str(args.threads), "--allow-degraded"]
        if args.artifact:
            cmd += ["--artifact", args.artifact]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        log_out, log_err = open(Path(tmp) / "stdout", "w+"), open(Path(tmp) / "stderr", "w+")  # not pipes: 1 h of lines
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=log_err, text=True, env=env)
        samples: list[tuple[float, float, int]] = []  # (seconds, RSS MB, JSON-lines bytes so far)
        while proc.poll() is None:
            r = rss_mb(proc.pid)
            if r is not None:
                samples.append((time.monotonic() - t0, r, out.stat().st_size if out.exists() else 0))
            time.sleep(0.05)
        proc.wait()
        log_out.seek(0)
        log_err.seek(0)
        stdout, stderr = log_out.read(), log_err.read()
        log_out.close()
        log_err.close()
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            sys.exit(f"listen failed ({proc.returncode}): {stderr.strip()}")
        records = [json.loads(line) for line in out.read_text().splitlines()]
        if args.keep:
            Path(args.keep).write_text(out.read_text())
    counters = dict(kv.split("=") for kv in stdout.split("# stream: ")[1].splitlines()[0].split(", "))
    lat = np.array([r["latency_ms"] for r in records])
    rss = np.array([r for _, r, _ in samples])
    # Warm-up: the bundle load, self-test and the first 5 % of the windows; memory growth is
    # measured from there to the end.
    # The end is the last sample taken while windows were still being written (not the shutdown).
    final = max(size for *_, size in samples) if samples else 0
    warm = np.array([r for _, r, size in samples if 0.05 * final <= size < final])
    if warm.size < 2:
        warm = rss
    dropped = int(counters["ring_samples_dropped"]) + int(counters["samples_lost"])
    print(f"replayed {args.minutes:g} min ({total} samples) in {wall:.1f} s = {args.minutes * 60 / wall:.0f}x real time")
    print(f"windows {len(records)} (skipped {counters['windows_skipped']}), samples in {counters['samples_in']} "
          f"of {total}, dropped {dropped}")
    print(f"latency per window (features + inference): p50 {np.percentile(lat, 50):.2f} ms, "
          f"p95 {np.percentile(lat, 95):.2f} ms, p99 {np.percentile(lat, 99):.2f} ms")
    marks = []
    for frac in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        at = [r for _, r, size in samples if size >= frac * final]
        marks.append(f"{frac:.0%}: {at[0]:.1f}" if at else f"{frac:.0%}: -")
    print("RSS (MB) when this share of the windows was written: " + ", ".join(marks))
    print(f"RSS samples {len(rss)} every 0.05 s; ", end="")
    print(f"RSS: peak {rss.max():.1f} MB (target <= 150), after warm-up {warm[0]:.1f} MB -> end {warm[-1]:.1f} MB, "
          f"growth {warm[-1] - warm[0]:+.1f} MB (target < 5); max after warm-up {warm.max():.1f} MB")


if __name__ == "__main__":
    main()
