"""Named experiments (`boltzkit experiment NAME`): each is a function
`run(out_dir: pathlib.Path, overrides: list[str], callback) -> dict` that writes its tables and
figures into `out_dir` and returns its headline numbers."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, str] = {
    "amc-gmm": "boltzkit.experiments.amc_gmm:run",
    "idem-verdict": "boltzkit.experiments.idem_verdict:run",
    "trade-gmm": "boltzkit.experiments.trade_exps:run_gmm",
    "trade-multi-well": "boltzkit.experiments.trade_exps:run_multi_well",
    "trade-phi4": "boltzkit.experiments.trade_exps:run_phi4",
    "trade-two-moons": "boltzkit.experiments.trade_exps:run_two_moons",
}


def names() -> list[str]:
    """Registered experiment names."""
    return sorted(_REGISTRY)


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The experiment function `name`; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown experiment {name!r}; valid experiments: {', '.join(names())}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)
