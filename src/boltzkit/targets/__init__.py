"""Canonical targets (../shared/REFERENCE.md, "Targets") behind a name -> constructor registry,
and targets built from a name and `key=value` parameters typed by the constructor's signature.

>>> from boltzkit import targets
>>> t = targets.get("gmm40")
>>> t.dim
2
>>> targets.build("two-modes", ["d=3"]).dim
3
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from boltzkit.core import config as configs
from boltzkit.core.errors import UnknownName, UsageError
from boltzkit.core.registry import Registry
from boltzkit.targets.base import EvalCounter, Target, remove_com

# name -> "module:factory"; modules are imported on first use so that `boltzkit targets` is fast.
REGISTRY = Registry("target", {
    "gmm40": "boltzkit.targets.mixtures:gmm40",
    "two-modes": "boltzkit.targets.mixtures:two_modes",
    "tempered-gmm-2d": "boltzkit.targets.mixtures:tempered_gmm_2d",
    "many-well-32": "boltzkit.targets.analytic:many_well_32",
    "funnel-10": "boltzkit.targets.analytic:funnel_10",
    "multi-well-5d": "boltzkit.targets.analytic:multi_well_5d",
    "dw4": "boltzkit.targets.particles:dw4",
    "lj13": "boltzkit.targets.particles:lj13",
    "lj55": "boltzkit.targets.particles:lj55",
    "lj13-eacf": "boltzkit.targets.particles:lj13_eacf",
    "phi4": "boltzkit.targets.lattice:phi4",
    "two-moons": "boltzkit.targets.two_moons:two_moons",
    "aldp": "boltzkit.targets.molecules:aldp",
    "aldp-fab": "boltzkit.targets.molecules:aldp_fab",
})


def names() -> list[str]:
    """The registered target names, sorted."""
    return REGISTRY.names()


def factory(name: str) -> Callable[..., Target]:
    """The constructor registered under `name`; an unknown name raises `UnknownName`."""
    return REGISTRY.get(name)


def params(name: str) -> dict[str, object]:
    """The keyword parameters of target `name` with their defaults."""
    sig = inspect.signature(factory(name))
    return {k: p.default for k, p in sig.parameters.items()}


def get(name: str, **kwargs: object) -> Target:
    """Builds target `name` with keyword parameters (an unknown one raises `UnknownName` listing
    the valid ones)."""
    make = factory(name)
    valid = params(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        listed = [f"{k}={v!r}" for k, v in valid.items()]
        raise UnknownName("target parameter", ", ".join(unknown), listed,
                          plural=f"parameters of {name!r}")
    return make(**kwargs)


def build(name: str, assignments: Sequence[str] | Mapping[str, Any] = ()) -> Target:
    """`get(name, **params)` with `key=value` strings typed by the factory's signature.

    Every bad name, key or value raises a `UsageError` that says what is valid.
    """
    try:
        make = factory(name)
    except ImportError as err:
        raise UsageError(f"target {name!r} is not available in this build ({err})") from None
    typed = typed_params(name, assignments, make)
    try:
        return get(name, **typed)
    except UsageError:
        raise
    except (ValueError, TypeError) as err:  # factories validate their parameters
        raise UsageError(f"target {name!r}: {err}") from None


def typed_params(name: str, assignments: Sequence[str] | Mapping[str, Any] = (),
                 make: Callable[..., Any] | None = None) -> dict[str, Any]:
    """The explicitly given parameters of target `name`, typed (as recorded in run.json)."""
    spec = _params_dataclass(name, make or factory(name))
    given = (dict(assignments) if isinstance(assignments, Mapping)
             else configs.parse_assignments(assignments))
    try:
        typed = configs.override(spec(), given)
    except UnknownName as err:
        raise UnknownName("target parameter", err.name, err.valid,
                          plural=f"parameters of {name!r}") from None
    except UsageError as err:
        raise UsageError(f"target {name!r}: {err}") from None
    return {k: getattr(typed, k) for k in given}


def _params_dataclass(name: str, make: Callable[..., Any]) -> type:
    try:
        hints = typing.get_type_hints(make)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to defaults' types
        hints = {}
    fields = []
    for key, p in inspect.signature(make).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        tp = hints.get(key, type(default) if default is not None else str | None)
        fields.append((key, tp, dataclasses.field(default=default)))
    return dataclasses.make_dataclass(f"{name}-params".replace("-", "_"), fields, frozen=True)


def __getattr__(attr: str) -> object:
    # `targets.GaussianMixture` without importing gmm.py at package import.
    if attr == "GaussianMixture":
        from boltzkit.targets.gmm import GaussianMixture

        return GaussianMixture
    raise AttributeError(f"module 'boltzkit.targets' has no attribute {attr!r}")


__all__ = ["REGISTRY", "EvalCounter", "GaussianMixture", "Target", "build", "factory", "get",
           "names", "params", "remove_com", "typed_params"]
