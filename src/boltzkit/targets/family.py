"""A target as a function of an external parameter c, and A(x; c) = -d/dc log gamma(x | c).

`Family(target, parameter)` turns a target into gamma(x | c):
- a target with a method `with_<parameter>(c)` (phi4's `with_kappa`, the two-moons posterior's
  `with_beta`, the likelihood power) uses it;
- otherwise "temperature" is `target.tempered(c / c_ref)` and "beta" (inverse temperature)
  `target.tempered(c_ref / c)`.
c may be a tensor of per-sample conditions, so A comes from autograd once, for every target, with
no hand-written derivative (the released TRADE code mixes -u/T and -u/T^2 conventions).

>>> from boltzkit.targets.base import Target
>>> class Quadratic(Target):
...     def _log_prob(self, x):
...         return -0.5 * (x ** 2).sum(-1)
>>> x = torch.ones(1, 2, dtype=torch.float64)
>>> _, a = action_derivative(Family(Quadratic(2)), x, torch.tensor([2.0], dtype=torch.float64))
>>> float(a)  # S = E/T with E = 1: dS/dT = -E/T^2
-0.25
"""

from __future__ import annotations

import torch
from torch import Tensor

from boltzkit.targets.base import Target

_BUILTIN = ("temperature", "beta")


class Family:
    """gamma(x | c, context) for a base target; see the module docstring for the parameters.

    Targets amortised over an observation (the two-moons posterior) implement
    `with_context(context)`; the context `[n, k]` is then given per sample.
    """

    def __init__(self, target: Target, parameter: str = "temperature", c_ref: float = 1.0) -> None:
        if parameter not in _BUILTIN and not hasattr(target, f"with_{parameter}"):
            raise ValueError(f"target {target.name!r} has no method with_{parameter}; "
                             f"built-in parameters: {_BUILTIN}")
        self.target, self.parameter, self.c_ref = target, parameter, c_ref

    def at(self, c: Tensor | float, context: Tensor | None = None) -> Target:
        """The target at condition c (float or tensor broadcasting against the batch)."""
        target = self.target if context is None else self.target.with_context(context)
        method = getattr(target, f"with_{self.parameter}", None)
        if method is not None:
            return method(c)
        if self.parameter == "temperature":
            return target.tempered(c / self.c_ref)
        return target.tempered(self.c_ref / c)


def action_derivative(family: Family, x: Tensor, c: Tensor,
                      context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(log gamma(x | c), A(x; c) = -d/dc log gamma(x | c)) by autograd, both `[n]`, detached.

    Args: x `[n, dim]`, c `[n]` per-sample conditions, context `[n, k]` or None.
    Non-finite log gamma gives a non-finite A; callers mask both.
    """
    with torch.enable_grad():
        c = c.detach().to(x.dtype).requires_grad_(True)
        log_gamma = family.at(c, context).log_prob(x.detach())
        (grad,) = torch.autograd.grad(log_gamma.sum(), c, allow_unused=True)
    if grad is None:  # gamma does not depend on c
        grad = torch.zeros_like(c)
    return log_gamma.detach(), -grad.detach()


class _Surrogate(Target):
    """The learned boundary density log q_theta(x | c0) as an (untempered) target."""

    name = "surrogate"

    def __init__(self, flow: torch.nn.Module, c0: float, context: Tensor | None = None) -> None:
        super().__init__(flow.config.dim)
        self.flow, self.c0, self.context = flow, c0, context

    def with_context(self, context: Tensor) -> _Surrogate:
        new = _Surrogate(self.flow, self.c0, context)
        new.counter = self.counter
        return new

    def _log_prob(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.flow.log_prob(x.reshape(-1, self.dim), self.c0,
                                      self.context).reshape(x.shape[:-1])


def surrogate_family(flow: torch.nn.Module, family: Family, c0: float) -> Family:
    """The energy-free family: gamma(x | c) = q_theta(x | c0)^(power of c relative to c0).

    Only for "temperature" and "beta", where the power is known (c0/c and c/c0).
    """
    if family.parameter not in _BUILTIN or hasattr(family.target, f"with_{family.parameter}"):
        raise ValueError(f"energy-free TRADE needs parameter in {_BUILTIN}, "
                         f"got {family.parameter!r}")
    return Family(_Surrogate(flow, c0), family.parameter, c_ref=c0)
