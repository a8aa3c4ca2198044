"""Fuzz the SPRSound annotation parser (train/sprsound.parse_annotation) with mutated JSON files.

Every input must parse, or raise DataError naming the file; anything else is a crash.
Usage: python benchmarks/fuzz_sprsound.py [--seconds 60] [--seed 0] [--crashes DIR] [--engine auto|atheris|mutate]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_common import json_mutants, run_fuzzer  # noqa: E402

from stethoedge.runtime.errors import DataError  # noqa: E402
from stethoedge.train.sprsound import parse_annotation  # noqa: E402

SEEDS = [
    {"record_annotation": "Normal", "event_annotation": [{"start": "0", "end": "1500", "type": "Normal"}]},
    {"record_annotation": "CAS & DAS", "event_annotation": [
        {"start": "7336", "end": "7833", "type": "Fine Crackle"}, {"start": "7870", "end": "8428", "type": "Wheeze"}]},
    {"record_annotation": "Poor Quality", "event_annotation": []},
    {"record_annotation": "DAS", "event_annotation": [{"start": 10, "end": 20.5, "type": "Wheeze+Crackle"}]},
]


def main() -> None:
    """Run the fuzzer (budget from the command line)."""
    path = Path(tempfile.mkdtemp(prefix="fuzz-spr-")) / "65121853_1.5_0_p3_4109.json"

    def target(data: bytes) -> None:
        path.write_bytes(data)
        parse_annotation(path)

    seeds = [json.dumps(s).encode() for s in SEEDS]
    seeds += [m for k, s in enumerate(SEEDS) for m in json_mutants(s, 50, seed=k)]  # odd types in every field
    tokens = [t.encode() for t in ('"record_annotation"', '"event_annotation"', '"start"', '"end"', '"type"',
                                   '"Normal"', '"CAS & DAS"', '"Fine Crackle"', '"Wheeze"', "[", "]", "{", "}",
                                   ":", ",", "null", "true", "1e999", "-1", '"nan"', '"inf"', "0")]
    crashes = run_fuzzer("sprsound-annotation", seeds, target, (DataError,), tokens=tokens)
    raise SystemExit(1 if crashes else 0)


if __name__ == "__main__":
    main()
