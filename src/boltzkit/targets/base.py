"""The `Target` protocol: an unnormalised density gamma(x) = exp(-E(x)/kT).

Subclasses implement `_log_prob(x)`, the log of the unnormalised density at the target's own
(reference) temperature, for `x` of shape `[..., dim]`. Everything else -- tempering, the score by
autograd, input checks, non-finite handling and evaluation counting -- lives here once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class EvalCounter:
    """Counts target evaluations, in configurations (calls times batch size).

    `n_energy` counts every configuration whose energy was computed (with or without gradient),
    `n_grad` those whose gradient was computed as well, `n_nonfinite` the configurations whose
    energy came back NaN or +inf (reported as log_prob = -inf). Tempered copies of a target share
    their counter, so a parallel-tempering run is charged for every replica.
    """

    n_energy: int = 0
    n_grad: int = 0
    n_nonfinite: int = 0

    def reset(self) -> None:
        """Sets every count to zero."""
        self.n_energy = self.n_grad = self.n_nonfinite = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict (for metrics.json)."""
        return {"n_energy": self.n_energy, "n_grad": self.n_grad, "n_nonfinite": self.n_nonfinite}


class Target:
    """Unnormalised target density gamma(x) = exp(-E(x) / T), T relative to the reference.

    `log_prob(x) = _log_prob(x) / temperature` with `_log_prob = -E/kT_ref` supplied by the
    subclass; `energy(x) = -_log_prob(x)` is the reduced energy at the reference temperature.

    Attributes:
        dim: number of coordinates.
        temperature: tempering factor T (1 is the target itself); a float or a tensor that
            broadcasts against the batch shape (so that d log_prob / dT is available by autograd).
        n_particles, spatial_dim: set by particle systems (dim = n_particles * spatial_dim).
        counter: the shared `EvalCounter`.
    """

    name: str = "target"
    exact_sampler: bool = False  # subclasses with `_sample` set this
    exact_tempered_sampler: bool = False  # ... and with `_tempered_sample`
    # A bound the reduced energy of typical configurations stays below (None: unknown); the
    # run's sanity check warns when many samples exceed it (a bound cluster has E < 0).
    typical_energy_max: float | None = None
    n_particles: int | None = None
    spatial_dim: int | None = None
    # Where the target's own tensors live and its exact samples are drawn (`to` moves them).
    device: torch.device = torch.device("cpu")

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim}")
        self.dim = int(dim)
        self.temperature: float | Tensor = 1.0
        self.counter = EvalCounter()

    # ---- to implement -------------------------------------------------------------------
    def _log_prob(self, x: Tensor) -> Tensor:
        """log gamma(x) at the reference temperature, shape `[...]` for x `[..., dim]`."""
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def _log_Z(self) -> float | None:
        """log normaliser of the reference-temperature density, if known."""
        return None

    def _tempered_log_Z(self, temperature: float) -> float | None:
        """log normaliser of gamma^(1/T); override where known (e.g. by quadrature)."""
        return None

    def _tempered_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler at T != 1")

    # ---- public API ---------------------------------------------------------------------
    @property
    def is_particle_system(self) -> bool:
        return self.n_particles is not None

    @property
    def has_exact_samples(self) -> bool:
        """Whether `sample(n)` draws exact i.i.d. samples at the current temperature."""
        if _is_one(self.temperature):
            return self.exact_sampler
        return self.exact_tempered_sampler and not isinstance(self.temperature, Tensor)

    @property
    def log_Z(self) -> float | None:
        """log integral of exp(log_prob) over R^dim (or the COM-free subspace), or None."""
        if _is_one(self.temperature):
            return self._log_Z()
        if isinstance(self.temperature, Tensor):
            return None
        return self._tempered_log_Z(float(self.temperature))

    def check_input(self, x: Tensor) -> None:
        """Raises a clear error unless x is a floating tensor of shape `[..., dim]`."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self.name}: expected a floating-point tensor, got {x.dtype}")
        if x.ndim == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}: expected shape [..., {self.dim}], got {tuple(x.shape)}"
            )

    def log_prob(self, x: Tensor) -> Tensor:
        """log gamma(x)^(1/T), shape `[...]`; NaN or +inf energies give -inf and are counted."""
        self.check_input(x)
        self.counter.n_energy += _batch_size(x)
        return self._finite_or_minus_inf(self._log_prob(x)) / self.temperature

    def energy(self, x: Tensor) -> Tensor:
        """Reduced energy E(x)/kT_ref = -_log_prob(x) (untempered), shape `[...]`."""
        self.check_input(x)
        self.counter.n_energy += _batch_size(x)
        return -self._finite_or_minus_inf(self._log_prob(x))

    def log_prob_and_score(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(log_prob(x), grad_x log_prob(x)) in one forward/backward pass.

        With `create_graph=True` the result is differentiable again (double backward), and x
        keeps its own graph if it has one.
        """
        self.check_input(x)
        n = _batch_size(x)
        self.counter.n_energy += n
        self.counter.n_grad += n
        with torch.enable_grad():
            if not (create_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            lp = self._finite_or_minus_inf(self._log_prob(x)) / self.temperature
            (grad,) = torch.autograd.grad(lp.sum(), x, create_graph=create_graph)
        if not create_graph:
            lp = lp.detach()
        return lp, grad

    def score(self, x: Tensor, create_graph: bool = False) -> Tensor:
        """grad_x log_prob(x) by autograd, shape `[..., dim]`."""
        return self.log_prob_and_score(x, create_graph=create_graph)[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact samples `[n, dim]` (float64 unless a subclass says otherwise)."""
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if _is_one(self.temperature):
            return self._sample(n, generator)
        return self._tempered_sample(n, generator)

    def tempered(self, temperature: float | Tensor) -> Target:
        """A new target with log_prob = log_prob / temperature (temperatures compose).

        The copy shares this target's evaluation counter.
        """
        if not isinstance(temperature, Tensor) and not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        new = copy.copy(self)
        new.temperature = self.temperature * temperature
        return new

    def to(self, device: str | torch.device) -> Target:
        """A copy whose tensors (parameters, nested targets and modules) live on `device`.

        Exact samples are then drawn there; `log_prob` always follows its input's device. The
        copy shares this target's evaluation counter, like `tempered`. Caches keyed by device
        (dicts with `torch.device` keys) are left alone: they fill per input device.
        """
        device = torch.device(device)
        new = copy.copy(self)
        for key, value in vars(self).items():
            setattr(new, key, _moved(value, device))
        new.device = device
        return new

    def uncounted(self) -> Target:
        """A copy with its own fresh counter: for evaluation and diagnostics that must not be
        charged to a sampler's budget."""
        new = copy.copy(self)
        new.counter = EvalCounter()
        return new

    def remove_com(self, x: Tensor) -> Tensor:
        """Projects x onto the centre-of-mass-free subspace (identity for non-particle targets)."""
        if not self.is_particle_system:
            return x
        return remove_com(x, self.n_particles, self.spatial_dim)

    def describe(self) -> dict[str, object]:
        """Plain facts about the target for tables and run records."""
        return {
            "name": self.name,
            "dim": self.dim,
            "temperature": float(self.temperature)
            if not isinstance(self.temperature, Tensor)
            else "tensor",
            "n_particles": self.n_particles,
            "spatial_dim": self.spatial_dim,
            "log_Z": self.log_Z,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"

    def _finite_or_minus_inf(self, lp: Tensor) -> Tensor:
        # NaN and +inf energies become log_prob = -inf: rejected by MH, zero weight in IS.
        bad = ~torch.isfinite(lp)
        n_bad = int(bad.sum())
        if n_bad:
            self.counter.n_nonfinite += n_bad
            lp = torch.where(bad, torch.full_like(lp, float("-inf")), lp)
        return lp


def remove_com(x: Tensor, n_particles: int, spatial_dim: int) -> Tensor:
    """x - mean over particles, for x `[..., n_particles * spatial_dim]`."""
    shape = x.shape
    xp = x.reshape(*shape[:-1], n_particles, spatial_dim)
    return (xp - xp.mean(dim=-2, keepdim=True)).reshape(shape)


def _moved(value: object, device: torch.device) -> object:
    """`value` with every tensor, target and module in it on `device` (lists, tuples, dicts)."""
    if isinstance(value, Tensor | Target | torch.nn.Module):
        return value.to(device)
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict) and not any(isinstance(k, torch.device) for k in value):
        return {k: _moved(v, device) for k, v in value.items()}
    return value


def _batch_size(x: Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1)


def _is_one(t: float | Tensor) -> bool:
    return not isinstance(t, Tensor) and t == 1.0
