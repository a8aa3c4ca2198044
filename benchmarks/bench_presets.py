"""Model presets side by side: parameters, GFLOPs per 8 s window, CPU latency of one forward, and the
teacher/student ratios (teacher: base, overlapping stride 10; student: the edge student recipe).

    .venv/bin/python benchmarks/bench_presets.py [--presets nano,tiny,small,base] [--repeats 5] [--threads N]

Numbers are measured in this run on this machine; ratios compare presets measured in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from stethoedge.train.model import AST, count_parameters, gflops_per_window, preset_config

STUDENT = dict(preset="tiny", depth=6, fstride=16, tstride=16)  # train/recipes/edge-student.toml


def measure(model: AST, repeats: int) -> dict[str, float]:
    """Parameters, GFLOPs and median CPU latency (ms) of one (1, frames, mels) forward."""
    x = torch.zeros(1, model.cfg.n_frames, model.cfg.n_mels)
    model.eval()
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {"params_m": count_parameters(model) / 1e6, "gflops": gflops_per_window(model),
            "latency_ms": 1000 * statistics.median(times), "tokens": model.cfg.n_patches + 2}


def main() -> None:
    """Print one row per preset plus the edge student, then teacher/student ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="nano,tiny,small,base")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {name: measure(AST(preset_config(name)), args.repeats) for name in args.presets.split(",")}
    student_cfg = preset_config(STUDENT["preset"], depth=STUDENT["depth"], fstride=STUDENT["fstride"],
                                tstride=STUDENT["tstride"])
    rows["edge-student"] = measure(AST(student_cfg), args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, input 798 frames x 128 mels, batch 1")
    print(f"{'model':<14}{'params (M)':>12}{'GFLOPs':>10}{'tokens':>8}{'CPU ms':>10}")
    for name, r in rows.items():
        print(f"{name:<14}{r['params_m']:>12.2f}{r['gflops']:>10.2f}{r['tokens']:>8}{r['latency_ms']:>10.1f}")
    if "base" in rows:
        t, s = rows["base"], rows["edge-student"]
        print(f"teacher (base) / student (edge): parameters x{t['params_m'] / s['params_m']:.1f}, "
              f"GFLOPs x{t['gflops'] / s['gflops']:.1f}, CPU latency x{t['latency_ms'] / s['latency_ms']:.1f}")


if __name__ == "__main__":
    main()
