"""Conditional normalising flows q_theta(x | c) for an external parameter c, built on zuko.

The flow maps data x to a latent z = f_theta(x; log c, context) through coupling layers and puts
a base N(0, c^p I) on z: p = 0 is a plain standard normal, p = 1 the "latent temperature
scaling" of a temperature c (p = -1 for an inverse temperature). For a volume-preserving f that
does not see c, p = 1 gives q(x | T) ~ q(x | 1)^(1/T) exactly. Circular flows live on the torus
[-pi, pi)^dim with a uniform base and periodic conditioners. Mixed flows (molecules in internal
coordinates) have both: the coordinates listed in `circular` are angles on [-pi, pi) (uniform
base, circular splines, seen by the conditioners through cos and sin), the others real (normal
base, splines on [-bound, bound] with identity tails, standardised by their data).

Samplers only use the protocol `ConditionalDensity` (`log_prob(x, c)`,
`sample_and_log_prob(n, c)`), so another backend can replace zuko.

>>> flow = ConditionalFlow(FlowConfig(dim=2, kind="affine", latent_power=1.0))
>>> x, log_q = flow.sample_and_log_prob(5, 2.0)
>>> torch.allclose(flow.log_prob(x, 2.0), log_q, atol=1e-4)
True

References: Dinh et al., RealNVP (arXiv 1605.08803); Durkan et al., neural spline flows
(arXiv 1906.04032); Rezende et al., flows on tori (arXiv 2002.02428); Dibak et al., latent
temperature scaling (arXiv 2012.00429); Rozet et al., zuko.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Transform, constraints
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.transforms import (
    AdditiveTransform,
    CircularShiftTransform,
    ComposedTransform,
    DependentTransform,
    MonotonicAffineTransform,
    MonotonicRQSTransform,
)

from boltzkit.core.config import check_ranges

FlowKind = Literal["affine", "additive", "spline", "circular", "mixed"]
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh}


class ConditionalDensity(Protocol):
    """What samplers need from a conditional density model q(x | c, context)."""

    def log_prob(self, x: Tensor, c: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log q(x | c), shape `[n]` for x `[n, dim]`, c scalar or `[n]`."""
        ...

    def sample_and_log_prob(
        self, n: int, c: Tensor | float, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """n reparametrised samples `[n, dim]` and their log q `[n]`."""
        ...


@dataclass(frozen=True)
class FlowArchitecture:
    """The architecture settings a sampler's config carries (base class of `FlowConfig` and of
    the flow Boltzmann generator's and TRADE's configs); `flow_config` completes them into a
    `FlowConfig`."""

    kind: FlowKind = "spline"
    n_layers: int = 4
    hidden: int = 64
    depth: int = 2
    bins: int = 8
    bound: float = 5.0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("n_layers", "hidden", "depth", "bins", "bound"))

    def flow_config(self, dim: int, **extra: Any) -> FlowConfig:
        """The flow architecture for `dim` coordinates (extra: conditional, latent_power, ...)."""
        shared = {f.name: getattr(self, f.name) for f in fields(FlowArchitecture)}
        return FlowConfig(dim=dim, **shared, **extra)


@dataclass(frozen=True)
class FlowConfig(FlowArchitecture):
    """Architecture of a `ConditionalFlow`: the `FlowArchitecture` settings and

    dim: number of coordinates (keyword-only).
    kind: "affine" (RealNVP), "additive" (NICE, volume-preserving), "spline" (rational-quadratic
    on [-bound, bound], identity outside), "circular" (circular splines on [-pi, pi)) or
    "mixed" (circular splines on the coordinates in `circular`, splines on the others).
    conditional: whether the coupling networks see log c (False: c acts only through the base).
    latent_power: base variance c^latent_power (0: no latent scaling).
    context_dim: extra conditioning features (e.g. an observation y), appended after log c.
    circular: the angle coordinates of a "mixed" flow (indices into x).
    """

    dim: int = field(kw_only=True)
    activation: Literal["relu", "silu", "elu", "tanh"] = "silu"
    conditional: bool = True
    latent_power: float = 0.0
    context_dim: int = 0
    circular: tuple[int, ...] = ()

    def circular_mask(self) -> Tensor:
        """`[dim]` bool: which coordinates are angles."""
        mask = torch.zeros(self.dim, dtype=torch.bool)
        if self.kind == "circular":
            mask[:] = True
        elif self.kind == "mixed":
            mask[list(self.circular)] = True
        return mask


class _PeriodicCoupling(GeneralCouplingTransform):
    """Coupling layer whose conditioner sees the fixed angles through (cos, sin), so that the
    transform is a smooth function on the torus."""

    def __init__(self, features: int, context: int, mask: Tensor, **kwargs: object) -> None:
        n_a = int(torch.as_tensor(mask).sum())
        super().__init__(features, context + n_a, mask, **kwargs)

    def meta(self, c: Tensor | None, x: Tensor) -> DependentTransform:
        x = torch.cat([torch.cos(x), torch.sin(x)], dim=-1)
        return super().meta(c, x)


class _MixedCoupling(GeneralCouplingTransform):
    """Coupling layer of a mixed flow: the conditioner sees the fixed real coordinates as they
    are and the fixed angles through (cos, sin); the transformed angles get circular splines,
    the transformed real coordinates splines on [-bound, bound]."""

    def __init__(self, features: int, context: int, mask: Tensor, circular: Tensor,
                 bound: float, **kwargs: object) -> None:
        mask = torch.as_tensor(mask, dtype=torch.bool)
        n_circ_a = int((circular & mask).sum())
        kwargs["univariate"] = partial(_mixed_rqs, circular=circular[~mask], bound=bound)
        super().__init__(features, context + n_circ_a, mask, **kwargs)
        self.register_buffer("circ_a", circular[mask])

    def meta(self, c: Tensor | None, x: Tensor) -> DependentTransform:
        angles = x[..., self.circ_a]
        x = torch.cat([x[..., ~self.circ_a], torch.cos(angles), torch.sin(angles)], dim=-1)
        return super().meta(c, x)


class _MixedMap(Transform):
    """Elementwise: angles shifted by half a period on [-pi, pi) (if `shift`), real coordinates
    multiplied by `factor`; log |det| = log factor per real coordinate."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, circular: Tensor, factor: float, shift: bool) -> None:
        super().__init__()
        self.circular, self.factor, self.shift = circular, factor, shift

    def _call(self, x: Tensor) -> Tensor:
        angles = torch.remainder(x, 2 * math.pi) - math.pi if self.shift else x
        return torch.where(self.circular.to(x.device), angles, x * self.factor)

    def _inverse(self, y: Tensor) -> Tensor:
        angles = torch.remainder(y, 2 * math.pi) - math.pi if self.shift else y
        return torch.where(self.circular.to(y.device), angles, y / self.factor)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        real = torch.full_like(x, math.log(self.factor))
        return torch.where(self.circular.to(x.device), torch.zeros_like(x), real)


def _mixed_rqs(*phi: Tensor, circular: Tensor, bound: float) -> ComposedTransform:
    # one spline on [-pi, pi] for both kinds: real coordinates are scaled from [-bound, bound]
    # onto it and back (identity tails outside), angles are shifted as in `_circular_rqs`
    return ComposedTransform(
        _MixedMap(circular, math.pi / bound, shift=True),
        MonotonicRQSTransform(*phi, bound=math.pi),
        _MixedMap(circular, bound / math.pi, shift=False),
    )


def _circular_rqs(*phi: Tensor, bins_bound: float = math.pi) -> ComposedTransform:
    # Shift by half a period first so that the spline's fixed end points (+-pi) move around the
    # circle from layer to layer (Rezende et al. 2020).
    return ComposedTransform(
        CircularShiftTransform(bound=bins_bound),
        MonotonicRQSTransform(*phi, bound=bins_bound),
    )


def _univariate(config: FlowConfig) -> tuple[object, list[tuple[int, ...]]]:
    b = config.bins
    spline_shapes = [(b,), (b,), (b - 1,)]
    table = {
        "affine": (MonotonicAffineTransform, [(), ()]),
        "additive": (AdditiveTransform, [()]),
        "spline": (partial(MonotonicRQSTransform, bound=config.bound), spline_shapes),
        "circular": (_circular_rqs, spline_shapes),
        "mixed": (None, spline_shapes),  # built per layer by _MixedCoupling
    }
    return table[config.kind]


class ConditionalFlow(nn.Module):
    """A coupling flow q_theta(x | c, context) with base N(0, c^p I) (or uniform on the torus).

    log q(x | c) = log N(f(x); 0, c^p I) + log |det df/dx|, f conditioned on (log c, context).
    Inputs are standardised by fixed buffers `loc`, `scale` (see `standardise`).
    """

    def __init__(self, config: FlowConfig) -> None:
        super().__init__()
        if config.kind == "circular" and config.latent_power != 0:
            raise ValueError("circular flows have a uniform base: latent_power must be 0")
        if config.dim < 2:
            raise ValueError(f"coupling flows need dim >= 2, got {config.dim}")
        if config.kind == "mixed" and not all(0 <= i < config.dim for i in config.circular):
            raise ValueError(f"circular indices must lie in [0, {config.dim}), "
                             f"got {config.circular}")
        self.config = config
        self.register_buffer("circular", config.circular_mask())
        self.layers = nn.ModuleList(self._layer(i) for i in range(config.n_layers))
        self.register_buffer("loc", torch.zeros(config.dim))
        self.register_buffer("scale", torch.ones(config.dim))

    def _layer(self, i: int) -> GeneralCouplingTransform:
        config = self.config
        n_ctx = int(config.conditional) + config.context_dim
        univariate, shapes = _univariate(config)
        common = {"shapes": shapes, "hidden_features": (config.hidden,) * config.depth,
                  "activation": _ACTIVATIONS[config.activation]}
        mask = self._mask(i)
        if config.kind == "mixed":
            return _MixedCoupling(config.dim, n_ctx, mask, self.circular, config.bound, **common)
        layer = _PeriodicCoupling if config.kind == "circular" else GeneralCouplingTransform
        return layer(config.dim, n_ctx, mask, univariate=univariate, **common)

    def _mask(self, i: int) -> Tensor:
        """Alternating halves; a mixed flow alternates within the angles and within the real
        coordinates, so that every layer transforms some of each."""
        d = self.config.dim
        if self.config.kind != "mixed":
            return torch.arange(d) % 2 == i % 2
        order = torch.cat([torch.nonzero(self.circular).squeeze(-1),
                           torch.nonzero(~self.circular).squeeze(-1)])
        rank = torch.empty(d, dtype=torch.long)
        rank[order] = torch.arange(d)
        return rank % 2 == i % 2

    # ---- conditioning ------------------------------------------------------------------
    def _as_c(self, c: Tensor | float, n: int) -> Tensor:
        c = torch.as_tensor(c, dtype=self.loc.dtype, device=self.loc.device)
        return c.expand(n) if c.ndim == 0 else c

    def _features(self, c: Tensor, context: Tensor | None) -> Tensor | None:
        parts = [torch.log(c)[:, None]] if self.config.conditional else []
        if context is not None:
            parts.append(context.to(self.loc.dtype).expand(len(c), -1))
        return torch.cat(parts, dim=-1) if parts else None

    def transform(self, c: Tensor, context: Tensor | None = None) -> ComposedTransform:
        """The zuko transform x -> z for conditions c `[n]` (without standardisation)."""
        features = self._features(c, context)
        return ComposedTransform(*(layer(features) for layer in self.layers))

    def standardise(self, loc: Tensor, scale: Tensor) -> None:
        """Sets the fixed input standardisation x -> (x - loc) / scale."""
        like = {"dtype": self.loc.dtype, "device": self.loc.device}
        self.loc.copy_(torch.as_tensor(loc, **like).expand(self.config.dim))
        self.scale.copy_(torch.as_tensor(scale, **like).expand(self.config.dim))

    # ---- base --------------------------------------------------------------------------
    def _base_log_prob(self, z: Tensor, c: Tensor) -> Tensor:
        """Uniform on [-pi, pi) for the angles, N(0, c^p) for the real coordinates."""
        circ = self.circular
        n_circ = int(circ.sum())
        lp = torch.full_like(z[:, 0], -n_circ * math.log(2 * math.pi))
        if n_circ:
            inside = (z[:, circ].abs() <= math.pi + 1e-6).all(-1)
            lp = torch.where(inside, lp, torch.full_like(lp, float("-inf")))
        if n_circ == self.config.dim:
            return lp
        log_var = self.config.latent_power * torch.log(c)
        d = self.config.dim - n_circ
        return lp - 0.5 * (z[:, ~circ].square().sum(-1) * torch.exp(-log_var)
                           + d * (log_var + math.log(2 * math.pi)))

    def _base_sample(self, c: Tensor) -> Tensor:
        shape = (len(c), self.config.dim)
        like = {"dtype": self.loc.dtype, "device": self.loc.device}
        if self.config.kind == "circular":
            return (2 * torch.rand(shape, **like) - 1) * math.pi
        eps = torch.randn(shape, **like)
        eps = eps * torch.exp(0.5 * self.config.latent_power * torch.log(c))[:, None]
        if not self.circular.any():
            return eps
        angles = (2 * torch.rand(shape, **like) - 1) * math.pi
        return torch.where(self.circular, angles, eps)

    # ---- protocol ----------------------------------------------------------------------
    def log_prob(self, x: Tensor, c: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log q(x | c, context), shape `[n]` for x `[n, dim]`; differentiable in x, c, theta."""
        c = self._as_c(c, len(x))
        x_std = (x - self.loc) / self.scale
        z, ladj = self.transform(c, context).call_and_ladj(x_std)
        return self._base_log_prob(z, c) + ladj - torch.log(self.scale).sum()

    def sample_and_log_prob(
        self, n: int, c: Tensor | float, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """n reparametrised samples `[n, dim]` at c (scalar or `[n]`) and their log q `[n]`."""
        c = self._as_c(c, n)
        z = self._base_sample(c)
        x_std, ladj = self.transform(c, context).inv.call_and_ladj(z)
        log_q = self._base_log_prob(z, c) - ladj - torch.log(self.scale).sum()
        return x_std * self.scale + self.loc, log_q

    @torch.no_grad()
    def sample(self, n: int, c: Tensor | float, context: Tensor | None = None) -> Tensor:
        """n samples `[n, dim]` without gradient."""
        return self.sample_and_log_prob(n, c, context)[0]


def make_flow(config: FlowConfig, data: Tensor | None = None) -> ConditionalFlow:
    """A `ConditionalFlow`, standardised by the mean and std of `data` `[n, dim]` when given
    (angles are left as they are)."""
    flow = ConditionalFlow(config)
    if data is not None and config.kind != "circular":
        circ = flow.circular.to(data.device)
        loc = torch.where(circ, 0.0, data.mean(0))
        scale = torch.where(circ, 1.0, data.std(0).clamp_min(1e-6))
        flow.standardise(loc, scale)
    return flow


def dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype of a model's parameters (float32 for a parameter-free module)."""
    return next((p.dtype for p in module.parameters()), torch.float32)


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def n_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
