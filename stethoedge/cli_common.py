"""Small argparse helpers shared by the per-stage command modules."""
from __future__ import annotations

import argparse
import math
import os
import re
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


def _fmt(value: float) -> str:
    """A bound as people write it: 921600, 0.1, 1e-07."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


class Bounded:
    """argparse type: a finite int or float within [lo, hi], else a usage error that states the range.

    ``range_text`` (e.g. ``0.1-60``) is what the option's help shows; ``annotate_ranges`` adds it to
    any help that lacks it.
    """

    def __init__(self, kind: type, lo: float, hi: float) -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.__name__ = f"bounded_{kind.__name__}"  # argparse names the type in some messages

    @property
    def range_text(self) -> str:
        """The accepted range as shown in help texts, e.g. ``0.1-60``."""
        return f"{_fmt(self.lo)}-{_fmt(self.hi)}"

    def _refuse(self, text: str, what: str = "") -> argparse.ArgumentTypeError:
        noun = "an integer" if self.kind is int else "a number"
        return argparse.ArgumentTypeError(f"must be {noun} from {_fmt(self.lo)} to {_fmt(self.hi)}{what}, got {text!r}")

    def __call__(self, text: str) -> float:
        try:
            value = self.kind(text.strip())
        except (ValueError, OverflowError):
            raise self._refuse(text) from None
        if isinstance(value, float) and not math.isfinite(value):
            raise self._refuse(text, " (not NaN or infinity)")
        if not self.lo <= value <= self.hi:
            raise self._refuse(text)
        return value


def bounded_float(lo: float, hi: float) -> Bounded:
    """argparse type: a finite float in [lo, hi] (NaN and infinity refused)."""
    return Bounded(float, lo, hi)


def bounded_int(lo: int, hi: int) -> Bounded:
    """argparse type: an integer in [lo, hi]."""
    return Bounded(int, lo, hi)


class BoundedIntList(Bounded):
    """argparse type: a comma-separated list of integers, each in [lo, hi] (e.g. ``--threads 1,2,4``)."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__(int, lo, hi)
        self.__name__ = "bounded_int_list"

    def __call__(self, text: str) -> list[int]:  # type: ignore[override]
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers from {_fmt(self.lo)} "
                                             f"to {_fmt(self.hi)}, got {text!r}")
        try:
            return [Bounded.__call__(self, t) for t in items]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers from {_fmt(self.lo)} "
                                             f"to {_fmt(self.hi)}, got {text!r}") from None


def bounded_int_list(lo: int, hi: int) -> BoundedIntList:
    """argparse type: comma-separated integers, each in [lo, hi]."""
    return BoundedIntList(lo, hi)


#: Upper bound of every thread / worker-count option: more than this only thrashes the machine.
MAX_THREADS = max(64, os.cpu_count() or 1)
#: Seeds: numpy and torch take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def annotate_ranges(parser: argparse.ArgumentParser) -> None:
    """Make every range-checked option's help state its range (and its default), in this parser and
    all its sub-parsers: ``(default 2)`` becomes ``(default 2, 0.1-60)``; a help without either gains it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                annotate_ranges(sub)
            continue
        kind = action.type
        if not isinstance(kind, Bounded) or action.help == argparse.SUPPRESS:
            continue
        rng = kind.range_text
        text = action.help or ""
        if rng in text:
            continue
        m = re.search(r"\(default ((?:%\(default\)s|[^()])*)\)\s*$", text)  # "(default %(default)s)" too
        if m:
            action.help = f"{text[:m.start()]}(default {m.group(1)}, {rng})"
        elif "default" not in text and action.default is not None:
            default = ",".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            action.help = f"{text} (default {default}, {rng})".strip()
        else:
            action.help = f"{text} ({rng})".strip()


AddCommand = Callable[[str, Callable[[argparse.Namespace], int], str], argparse.ArgumentParser]
