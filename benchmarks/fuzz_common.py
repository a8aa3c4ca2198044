"""The fuzzing engines shared by the benchmarks/fuzz_*.py scripts.

Two engines run the same target with the same seeds and the same rule: every exception that is
not one of the target's documented typed errors (or a typed error with a multi-line message) is
a crash.

- ``atheris`` (default when ``pip install atheris`` worked, extra ``stethoedge[fuzz]``):
  coverage-guided libFuzzer over instrumented Python; it keeps the inputs that reach new code
  and stops at the first crash, saving it under ``--crashes DIR``. libFuzzer prints its own
  statistics (``cov:`` edges, ``ft:`` features, executed units).
- ``mutate``: a fixed-budget blind mutational fuzzer without the native dependency: random byte
  mutations (bit flips, byte sets, inserts, deletes, truncations, splices, chunk repeats) of the
  seeds; it keeps going after a crash and reports each distinct one.

Deterministic for a given ``--seed`` (``mutate``); the budget is wall-clock seconds (``--seconds``)
or ``--iterations``.
"""
from __future__ import annotations

import argparse
import json
import random
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


def run_one(target: Callable[[bytes], object], data: bytes, allowed: tuple[type[BaseException], ...],
            outcomes: Counter[str]) -> str | None:
    """Run ``target`` on one input and count its outcome; a typed error with a multi-line message is
    returned as a crash description (other exceptions propagate)."""
    try:
        target(data)
    except allowed as exc:
        outcomes[type(exc).__name__] += 1
        return f"multi-line message from {type(exc).__name__}: {exc}" if "\n" in str(exc) else None
    outcomes["accepted"] += 1
    return None


def run_fuzzer(name: str, seeds: Sequence[bytes], target: Callable[[bytes], object],
               allowed: tuple[type[BaseException], ...], argv: Sequence[str] | None = None,
               tokens: Sequence[bytes] = ()) -> int:
    """Fuzz ``target`` within the budget from the command line; print iterations and crashes; return crashes.

    ``tokens`` (keywords of the input format) become a libFuzzer dictionary for the atheris engine.
    """
    p = argparse.ArgumentParser(description=f"fuzz {name}")
    p.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget (default 60)")
    p.add_argument("--iterations", type=int, default=None, help="stop after this many inputs instead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crashes", default=None, help="save crashing inputs here")
    p.add_argument("--engine", choices=("auto", "atheris", "mutate"), default="auto",
                   help="atheris (coverage-guided), mutate (blind), auto: atheris when installed (default)")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)  # the targets' quality warnings are expected; only the counts matter
    if args.engine != "mutate":
        try:
            import atheris  # noqa: F401
        except ImportError:
            if args.engine == "atheris":
                raise SystemExit("atheris is not installed: pip install 'stethoedge[fuzz]'") from None
        else:
            return run_atheris(name, seeds, target, allowed, args, tokens)
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
            multi_line = run_one(target, data, allowed, outcomes)
            if multi_line:
                crashes.setdefault(multi_line.split(":", 1)[0], (data, multi_line))
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


def run_atheris(name: str, seeds: Sequence[bytes], target: Callable[[bytes], object],
                allowed: tuple[type[BaseException], ...], args: argparse.Namespace, tokens: Sequence[bytes] = ()) -> int:
    """Coverage-guided fuzzing with atheris/libFuzzer; libFuzzer exits the process (non-zero on a crash)."""
    import os
    import sys
    import tempfile

    import atheris

    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-corpus-"))
    for k, seed in enumerate(seeds):
        (corpus / f"seed-{k:04d}").write_bytes(seed)
    crashes = Path(args.crashes or tempfile.mkdtemp(prefix=f"fuzz-{name}-crashes-"))
    crashes.mkdir(parents=True, exist_ok=True)
    options = []
    if tokens:
        dictionary = corpus.parent / f"{corpus.name}.dict"
        dictionary.write_text("".join('"' + "".join(f"\\x{b:02x}" for b in t) + '"\n' for t in tokens))
        options.append(f"-dict={dictionary}")
    outcomes: Counter[str] = Counter()
    clock = {"t0": 0.0, "last": 0.0}

    def report() -> None:
        print(f"{name}: {sum(outcomes.values())} inputs in {time.monotonic() - clock['t0']:.1f} s; outcomes: "
              + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())), file=sys.stderr, flush=True)

    def one_input(data: bytes) -> None:
        now = time.monotonic()
        if not clock["t0"]:  # the clock starts at the first input, after instrumentation
            clock["t0"] = clock["last"] = now
        elif now - clock["last"] >= 5.0:
            clock["last"] = now
            report()
        multi_line = run_one(target, data, allowed, outcomes)
        if multi_line:
            raise AssertionError(multi_line)

    n = instrument_stethoedge(atheris)
    budget = ([f"-runs={args.iterations}"] if args.iterations is not None
              else [f"-max_total_time={max(1, int(args.seconds))}"])
    atheris.Setup([sys.argv[0], str(corpus), *budget, f"-seed={args.seed + 1}", "-print_final_stats=1",
                   f"-artifact_prefix={crashes}{os.sep}", "-rss_limit_mb=4096", "-timeout=30", *options], one_input)
    print(f"{name}: atheris (coverage-guided) over {n} instrumented stethoedge functions; corpus {corpus}; "
          f"crashes go to {crashes}", file=sys.stderr, flush=True)
    atheris.Fuzz()
    return 0


def instrument_stethoedge(atheris: object) -> int:
    """Add coverage instrumentation to every function and method of the loaded ``stethoedge`` modules.

    ``atheris.instrument_all()`` would also instrument numpy, soundfile and the standard library
    (about 40 s on this machine, and coverage of code that is not ours); this covers our parsers only.
    Returns the number of functions instrumented.
    """
    import inspect
    import sys

    count = 0
    for mod_name, module in list(sys.modules.items()):
        if not mod_name.startswith("stethoedge") or module is None:
            continue
        for obj in list(vars(module).values()):
            members = [obj] if inspect.isfunction(obj) else (
                [m for m in vars(obj).values() if inspect.isfunction(m)] if inspect.isclass(obj) else [])
            for fn in members:
                if getattr(fn, "__module__", None) == mod_name:
                    atheris.instrument_func(fn)
                    count += 1
    return count


ODD_VALUES = [None, True, -1, 0, 2**63, 1e308, float("nan"), "", "../../etc/passwd", [], {}, "x" * 1000]


def json_mutants(manifest: dict, count: int, seed: int) -> list[bytes]:
    """``count`` manifests, each with one value swapped for an odd one or one key removed."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        m = json.loads(json.dumps(manifest))
        node, key = m, None
        for _ in range(rnd.randint(1, 4)):  # walk down a random path
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = rnd.choice(keys)
            child = node[key]
            if isinstance(child, (dict, list)) and child and rnd.random() < 0.7:
                node, key = child, None
            else:
                break
        if key is not None:
            if isinstance(node, dict) and rnd.random() < 0.3:
                node.pop(key, None)
            else:
                node[key] = rnd.choice(ODD_VALUES)
        out.append(json.dumps(m).encode())
    return out
