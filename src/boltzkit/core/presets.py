"""Presets as data: named settings in TOML files shipped with the package, applied to a config
dataclass through `boltzkit.core.config.override`, so an unknown key is an error, never dropped.

A preset file holds one table per preset name. Inside a table:
- plain keys are config fields;
- `base = "other"` starts from preset "other" (resolved first, then overridden);
- a sub-table named after a sampler (e.g. `[dw4.pt]`) applies only to that sampler, for files
  that serve several samplers (`mcmc.toml`: rwmh, mala, hmc, pt);
- `about = "..."` is a one-line description shown by `boltzkit presets`.

>>> table = {"a": {"steps": 5, "pt": {"n_temps": 4}}, "b": {"base": "a", "steps": 7}}
>>> resolve(table, "b", sampler="pt", kind="test")
{'steps': 7, 'n_temps': 4}
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any, TypeVar

from boltzkit.core.config import override
from boltzkit.core.errors import UnknownName, UsageError

C = TypeVar("C")
_META = ("base", "about", "blocks", "includes")


@functools.cache
def load(name: str) -> dict[str, dict[str, Any]]:
    """The presets of file `boltzkit/presets/<name>.toml` (cached)."""
    text = resources.files("boltzkit.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def names(table: Mapping[str, Any]) -> list[str]:
    """The preset names of a table, sorted."""
    return sorted(table)


def about(table: Mapping[str, Any], name: str) -> str:
    """The preset's one-line description (its base's when it has none)."""
    entry = table.get(name, {})
    if "about" in entry or "base" not in entry:
        return str(entry.get("about", ""))
    return about(table, entry["base"])


def resolve(table: Mapping[str, Any], name: str, *, sampler: str | None = None,
            kind: str = "preset", samplers: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flat {field: value} of preset `name`: its base chain, then its own keys, then the
    sub-table of `sampler`. Sub-tables of other samplers (named in `samplers`, or any dict value)
    are skipped."""
    if name not in table:
        raise UnknownName(kind, name, names(table))
    entry = table[name]
    values: dict[str, Any] = {}
    if "base" in entry:
        if entry["base"] == name:
            raise UsageError(f"{kind} {name!r} names itself as its base")
        values.update(resolve(table, entry["base"], sampler=sampler, kind=kind,
                              samplers=samplers))
    for key, value in entry.items():
        if key in _META or isinstance(value, dict) or key in samplers:
            continue
        values[key] = list(value) if isinstance(value, list) else value
    if sampler is not None and isinstance(entry.get(sampler), dict):
        values.update(entry[sampler])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def apply(config: C, table: Mapping[str, Any], name: str, *, sampler: str | None = None,
          kind: str = "preset") -> C:
    """`config` with preset `name` applied; an unknown key raises `UnknownName`."""
    return override(config, resolve(table, name, sampler=sampler, kind=kind))


def blocks(table: Mapping[str, Any], name: str, *, kind: str = "preset") -> list[dict[str, Any]]:
    """The blocks of a list-valued preset (experiments): its `blocks` array of tables, after the
    blocks of each preset named in `includes`; lists become tuples."""
    if name not in table:
        raise UnknownName(kind, name, names(table))
    entry = table[name]
    out: list[dict[str, Any]] = []
    for included in entry.get("includes", []):
        if included == name:
            raise UsageError(f"{kind} {name!r} includes itself")
        out += blocks(table, included, kind=kind)
    for block in entry.get("blocks", []):
        out.append({k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})
    return out
