"""One registry implementation for targets, samplers and experiments: names mapped to
`"module:attribute"` strings, imported on first use so that listing names stays fast.

>>> reg = Registry("thing", {"b": "math:cos", "a": "math:sin"})
>>> reg.names()
['a', 'b']
>>> reg.get("a")(0.0)
0.0
>>> reg.get("c")
Traceback (most recent call last):
...
boltzkit.core.errors.UnknownName: unknown thing 'c'; valid things: a, b
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from boltzkit.core.errors import UnknownName


class Registry:
    """name -> `"module:attribute"`; `get(name)` imports the module and returns the attribute."""

    def __init__(self, kind: str, entries: Mapping[str, str]) -> None:
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def location(self, name: str) -> tuple[str, str]:
        """(module, attribute) of `name`; an unknown name raises `UnknownName`."""
        if name not in self._entries:
            raise UnknownName(self.kind, name, self.names())
        module, _, attr = self._entries[name].partition(":")
        return module, attr

    def get(self, name: str) -> Any:
        """The registered object (a module when the entry names no attribute)."""
        module, attr = self.location(name)
        loaded = importlib.import_module(module)
        return getattr(loaded, attr) if attr else loaded
