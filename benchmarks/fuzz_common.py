"""A small fixed-budget mutational fuzzer shared by the benchmarks/fuzz_*.py scripts.

Atheris-style without the native dependency: start from valid seed inputs, apply random byte
mutations (bit flips, byte sets, inserts, deletes, truncations, splices, chunk repeats), run the
target, and count every exception that is not one of the target's documented typed errors as a
crash. Crashing inputs are saved under ``--crashes DIR`` to become regression tests. Deterministic
for a given ``--seed``; the budget is wall-clock seconds (``--seconds``) or ``--iterations``.
"""
from __future__ import annotations

import argparse
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def mutate(data: bytes, rng: np.random.Generator, pool: Sequence[bytes]) -> bytes:
    """One to four random byte-level mutations of ``data``."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = int(rng.integers(0, 8))
        n = len(b)
        if op == 0 and n:  # flip a bit
            i = int(rng.integers(0, n))
            b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and n:  # set a byte to an interesting value
            b[int(rng.integers(0, n))] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, int(rng.integers(0, 256))]))
        elif op == 2:  # insert random bytes
            i = int(rng.integers(0, n + 1))
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
        elif op == 3 and n:  # delete a run
            i = int(rng.integers(0, n))
            del b[i : i + int(rng.integers(1, 32))]
        elif op == 4 and n:  # truncate
            del b[int(rng.integers(0, n)) :]
        elif op == 5 and pool:  # splice with another seed
            other = pool[int(rng.integers(0, len(pool)))]
            i, j = int(rng.integers(0, n + 1)), int(rng.integers(0, len(other) + 1))
            b = b[:i] + bytearray(other[j:])
        elif op == 6 and n:  # repeat a chunk
            i = int(rng.integers(0, n))
            chunk = b[i : i + int(rng.integers(1, 64))]
            b[i:i] = chunk * int(rng.integers(1, 4))
        elif op == 7 and n >= 4:  # overwrite a 32-bit little-endian field with an extreme value
            i = int(rng.integers(0, n - 3))
            b[i : i + 4] = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000])).to_bytes(4, "little")
    return bytes(b)


def run_fuzzer(name: str, seeds: Sequence[bytes], target: Callable[[bytes], object],
               allowed: tuple[type[BaseException], ...], argv: Sequence[str] | None = None) -> int:
    """Fuzz ``target`` within the budget from the command line; print iterations and crashes; return crashes."""
    p = argparse.ArgumentParser(description=f"fuzz {name}")
    p.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget (default 60)")
    p.add_argument("--iterations", type=int, default=None, help="stop after this many inputs instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crashes", default=None, help="save crashing inputs here")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the targets' quality warnings are expected; only the counts matter
    rng = np.random.default_rng(args.seed)
    pool = list(seeds)
    outcomes: Counter[str] = Counter()
    crashes: dict[str, tuple[bytes, str]] = {}
    t0 = time.monotonic()
    i = 0
    while True:
        if args.iterations is not None and i >= args.iterations:
            break
        if args.iterations is None and time.monotonic() - t0 >= args.seconds:
            break
        base = pool[int(rng.integers(0, len(pool)))]
        data = base if i < len(seeds) else mutate(base, rng, pool)
        i += 1
        try:
            target(data)
            outcomes["accepted"] += 1
        except allowed as exc:
            outcomes[type(exc).__name__] += 1
            if "\n" in str(exc):
                key = f"multi-line message from {type(exc).__name__}"
                crashes.setdefault(key, (data, str(exc)))
        except Exception as exc:  # noqa: BLE001 - that is the point: anything else is a crash
            key = f"{type(exc).__name__} at {traceback.extract_tb(exc.__traceback__)[-1].name}"
            crashes.setdefault(key, (data, traceback.format_exc()))
            outcomes["CRASH"] += 1
        if outcomes["accepted"] and i % 50 == 0 and len(pool) < 64:
            pool.append(data)  # keep some mutants as new bases (cheap corpus growth)
    wall = time.monotonic() - t0
    print(f"{name}: {i} inputs in {wall:.1f} s ({i / wall:.0f}/s), {len(crashes)} distinct crashes, "
          f"{outcomes['CRASH']} crashing inputs")
    print("  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    for key, (data, tb) in crashes.items():
        print(f"  CRASH {key}:\n    " + tb.strip().splitlines()[-1])
        if args.crashes:
            out = Path(args.crashes)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}-{abs(hash(key)) % 10**8}.bin").write_bytes(data)
    return len(crashes)
