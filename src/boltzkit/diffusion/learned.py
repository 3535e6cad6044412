"""A learned diffusion model: denoising score matching on exact samples of the target, wrapped
with the interface of `boltzkit.diffusion.schedules.PerfectModel` so that every kernel and path
runs on it, and per-level diagnostics against the perfect model.

Training (Vincent 2011; Ho et al. 2020): x_t = alpha_t x_0 + sigma_t eps with lambda_t uniform in
[lambda(t_max), lambda(t_min)], minimising E |sigma_t s_theta(x_t, t) + eps|^2 (epsilon
prediction, i.e. score matching weighted by sigma_t^2).

Diagnostics per noise level t, on exact samples x ~ p_t of the perfect model:
- Fisher divergence E_{p_t} |s_theta(x, t) - grad log p_t(x)|^2;
- ESS fraction of the learned log-density against the exact one: Kish ESS / N of the weights
  log w = log p_theta,t(x) - log p_t(x) (`boltzkit.mc.estimators.ess_fraction`), which is 1 iff
  the learned density equals p_t up to a constant; annealed MC needs exactly that, while
  samplers that only follow the score need a small Fisher divergence;
- the mode weights of the learned density (self-normalised with the same weights): score
  matching pins log p_t down only up to a constant on each region the data connect, so at low
  noise the relative mass of separated modes is barely constrained.

>>> import torch
>>> from boltzkit.diffusion.schedules import VPSchedule
>>> from boltzkit.targets.mixtures import two_modes
>>> _ = torch.manual_seed(0)
>>> cfg = DSMConfig(n_steps=5, hidden=16, n_train=256, batch_size=64)
>>> model = train_dsm(two_modes(2, 2.0), VPSchedule(), cfg).model
>>> model.score(torch.zeros(4, 2, dtype=torch.float64), 0.5).shape
torch.Size([4, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from boltzkit.core.callback import Callback
from boltzkit.diffusion.network_model import AutogradModel
from boltzkit.diffusion.schedules import Schedule
from boltzkit.mc import estimators
from boltzkit.mc.paths import Gaussian
from boltzkit.models.energy_net import EnergyNet, ScoreNet
from boltzkit.targets.base import Target


class LearnedMarginal(Target):
    """p_theta,t as a `Target` (unnormalised), sharing the model's counter."""

    def __init__(self, model: LearnedModel, t: float) -> None:
        super().__init__(model.dim)
        self.name, self.model, self.t = f"learned-p_t(t={t:.4g})", model, float(t)
        self.counter = model.counter

    def _log_prob(self, x: Tensor) -> Tensor:
        alpha, sigma = self.model.coefficients(self.t)
        return -self.model.net(x, alpha, sigma)


class LearnedModel(AutogradModel):
    """A trained `EnergyNet` or `ScoreNet` with the diffusion-model interface of
    `PerfectModel` (no exact kernel); Jacobians and the posterior covariance by autograd
    (`boltzkit.diffusion.network_model.AutogradModel`)."""

    def __init__(self, net: EnergyNet | ScoreNet, schedule: Schedule, data_var: float,
                 cov_floor: float = 1e-6) -> None:
        super().__init__()
        self.net, self.schedule, self.dim = net.requires_grad_(False), schedule, net.dim
        self.has_log_prob = isinstance(net, EnergyNet)
        self.data_var, self.cov_floor = float(data_var), cov_floor
        self._marginals: dict[float, LearnedMarginal] = {}

    def reference(self) -> Target:
        """N(0, (alpha^2 s_data^2 + sigma^2) I) at t_max: exact samples, log Z = 0."""
        alpha, sigma = self.coefficients(self.schedule.t_max)
        return Gaussian(self.dim, scale=(alpha**2 * self.data_var + sigma**2) ** 0.5)

    def marginal(self, t: float) -> Target | None:
        if not self.has_log_prob:
            return None
        if float(t) not in self._marginals:
            self._marginals[float(t)] = LearnedMarginal(self, t)
        return self._marginals[float(t)]

    def log_prob(self, x: Tensor, t: float) -> Tensor:
        return self.marginal(t).log_prob(x)

    def score(self, x: Tensor, t: float, create_graph: bool = False) -> Tensor:
        self._count(x)
        alpha, sigma = self.coefficients(t)
        out = self.net.score(x, alpha, sigma, create_graph)
        return out if create_graph else out.detach()


@dataclass(frozen=True)
class DSMConfig:
    """Denoising score matching hyperparameters (defaults: a few CPU minutes for d <= 32)."""

    parametrisation: Literal["energy", "score"] = "energy"
    hidden: int = 128
    n_layers: int = 3
    time_dim: int = 32
    n_train: int = 20_000
    n_steps: int = 3000
    batch_size: int = 512
    lr: float = 1e-3
    t_min: float = 1e-3


class TrainResult(NamedTuple):
    """The trained model and the loss trace (one value per step)."""

    model: LearnedModel
    losses: list[float]


def train_dsm(target: Target, schedule: Schedule, config: DSMConfig = DSMConfig(),
              callback: Callback | None = None) -> TrainResult:
    """Trains a diffusion model on `config.n_train` exact samples of `target` (float32 net).

    Args:
        target: a target with exact samples.
        schedule: the noise schedule.
        config: hyperparameters.
        callback: called as callback("advance", n=1, loss=...) per step.
    """
    data = target.sample(config.n_train).float()
    data_var = float(data.var(0).mean())
    make = EnergyNet if config.parametrisation == "energy" else ScoreNet
    with torch.device(data.device):  # parameters initialised where the target's samples are
        net = make(target.dim, config.hidden, config.n_layers, config.time_dim, data_var)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    lam_hi = float(schedule.log_snr(config.t_min))
    lam_lo = float(schedule.log_snr(schedule.t_max))
    losses = []
    for _ in range(config.n_steps):
        x0 = data[torch.randint(len(data), (config.batch_size,), device=data.device)]
        lam = lam_lo + (lam_hi - lam_lo) * torch.rand(config.batch_size, dtype=torch.float64,
                                                      device=data.device)
        t = schedule.time_of_log_snr(lam)
        alpha, sigma = schedule.alpha(t).float(), schedule.sigma(t).float()
        eps = torch.randn_like(x0)
        x_t = (alpha[:, None] * x0 + sigma[:, None] * eps).requires_grad_(True)
        score = net.score(x_t, alpha, sigma, create_graph=True)
        loss = ((sigma[:, None] * score + eps) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if callback is not None:
            callback("advance", n=1, loss=losses[-1])
    net.eval()
    return TrainResult(LearnedModel(net.double(), schedule, data_var), losses)


class LevelDiagnostics(NamedTuple):
    """Per noise level: times `[L]`, log_snr `[L]`, fisher `[L]` (E|s_theta - s|^2),
    ess_fraction `[L]` of the learned log-density against the exact one, and mode_weights
    `[L, K]`: the component weights of the learned density, sum_i w_i r_k(x_i) / sum_i w_i
    with w = p_theta,t / p_t on exact samples and r_k the responsibilities of the noised
    mixture's components (exact value: the mixture weights, at every noise level). NaN where
    the model has no log-density. All on the host, whatever device the models use."""

    times: Tensor
    log_snr: Tensor
    fisher: Tensor
    ess_fraction: Tensor
    mode_weights: Tensor


def level_diagnostics(learned: LearnedModel, perfect: Any, times: Tensor,
                      n_samples: int = 2000) -> LevelDiagnostics:
    """Compares `learned` with the perfect model at each time in `times` (0 < t <= t_max), on
    exact samples of p_t; nothing is charged to either model's counters."""
    host = {"dtype": torch.float64, "device": "cpu"}  # diagnostics are kept on the host
    times = torch.as_tensor(times, **host)
    fisher, ess, modes = [], [], []
    for t in times.tolist():
        exact = perfect.marginal(t).uncounted()
        x = exact.sample(n_samples)
        s_exact = exact.log_prob_and_score(x)[1]
        alpha, sigma = learned.coefficients(t)
        s_learned = learned.net.score(x, alpha, sigma).detach()
        fisher.append(float(((s_learned - s_exact) ** 2).sum(-1).mean()))
        n_modes = exact.n_components
        if learned.has_log_prob:
            log_w = -learned.net(x, alpha, sigma).detach() - exact.log_prob(x)
            ess.append(float(estimators.ess_fraction(log_w)))
            # Responsibilities rather than hard assignment: E_{p_t}[r_k] = w_k at every noise level.
            resp = torch.softmax(exact.component_log_prob(x), -1)
            modes.append(estimators.normalised_weights(log_w).to(resp.dtype) @ resp)
        else:
            ess.append(float("nan"))
            modes.append(torch.full((n_modes,), float("nan"), **host))
    return LevelDiagnostics(times, learned.schedule.log_snr(times), torch.tensor(fisher, **host),
                            torch.tensor(ess, **host), torch.stack([m.cpu() for m in modes]))
