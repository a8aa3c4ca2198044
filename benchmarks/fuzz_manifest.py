"""Fuzz the bundle manifest loader (runtime/bundle.load_bundle) with mutated manifest.json files.

Half the inputs are byte-level mutants, half JSON-aware ones (a random value replaced by another
type, a key removed). Every input must load, or raise BundleError; anything else is a crash.
Usage: python benchmarks/fuzz_manifest.py BUNDLE [--seconds 60] [--seed 0] [--crashes DIR]
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import json_mutants, run_fuzzer  # noqa: E402

from stethoedge.runtime.bundle import load_bundle  # noqa: E402
from stethoedge.runtime.errors import BundleError  # noqa: E402

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
