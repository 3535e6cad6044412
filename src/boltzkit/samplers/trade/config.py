"""TRADE's configuration and boundary data (`boltzkit.samplers.trade`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from boltzkit.core.config import check_ranges
from boltzkit.core.errors import UsageError
from boltzkit.models.flows import FlowArchitecture

Method = Literal["trade", "latent_nll", "reverse_kl", "nll_reverse_kl", "reweight"]


@dataclass(frozen=True)
class Config(FlowArchitecture):
    """TRADE and its baselines; `method` picks the loss, the rest are shared settings."""

    method: Method = "trade"
    parameter: str = "temperature"  # how c acts on the target, see trade_family.Family
    c0: float = 1.0
    c_min: float = 0.5
    c_max: float = 2.0
    boundary: Literal["nll", "reverse_kl"] = "nll"  # reverse_kl = data-free
    energy_free: bool = False  # gamma(x|c) ~ q_theta(x|c0)^(power): no energy evaluations
    expectation: Literal["flow_c", "flow_c0", "ema"] = "flow_c"
    # "snis": E_c[A] estimated as above; "fitted": per condition the constant that minimises the
    # residual loss (`fitted_constant`; equal to E_c[A] at the solution, by the normalisation of
    # q), with no importance weights: for targets where the SNIS ESS collapses.
    constant: Literal["snis", "fitted"] = "snis"
    conditions: Literal["curriculum", "grid"] = "curriculum"
    n_conditions: int = 8  # per step (curriculum)
    n_per_condition: int = 64
    n_grid: int = 9
    causality_eps: float = 1.0
    curriculum_start: float = 0.1  # reach and skew exponent at step 0; both -> 1 (log-uniform)
    curriculum_fraction: float = 0.5  # of the propagation steps
    ema_every: int = 10
    ema_decay: float = 0.5
    n_ema_samples: int = 256
    rho: Literal["huber", "mse"] = "huber"
    # "spread": residuals divided per condition by max(1, robust spread of A) (same solutions)
    residual_scale: Literal["none", "spread"] = "none"
    huber_delta: float = 1.0
    weight: float = 1.0  # lambda
    residual_in_log_c: bool = True  # residual times c, i.e. d/dlog c (scale-free in c)
    warmup_steps: int = 200  # boundary loss only
    latent_scaling: bool = True  # base N(0, c I) for temperature, N(0, I / c) for beta
    n_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    grad_clip: float = 10.0
    n_data: int = 10_000
    c_sample: float | None = None  # condition of the returned samples (None: c0)
    checkpoint_every: int = 500
    log_every: int = 50
    validate_every: int = 100  # steps between validation NLLs (when train gets validation data)
    dtype: Literal["float32", "float64"] = "float32"
    device: str = "cpu"  # where the flow and the conditions live; the target must be there

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=(
            "c0", "c_min", "c_max", "n_conditions", "n_per_condition", "n_grid", "ema_every",
            "n_ema_samples", "huber_delta", "n_steps", "batch_size", "lr", "grad_clip",
            "n_data", "log_every", "validate_every", "c_sample"),
            nonnegative=("causality_eps", "weight", "warmup_steps", "checkpoint_every"),
            fractions=("curriculum_start", "curriculum_fraction", "ema_decay"))
        if not self.c_min <= self.c0 <= self.c_max:
            raise UsageError(f"TRADE needs c_min <= c0 <= c_max, got {self.c_min}, {self.c0}, "
                             f"{self.c_max}")

    @property
    def uses_data(self) -> bool:
        """Whether training fits boundary samples (not reverse KL, nor a data-free boundary)."""
        return self.method != "reverse_kl" and self.boundary == "nll"

    def latent_power(self) -> float:
        if not self.latent_scaling:
            return 0.0
        return {"temperature": 1.0, "beta": -1.0}.get(self.parameter, 0.0)


class Data:
    """Boundary data: samples x `[N, dim]` at conditions c `[N]`, optional contexts `[N, k]`."""

    def __init__(self, x: Tensor, c: Tensor | float, context: Tensor | None = None) -> None:
        self.x, self.context = x, context
        self.c = torch.as_tensor(c, dtype=x.dtype, device=x.device).expand(len(x)).clone()

    def batch(self, n: int) -> tuple[Tensor, Tensor, Tensor | None]:
        idx = torch.randint(len(self.x), (n,), device=self.x.device)
        ctx = None if self.context is None else self.context[idx]
        return self.x[idx], self.c[idx], ctx


# ---- losses -----------------------------------------------------------------------------
