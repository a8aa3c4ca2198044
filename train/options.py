"""Settings dataclasses built from plain dicts (recipes, config.json) with one clear error for unknown keys."""
from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

from stethoedge.runtime.errors import DataError

T = TypeVar("T")


def from_options(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``; unknown keys and missing required ones are a DataError naming them as ``what``."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise DataError(f"unknown {what}(s): {', '.join(unknown)}")
    missing = [f.name for f in fields(cls) if f.init and f.name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise DataError(f"missing required {what}(s): {', '.join(missing)}")
    return cls(**values)
