"""Fuzz the bundle manifest loader (runtime/bundle.load_bundle) with mutated manifest.json files.

Half the inputs are byte-level mutants, half JSON-aware ones (a random value replaced by another
type, a key removed). Every input must load, or raise BundleError; anything else is a crash.
Usage: python benchmarks/fuzz_manifest.py BUNDLE [--seconds 60] [--seed 0] [--crashes DIR]
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import run_fuzzer  # noqa: E402

from stethoedge.runtime.bundle import load_bundle  # noqa: E402
from stethoedge.runtime.errors import BundleError  # noqa: E402

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


def main() -> None:
    """Run the fuzzer (budget from the command line)."""
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: fuzz_manifest.py BUNDLE [--seconds S] [--seed N] [--crashes DIR]")
    src = Path(sys.argv[1])
    work = Path(tempfile.mkdtemp(prefix="fuzz-manifest-")) / "bundle"
    shutil.copytree(src, work)
    original = (src / "manifest.json").read_bytes()
    seeds = [original] + json_mutants(json.loads(original), 200, seed=0)

    def target(data: bytes) -> None:
        (work / "manifest.json").write_bytes(data)
        load_bundle(work)

    crashes = run_fuzzer("bundle-manifest", seeds, target, (BundleError,), argv=sys.argv[2:])
    raise SystemExit(1 if crashes else 0)


if __name__ == "__main__":
    main()
