"""Fuzz the ICBHI cycle-annotation parser (train/icbhi.parse_annotation).

Every input must parse, or raise DataError naming the file and line; anything else is a crash.
Usage: python benchmarks/fuzz_annotation.py [--seconds 60] [--seed 0] [--crashes DIR]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import run_fuzzer  # noqa: E402

from stethoedge.runtime.errors import DataError  # noqa: E402
from stethoedge.train.icbhi import parse_annotation  # noqa: E402

SEEDS = [
    b"0.036\t0.579\t0\t0\n0.579\t2.45\t1\t0\n2.45\t3.893\t0\t1\n",
    b"1.5 3.2 1 1\r\n3.2 5.0 0 0\r\n\r\n",
    b"0.0\t1e1\t0\t0\n",
    b"",
]


def main() -> None:
    """Run the fuzzer (budget from the command line)."""
    path = Path(tempfile.mkdtemp(prefix="fuzz-ann-")) / "101_1b1_Al_sc_Meditron.txt"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        parse_annotation(path)

    crashes = run_fuzzer("icbhi-annotation", SEEDS, target, (DataError,))
    raise SystemExit(1 if crashes else 0)


if __name__ == "__main__":
    main()
