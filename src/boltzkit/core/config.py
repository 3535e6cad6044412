"""Configs are frozen dataclasses; overrides come as `key=value` strings typed by the field.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class C:
...     steps: int = 10
...     lr: float = 1e-3
...     name: str = "a"
>>> override(C(), ["steps=20", "lr=0.5"])
C(steps=20, lr=0.5, name='a')
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from boltzkit.core.errors import UnknownName, UsageError

C = TypeVar("C")


def parse_assignments(items: Iterable[str]) -> dict[str, str]:
    """Splits `key=value` strings; anything without '=' is an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = value.strip()
    return out


def override(config: C, items: Iterable[str] | Mapping[str, Any]) -> C:
    """A copy of `config` with fields replaced; values given as strings are parsed by the field's
    type. An unknown key is an error that lists the valid ones."""
    values = parse_assignments(items) if not isinstance(items, Mapping) else dict(items)
    fields = {f.name: f for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = [f"{k}={getattr(config, k)!r}" for k in fields]
        raise UnknownName(f"config key of {type(config).__name__}", ", ".join(unknown), valid,
                          plural="keys")
    hints = typing.get_type_hints(type(config))
    parsed = {k: _parse(v, hints[k], k) if isinstance(v, str) else v for k, v in values.items()}
    return dataclasses.replace(config, **parsed)  # type: ignore[type-var]


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-serialisable dict of a (possibly nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _parse(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(text, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise UsageError(f"{key}={text!r}: " + "; ".join(errors))
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise UsageError(f"{key}={text!r} is not one of {list(choices)}")
        return text
    if origin in (tuple, list):
        value = json.loads(text) if text.startswith("[") else [s for s in text.split(",") if s]
        inner = typing.get_args(tp)[:1] or (str,)
        items = [_parse(str(v), inner[0], key) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"{key}={text!r} is not a boolean (true/false)")
    if tp in (int, float, str):
        try:
            return tp(float(text)) if tp is int and "e" in text.lower() else tp(text)
        except ValueError:
            raise UsageError(f"{key}={text!r} is not a valid {tp.__name__}") from None
    raise UsageError(f"{key}: cannot parse a value of type {tp} from the command line")


def check_ranges(config: Any, *, positive: Iterable[str] = (), nonnegative: Iterable[str] = (),
                 fractions: Iterable[str] = ()) -> None:
    """Range checks of numeric config fields, for `__post_init__`: `positive` must be > 0,
    `nonnegative` >= 0, `fractions` in [0, 1]; all finite. A field that is None (optional) is
    skipped. A violation is a `UsageError` naming the field, the valid range and the value."""
    rules = [(positive, "> 0", lambda v: v > 0), (nonnegative, ">= 0", lambda v: v >= 0),
             (fractions, "in [0, 1]", lambda v: 0 <= v <= 1)]
    for names, valid, ok in rules:
        for name in names:
            value = getattr(config, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not (math.isfinite(value) and ok(value)):
                raise UsageError(f"{type(config).__name__}.{name} must be {valid} and finite, "
                                 f"got {value}")
