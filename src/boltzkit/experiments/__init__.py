"""Named experiments (`boltzkit experiment NAME`): each is a function
`run(out_dir: pathlib.Path, overrides: list[str], callback, *, executor=None, device="cpu")
-> dict` that runs its runs (as tasks on `executor`, where it takes one: all but trade-aldp) on
`device`, writes its tables and figures into `out_dir` and returns its headline numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from boltzkit.core.registry import Registry

REGISTRY = Registry("experiment", {
    "amc-gmm": "boltzkit.experiments.amc_gmm:run",
    "budget-curves": "boltzkit.experiments.budget_curves:run",
    "idem-verdict": "boltzkit.experiments.idem_verdict:run",
    "trade-aldp": "boltzkit.experiments.trade_aldp:run",
    "trade-gmm": "boltzkit.experiments.trade_exps:run_gmm",
    "trade-multi-well": "boltzkit.experiments.trade_exps:run_multi_well",
    "trade-phi4": "boltzkit.experiments.trade_extra:phi4_experiment",
    "trade-two-moons": "boltzkit.experiments.trade_extra:two_moons_experiment",
})


def names() -> list[str]:
    """Registered experiment names."""
    return REGISTRY.names()


def get(name: str) -> Callable[..., dict[str, Any]]:
    """The experiment function `name`; an unknown name raises `UnknownName`."""
    return REGISTRY.get(name)
