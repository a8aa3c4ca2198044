"""Small argparse helpers shared by the per-stage command modules."""
from __future__ import annotations

import argparse
from typing import Callable


def positive_float(text: str) -> float:
    """argparse type: a float > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]
