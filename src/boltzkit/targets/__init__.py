"""Canonical targets (../shared/REFERENCE.md, "Targets") behind a name -> constructor registry.

>>> from boltzkit import targets
>>> t = targets.get("gmm40")
>>> t.dim
2
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from boltzkit.targets.base import EvalCounter, Target, remove_com

# name -> "module:factory"; modules are imported on first use so that `boltzkit targets` is fast.
_REGISTRY: dict[str, str] = {
    "gmm40": "boltzkit.targets.gmm:gmm40",
    "two-modes": "boltzkit.targets.gmm:two_modes",
    "tempered-gmm-2d": "boltzkit.targets.gmm:tempered_gmm_2d",
    "many-well-32": "boltzkit.targets.analytic:many_well_32",
    "funnel-10": "boltzkit.targets.analytic:funnel_10",
    "multi-well-5d": "boltzkit.targets.analytic:multi_well_5d",
    "dw4": "boltzkit.targets.particles:dw4",
    "lj13": "boltzkit.targets.particles:lj13",
    "lj55": "boltzkit.targets.particles:lj55",
    "lj13-eacf": "boltzkit.targets.particles:lj13_eacf",
    "phi4": "boltzkit.targets.lattice:phi4",
    "two-moons": "boltzkit.targets.two_moons:two_moons",
}


def names() -> list[str]:
    """The registered target names, sorted."""
    return sorted(_REGISTRY)


def factory(name: str) -> Callable[..., Target]:
    """The constructor registered under `name`; unknown names list the valid ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown target {name!r}; valid targets: {', '.join(names())}")
    module, attr = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), attr)


def params(name: str) -> dict[str, object]:
    """The keyword parameters of target `name` with their defaults."""
    sig = inspect.signature(factory(name))
    return {k: p.default for k, p in sig.parameters.items()}


def get(name: str, **kwargs: object) -> Target:
    """Builds target `name` with keyword parameters (unknown ones are an error that lists the
    valid ones)."""
    make = factory(name)
    valid = params(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise TypeError(f"target {name!r} has no parameter(s) {unknown}; valid: {listed}")
    return make(**kwargs)


def __getattr__(attr: str) -> object:
    # `targets.GaussianMixture` without importing gmm.py at package import.
    if attr == "GaussianMixture":
        from boltzkit.targets.gmm import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'boltzkit.targets' has no attribute {attr!r}")


__all__ = ["EvalCounter", "GaussianMixture", "Target", "factory", "get", "names", "params",
           "remove_com"]
