"""Annealing paths for `boltzkit.mc.smc`: sequences of densities from a reference to a target.

A path maps a level parameter lam in [0, 1] (one value per replica, a `[R]` tensor) to a
`Target` whose `log_prob` is the level's unnormalised log-density log g_lam: lam = 0 is the
reference (exact samples, normalised so that the SMC estimate of log Z is absolute), lam = 1 the
target. Levels are `Target`s, so the kernels of `boltzkit.mc.mcmc` move particles at any level.

- `GeometricPath`: log g_lam = (1 - lam) log p_0 + lam log gamma, from a normalised reference
  p_0 (e.g. `Gaussian`) to any target (Neal 2001, "Annealed importance sampling").
- `TemperingPath`: g_lam = gamma^beta with beta = beta_0 + lam (1 - beta_0) (needs exact samples
  of gamma^beta_0; the normaliser is then relative to that level's).
- `DiffusionPath`: the noised marginals p_t of a diffusion model on a time grid, t = t_max (1 -
  lam), with the exact target at lam = 1 (t = 0); see `boltzkit.diffusion.schedules`.

>>> import torch
>>> from boltzkit.mc.paths import Gaussian, GeometricPath
>>> path = GeometricPath(Gaussian(2), Gaussian(2, mean=1.0, scale=0.5))
>>> level = path.level(torch.tensor([0.5]))
>>> level.log_prob(torch.zeros(1, 3, 2)).shape
torch.Size([1, 3])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from boltzkit.targets.base import Target, remove_com


class Path:
    """Base class: `level(lam)`, a default `grid`, evaluation `counts()`, and
    `log_prob_fn(x)`, the map lam -> log g_lam(x) used to choose adaptive levels (paths for which
    it is cheap, such as the geometric one, override it)."""

    target: Target
    grid: Tensor | None = None

    def level(self, lam: Tensor) -> Target:
        raise NotImplementedError

    def log_prob_fn(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """lam `[R]` -> log g_lam(x) `[R, N]` for particles x `[R, N, d]`."""
        return lambda lam: self.level(lam).log_prob(x)

    @property
    def device(self) -> torch.device:
        """Where the path's particles live: the target's device (`Target.to`)."""
        return self.target.device

    def counts(self) -> dict[str, int]:
        """Cumulative evaluation counts: target energies and gradients (configurations)."""
        return {"n_target": self.target.counter.n_energy,
                "n_target_grad": self.target.counter.n_grad}


class Gaussian(Target):
    """Normalised N(mean, scale^2 I); for particle systems, on the centre-of-mass-free subspace
    ((n-1) * spatial_dim degrees of freedom, mean ignored), the prior of REFERENCE.md.

    >>> g = Gaussian(3, scale=2.0)
    >>> round(float(g.log_prob(torch.zeros(3))), 6) == round(-1.5 * math.log(8 * math.pi), 6)
    True
    """

    exact_sampler = True

    def __init__(self, dim: int, mean: float | Tensor = 0.0, scale: float = 1.0, *,
                 n_particles: int | None = None, spatial_dim: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(dim)
        self.name = "gaussian"
        self.device = torch.device(device)
        f64 = {"dtype": torch.float64, "device": self.device}
        self.mean = torch.as_tensor(mean, **f64)
        self.scale = float(scale)
        if n_particles is not None:
            if spatial_dim is None or n_particles * spatial_dim != dim:
                raise ValueError("a particle Gaussian needs n_particles * spatial_dim == dim")
            self.n_particles, self.spatial_dim = n_particles, spatial_dim
            self.mean = torch.zeros((), **f64)

    @property
    def n_dof(self) -> int:
        """Degrees of freedom: dim, or (n_particles - 1) * spatial_dim."""
        if self.n_particles is None:
            return self.dim
        return (self.n_particles - 1) * self.spatial_dim

    def _log_prob(self, x: Tensor) -> Tensor:
        z = (self.remove_com(x) - self.mean.to(x)) / self.scale
        return -0.5 * (z**2).sum(-1) - self.n_dof * (math.log(self.scale)
                                                     + 0.5 * math.log(2 * math.pi))

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        eps = torch.randn(n, self.dim, dtype=torch.float64, device=self.device,
                          generator=generator)
        if self.n_particles is not None:
            eps = remove_com(eps, self.n_particles, self.spatial_dim)
        return self.mean + self.scale * eps

    def _log_Z(self) -> float:
        return 0.0


def _broadcast(lam: Tensor, lp: Tensor) -> Tensor:
    """lam `[R]` (or a scalar) shaped to broadcast against log-densities `[R, ...]`."""
    lam = (lam.to(lp.dtype) if isinstance(lam, Tensor)
           else torch.tensor(lam, dtype=lp.dtype, device=lp.device))
    return lam.reshape(lam.shape + (1,) * (lp.ndim - lam.ndim))


class GeometricLevel(Target):
    """log g_lam = (1 - lam) log p_0 + lam log gamma, lam a scalar or `[R]` (replicas)."""

    def __init__(self, reference: Target, target: Target, lam: Tensor) -> None:
        super().__init__(target.dim)
        self.name = "geometric-level"
        self.reference, self.target, self.lam = reference, target, lam
        self.n_particles, self.spatial_dim = target.n_particles, target.spatial_dim
        self.counter = target.counter

    def _log_prob(self, x: Tensor) -> Tensor:
        # The level shares the target's counter and the base class counts each call once, so the
        # parts are evaluated uncounted here.
        lp0 = self.reference._log_prob(x)
        lp1 = self.target._log_prob(x) / self.target.temperature
        lam = _broadcast(self.lam, lp1)
        # lam = 0 exactly is the reference, even where the target's log-density is -inf.
        return torch.where(lam == 0, lp0, (1 - lam) * lp0 + lam * lp1)


class GeometricPath(Path):
    """Geometric interpolation from a normalised `reference` to `target`; see the module
    docstring. Only the target's evaluations are counted."""

    def __init__(self, reference: Target, target: Target) -> None:
        if reference.dim != target.dim:
            raise ValueError(f"reference dim {reference.dim} != target dim {target.dim}")
        self.reference, self.target = reference, target

    def level(self, lam: Tensor) -> Target:
        if _all_equal(lam, 0.0):
            return self.reference
        return GeometricLevel(self.reference, self.target, lam)

    def log_prob_fn(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        lp0, lp1 = self.reference.log_prob(x), self.target.log_prob(x)

        def log_g(lam: Tensor) -> Tensor:
            lam_b = _broadcast(lam, lp1)
            return torch.where(lam_b == 0, lp0, (1 - lam_b) * lp0 + lam_b * lp1)

        return log_g


class TemperingPath(Path):
    """g_lam = gamma^beta, beta = beta_0 + lam (1 - beta_0): tempering from a hot target whose
    exact samples `target.tempered(1 / beta_0).sample` must exist."""

    def __init__(self, target: Target, beta_0: float) -> None:
        if not 0 < beta_0 < 1:
            raise ValueError(f"beta_0 must lie in (0, 1), got {beta_0}")
        self.target, self.beta_0 = target, float(beta_0)

    def level(self, lam: Tensor) -> Target:
        beta = self.beta_0 + lam.to(torch.float64) * (1 - self.beta_0)
        if _all_equal(lam, float(lam.reshape(-1)[0])):
            return self.target.tempered(1.0 / float(beta.reshape(-1)[0]))
        return self.target.tempered((1.0 / beta)[:, None])


class DiffusionLevel(Target):
    """A level of a diffusion path: a density (a noised marginal, the reference or the target)
    with the diffusion time t, alpha_t, sigma_t and the model that kernels query.

    `density` is None for a score-only model (no log-density): such a level can only be used
    where its log-density cancels (AIS without resampling or MCMC moves, see `boltzkit.mc.smc`).
    """

    def __init__(self, density: Target | None, model: Any, t: float, dim: int) -> None:
        super().__init__(dim)
        self.name = f"diffusion-level(t={t:.4g})"
        self.density, self.model, self.t = density, model, float(t)
        self.alpha = float(model.schedule.alpha(t))
        self.sigma = float(model.schedule.sigma(t))
        self.has_log_prob = density is not None
        if density is not None:
            self.n_particles, self.spatial_dim = density.n_particles, density.spatial_dim
            self.exact_sampler = density.has_exact_samples
            self.counter = density.counter

    def _require(self) -> Target:
        if self.density is None:
            raise RuntimeError(f"{self.name}: the model has no log-density (score-only)")
        return self.density

    def log_prob(self, x: Tensor) -> Tensor:
        return self._require().log_prob(x)

    def log_prob_and_score(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        return self._require().log_prob_and_score(x, create_graph=create_graph)

    def _sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        return self._require().sample(n, generator)

    def _log_Z(self) -> float | None:
        return self._require().log_Z


class DiffusionPath(Path):
    """Noised marginals of a diffusion `model` at decreasing `times` (times[0] = t_max, the
    reference; times[-1] = 0), the exact `target` at t = 0; lam = 1 - t / t_max.

    The model supplies `schedule`, `counter`, `n_jvp`, `reference()` (the level-0 density, with
    exact samples), `marginal(t)` (a `Target`, or None for score-only models) and the quantities
    kernels need (`boltzkit.diffusion.kernels`). `grid` holds the lams of `times`.
    """

    def __init__(self, model: Any, target: Target, times: Tensor) -> None:
        times = torch.as_tensor(times, dtype=torch.float64, device="cpu")  # read on the host
        t_max = model.schedule.t_max
        if times.ndim != 1 or len(times) < 2 or float(times[0]) != t_max or float(times[-1]):
            raise ValueError(f"times must run from t_max = {t_max} down to 0, got {times}")
        if not bool((times.diff() < 0).all()):
            raise ValueError("times must be strictly decreasing")
        self.model, self.target, self.times = model, target, times
        self.grid = 1.0 - times / t_max
        self._levels: dict[float, DiffusionLevel] = {}

    def level(self, lam: Tensor) -> Target:
        lam0 = float(lam.reshape(-1)[0])
        if not _all_equal(lam, lam0):
            raise ValueError("a diffusion path needs one level for all replicas")
        if lam0 not in self._levels:
            self._levels[lam0] = self._make_level(lam0)
        return self._levels[lam0]

    def _make_level(self, lam: float) -> DiffusionLevel:
        t_max = self.model.schedule.t_max
        if lam >= 1.0:
            return DiffusionLevel(self.target, self.model, 0.0, self.target.dim)
        if lam <= 0.0:
            return DiffusionLevel(self.model.reference(), self.model, t_max, self.target.dim)
        t = t_max * (1.0 - lam)
        return DiffusionLevel(self.model.marginal(t), self.model, t, self.target.dim)

    def counts(self) -> dict[str, int]:
        return {**super().counts(), "n_net": self.model.counter.n_energy,
                "n_net_grad": self.model.counter.n_grad, "n_jvp": self.model.n_jvp}


def _all_equal(lam: Tensor | float, value: float) -> bool:
    if not isinstance(lam, Tensor):
        return lam == value
    return bool((lam == value).all())
