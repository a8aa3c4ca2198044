"""Settings dataclasses built from plain dicts (recipes, config.json) with one clear error for unknown keys."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from stethoedge.runtime.errors import DataError

T = TypeVar("T")


def from_options(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``; keys that are not fields of ``cls`` are a DataError naming them as ``what``."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise DataError(f"unknown {what}(s): {', '.join(unknown)}")
    return cls(**values)
