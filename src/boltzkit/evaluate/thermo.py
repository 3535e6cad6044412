"""Thermodynamic checks of energies against sample sets: the configurational temperature.

Under pi(x) ~ exp(-U(x) / theta), integration by parts gives E_pi[|grad U|^2] = theta E_pi[lap U]
(Rugh, PRL 78, 772, 1997; Butler et al., J. Chem. Phys. 109, 6519, 1998). With U = -log_prob of
a target, samples of that target give theta = 1: a check of an energy against reference samples
(and of samples against an energy) that needs no normaliser (../shared/REFERENCE.md).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from boltzkit.mc.estimators import Estimate
from boltzkit.targets.base import Target


def laplacian(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Trace of the Hessian of fn at x by autograd, vectorised over the batch.

    lap fn(x) = sum_k d^2 fn / dx_k^2: one Hessian-vector product per coordinate k (a loop over
    the dim coordinates, not over the batch).

    Args:
        fn: maps x `[..., dim]` to `[...]`, twice differentiable by autograd, each output
            depending only on its own row.
        x: points `[..., dim]`.

    Returns:
        The Laplacian `[...]`, detached.

    >>> laplacian(lambda y: (y**4).sum(-1), torch.tensor([[1.0, 2.0]]))
    tensor([60.])
    """
    return _grad_and_laplacian(fn, x)[1]


def _grad_and_laplacian(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
        lap = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
        # is_grads_batched (vmap over the unit vectors) was slower on CPU than this loop.
        for k in range(x.shape[-1]):
            (hess_row,) = torch.autograd.grad(grad[..., k].sum(), x, retain_graph=True)
            lap += hess_row[..., k]
    return grad.detach(), lap.detach()


def configurational_temperature(target: Target, x: Tensor, chunk_size: int = 4096) -> Estimate:
    """theta-hat = sum_i |grad U(x_i)|^2 / sum_i lap U(x_i), U = -target.log_prob.

    U is the target at its own temperature (for an untempered target, the reduced energy E / kT
    at the reference temperature), so samples of the target give theta = 1, and samples of
    target.tempered(T) evaluated on the untempered target give T. Ratio estimator with the
    delta-method SE^2 = sum_i (a_i - theta b_i)^2 / (sum_i b_i)^2, a_i = |grad U|^2,
    b_i = lap U, which assumes independent samples (correlated MCMC output makes it too small).
    Computed in float64; the evaluations are not charged to the target's counter.

    Args:
        target: the density whose energy is checked.
        x: samples `[..., dim]` (particle systems: COM-free or not, the energy is
            translation-invariant).
        chunk_size: configurations per autograd pass (bounds memory).

    Returns:
        `Estimate(mean=theta, se)` as floats.

    Raises:
        ValueError: if any sample has a non-finite gradient or Laplacian (e.g. overlapping
            Lennard-Jones particles).
    """
    quiet = target.uncounted()
    flat = x.detach().reshape(-1, target.dim).to(torch.float64)
    grad_sq, lap = [], []
    for chunk in flat.split(chunk_size):
        grad, lap_chunk = _grad_and_laplacian(lambda y: -quiet.log_prob(y), chunk)
        grad_sq.append(grad.square().sum(-1))
        lap.append(lap_chunk)
    a, b = torch.cat(grad_sq), torch.cat(lap)
    bad = ~(torch.isfinite(a) & torch.isfinite(b))
    if bool(bad.any()):
        raise ValueError(f"{int(bad.sum())} of {len(a)} samples have a non-finite gradient or "
                         "Laplacian of the energy")
    theta = a.sum() / b.sum()
    se = (a - theta * b).square().sum().sqrt() / b.sum().abs()
    return Estimate(theta.item(), se.item())
