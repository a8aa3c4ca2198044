"""The edge recipe and the exporter stay split into named steps: no function of theirs grows past 50 lines."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIMIT = 50


@pytest.mark.parametrize("path", ["train/edge_learner.py", "export/exporter.py"])
def test_no_function_longer_than_the_limit(path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > LIMIT}
    assert not long, f"{path}: functions over {LIMIT} lines: {long}"
