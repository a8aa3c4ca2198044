"""Typed JSON records: dataclasses whose JSON schema is their type hints (issue 13: the manifest).

A ``Record`` subclass is a frozen dataclass. ``Cls.from_json(value, where)`` walks
``dataclasses.fields`` + ``typing.get_type_hints`` and checks every key: ``str``, ``int`` (never a
bool), ``float`` (an int or a float, never a bool; the JSON value is kept as written), ``bool``,
``tuple[X, ...]`` / ``tuple[X, Y]`` (a JSON list), ``dict[str, X]``, ``X | None``, ``Any`` and
nested records. A field without a default is a required key. Per-field constraints sit next to the
field (``constrained(ok, "message {v}")``, or ``field(metadata={"check": fn})``), cross-field ones
in the record's ``problem()``. Every error is ONE line naming the file and the key path
(``manifest.json: artifacts[0] tolerance nan must be ...``).

Keys a record does not model are kept in ``extra``, and ``source`` remembers the JSON object a
record was read from (its key order, which keys were absent), so ``dump(Cls.from_json(v)) == v``:
a document round-trips unchanged through the types, and ``to_json`` is the one serializer.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar, Mapping, Union

from stethoedge.runtime.errors import BundleError

#: field metadata keys: "check" (value -> problem or None), "expect" (message for a badly typed value;
#: "{v}" is the value), "omit_none" (never written as null), "read"/"write" (a non-record type's
#: own from_dict/to_dict, e.g. FeatureSpec)
_INTERNAL = {"internal": True}


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def constrained(ok: Callable[[Any], bool], expect: str, **kwargs: Any) -> Any:
    """A dataclass field whose (well-typed) value must satisfy ``ok``; ``expect`` is the message for a
    bad or badly typed value (``{v}``: the value's repr), written after the key path."""
    meta = {"check": lambda v: None if ok(v) else expect.format(v=short(v)), "expect": expect}
    meta.update(kwargs.pop("metadata", {}))
    return field(metadata=meta, **kwargs)


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (a huge JSON integer included), never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def join(path: str, key: str | int) -> str:
    """The key path of ``key`` below ``path``: ``artifacts[0]``, ``artifacts[0] tolerance``, ``input.shape``."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not path:
        return key
    return f"{path} {key}" if path.endswith("]") else f"{path}.{key}"


def fail(where: str, path: str, problem: str) -> BundleError:
    """The one-line error ``where: path problem`` (no space before a problem starting with '[' or '.')."""
    if not path:
        return BundleError(f"{where}: {problem}")
    return BundleError(f"{where}: {path}{'' if problem[:1] in '[.:' else ' '}{problem}")


@dataclass(frozen=True)
class Record:
    """Base of the typed JSON records (see the module docstring)."""

    #: key order for records built in code (records read from JSON keep their source's order)
    LAYOUT: ClassVar[tuple[str, ...]] = ()
    #: keys this record does not model, kept as read (model, source, versions, ...)
    extra: dict[str, Any] = field(default_factory=dict, kw_only=True, repr=False, metadata=_INTERNAL)
    #: the JSON object this record was read from (None: built in code)
    source: Mapping[str, Any] | None = field(default=None, kw_only=True, repr=False, compare=False,
                                             metadata=_INTERNAL)

    @classmethod
    def precheck(cls, value: Any) -> str | None:
        """A problem with the whole document found before its keys are read (schema identity), or None."""
        return None

    def problem(self) -> str | None:
        """A cross-field problem of a well-typed record (``path problem``), or None."""
        return None

    @classmethod
    def from_json(cls, value: Any, where: str, path: str = "") -> Any:
        """``value`` checked against this record's types (BundleError naming ``where`` and the key path)."""
        return _record(cls, value, where, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (fresh containers): the source's key order and unmodelled keys kept."""
        return dump(self)


def to_json(document: Any) -> str:
    """The one serializer of bundle JSON documents (manifest.json, engines.json): records or plain data,
    2-space indent, key order kept, trailing newline (byte-identical to what exporters have always written)."""
    return json.dumps(dump(document), indent=2, sort_keys=False) + "\n"


def parse_json(data: bytes, where: Any) -> Any:
    """JSON bytes as data (BundleError ``where: not valid JSON (...)``, one line). utf-8-sig: a byte-order
    mark (some Windows editors add one) is harmless; a signature covers the exact bytes, BOM included."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None


def dump(value: Any) -> Any:
    """Records and containers as plain JSON data (new lists and dicts; scalars as they are)."""
    if isinstance(value, Record):
        return _dump_record(value)
    if isinstance(value, (list, tuple)):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _typed_fields(cls: type) -> tuple[Field, ...]:
    return tuple(f for f in fields(cls) if not f.metadata.get("internal"))


def _dump_record(rec: Record) -> dict[str, Any]:
    src = rec.source
    typed = {f.name: f for f in _typed_fields(type(rec))}
    out: dict[str, Any] = {}
    for key in (*(src if src is not None else rec.LAYOUT), *typed, *rec.extra):
        if key in out:
            continue
        if key in rec.extra:
            out[key] = dump(rec.extra[key])
            continue
        f = typed.get(key)
        if f is None:
            continue  # a key of the source that was removed since
        value = getattr(rec, key)
        if value is None and f.metadata.get("omit_none"):
            continue
        if src is not None and key not in src and value == _default(f):
            continue  # absent from the source and still the default: stays absent
        write = f.metadata.get("write")
        if write is None:
            out[key] = dump(value)
        elif src is not None and key in src and _same(f.metadata["read"], src[key], value):
            out[key] = dump(src[key])  # unchanged: exactly as read (no defaults added, no 0 -> 0.0)
        else:
            out[key] = write(value)
    return out


def _same(read: Callable[[Any], Any], raw: Any, value: Any) -> bool:
    try:
        return read(raw) == value
    except BundleError:
        return False


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _record(cls: type, value: Any, where: str, path: str) -> Any:
    problem = cls.precheck(value)
    if problem:
        raise fail(where, path, problem)
    if not isinstance(value, dict):
        raise fail(where, path, f"must be an object, got {_kind(value)}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    known = set()
    for f in _typed_fields(cls):
        known.add(f.name)
        p = join(path, f.name)
        if f.name not in value:
            if _default(f) is MISSING:
                raise fail(where, path, f"{': ' if path else ''}missing key {f.name!r}")
            continue
        kwargs[f.name] = _field_value(f, hints[f.name], value[f.name], where, p)
    extra = {k: v for k, v in value.items() if k not in known}
    rec = cls(**kwargs, extra=extra, source=value)
    problem = rec.problem()
    if problem:
        raise fail(where, path, problem)
    return rec


def _field_value(f: Field, tp: Any, raw: Any, where: str, path: str) -> Any:
    read, expect, check = f.metadata.get("read"), f.metadata.get("expect"), f.metadata.get("check")
    try:
        value = read(raw) if read is not None else from_json(tp, raw, where, path)
    except BundleError as exc:
        if read is not None:
            raise BundleError(f"{where}: {exc}") from None
        if expect is None:
            raise
        raise fail(where, path, expect.format(v=short(raw))) from None
    problem = check(value) if check is not None else None
    if problem:
        raise fail(where, path, problem)
    return value


def from_json(tp: Any, value: Any, where: str, path: str) -> Any:
    """``value`` checked against the type hint ``tp`` (records recursively); JSON lists become tuples
    where the hint is a tuple. BundleError ``where: path must be ..., got ...`` otherwise."""
    if tp is Any:
        return value
    if isinstance(tp, type) and is_dataclass(tp) and issubclass(tp, Record):
        return _record(tp, value, where, path)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and options[0] not in _SCALARS:  # Record | None, tuple[...] | None: its own errors
            return from_json(options[0], value, where, path)
        for option in options:
            try:
                return from_json(option, value, where, path)
            except BundleError:
                pass
        raise fail(where, path, f"must be {describe(tp)}, got {_kind(value)}")
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise fail(where, path, f"must be {describe(tp)}, got {_kind(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail(where, path, f"must be {describe(tp)}, got {_kind(value)}")
            return tuple(from_json(a, v, where, join(path, i)) for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [from_json(item, v, where, join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail(where, path, f"must be {describe(tp)}, got {_kind(value)}")
        item = args[1] if args else Any
        return {k: from_json(item, v, where, join(path, k)) for k, v in value.items()}
    ok = _SCALARS.get(tp)
    if ok is None:
        raise TypeError(f"from_json: unsupported type {tp!r} at {path}")
    if not ok(value):
        raise fail(where, path, f"must be {describe(tp)}, got {_kind(value)}")
    return value


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
}


def describe(tp: Any) -> str:
    """A type hint in words: ``an integer``, ``a list of 3``, ``a string or null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin in (tuple, list):
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        return f"a list of {len(args)}" if fixed else "a list"
    if origin is dict or (isinstance(tp, type) and is_dataclass(tp)):
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"{'a string' if isinstance(value, str) else 'the number'} {short(value, 40)}"
