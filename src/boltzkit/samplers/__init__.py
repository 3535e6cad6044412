"""Samplers share one calling convention so that the CLI and the equal-budget comparisons can
treat them alike.

A sampler module exposes
    Config                        a frozen dataclass of hyperparameters (defaults = a sane run),
    preset(name) -> Config        optional: named settings (e.g. "dw4", "dw4-quick"),
    sample(target, config, *, n_samples, budget, callback, run_dir=None, resume=False)
        -> SampleResult
`run_dir` (a pathlib.Path or None) is where long runs write checkpoints; `resume=True` continues
from the last checkpoint found there.
`budget` is a number of target energy evaluations (configurations, see
`boltzkit.targets.EvalCounter`); a sampler stops once it has spent it and says so in
`diagnostics["stopped_by_budget"]`. Randomness comes from torch's global RNG, which only entry
points (the CLI, experiments) seed.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from torch import Tensor

from boltzkit.core.callback import Callback, null_callback
from boltzkit.core.registry import Registry


class SampleResult(NamedTuple):
    """What every sampler returns (detached tensors).

    samples: `[n, dim]`; log_w: `[n]` log importance weights or None when samples are meant to be
    equally weighted; log_Z: estimate of the log normaliser or None; diagnostics: per-method
    scalars and traces (JSON-serialisable); counts: the target's `EvalCounter.as_dict()` spent.
    """

    samples: Tensor
    log_w: Tensor | None
    log_Z: float | None
    diagnostics: dict[str, Any]
    counts: dict[str, int]


# name -> module; each module follows the convention in this docstring.
REGISTRY = Registry("sampler", {
    "mala": "boltzkit.samplers.mcmc",
    "rwmh": "boltzkit.samplers.mcmc",
    "hmc": "boltzkit.samplers.mcmc",
    "pt": "boltzkit.samplers.mcmc",
    "idem": "boltzkit.samplers.idem",
    "smc": "boltzkit.samplers.smc",
    "flow": "boltzkit.samplers.flow",
    "flow-pt": "boltzkit.samplers.flow_pt",  # composes mcmc and flow
    "trade": "boltzkit.samplers.trade",
})


def names() -> list[str]:
    """Registered sampler names."""
    return REGISTRY.names()


def module(name: str) -> ModuleType:
    """The module implementing sampler `name`; an unknown name raises `UnknownName`."""
    return REGISTRY.get(name)


__all__ = ["REGISTRY", "Callback", "SampleResult", "module", "names", "null_callback"]
