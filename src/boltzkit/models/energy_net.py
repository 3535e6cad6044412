"""Time-conditioned diffusion networks: energy-parametrised (log p_t available, score by
autograd) and score-parametrised (epsilon prediction, no log-density).

Both condition on the log signal-to-noise ratio lambda = log(alpha^2 / sigma^2) of the noise level,
so they do not depend on the schedule, and precondition the input with
c_in = (alpha^2 s_data^2 + sigma^2)^(-1/2), the inverse standard deviation of X_t for data of
per-coordinate variance s_data^2 (Karras et al. 2022, arXiv 2206.00364). Each starts as the
Gaussian N(0, c_in^-2 I), the exact p_t of isotropic zero-mean data, plus a learned correction:

    energy:  log p_t(x) = -E(x, t),  E = |c_in x|^2 / 2 + MLP([c_in x, emb(lambda)]),
    score:   s(x, t) = -eps(x, t) / sigma,  eps = sigma c_in^2 x + MLP([c_in x, emb(lambda)]).

The energy form is the one annealed Monte Carlo needs (intermediate log-densities); the score
form allows AIS only (Grenioux & Noble, arXiv 2601.21026, Sec. 5). The sinusoidal embedding here
duplicates `boltzkit.models.mlp.SinusoidalEmbedding` in spirit (written concurrently); it embeds
lambda rather than t.

>>> import torch
>>> net = EnergyNet(dim=3, hidden=16, n_layers=2)
>>> x, alpha, sigma = torch.randn(5, 3), torch.tensor(0.8), torch.tensor(0.6)
>>> net(x, alpha, sigma).shape, net.score(x, alpha, sigma).shape
(torch.Size([5]), torch.Size([5, 3]))
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from boltzkit.models.egnn import EquivariantLayer, register_graph


def sinusoidal_embedding(value: Tensor, dim: int, max_period: float = 100.0) -> Tensor:
    """[sin(value f_k), cos(value f_k)], f_k = max_period^(-k/(dim/2)), k < dim/2; `[..., dim]`.

    With the default the periods span 2 pi to 200 pi, enough for log-SNRs in [-20, 20].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=value.dtype,
                                                             device=value.device) / half)
    angle = value[..., None] * freqs
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def _mlp(d_in: int, hidden: int, n_layers: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(d_in, hidden), nn.SiLU()]
    for _ in range(n_layers - 1):
        layers += [nn.Linear(hidden, hidden), nn.SiLU()]
    last = nn.Linear(hidden, d_out)
    nn.init.zeros_(last.weight)  # start at the Gaussian base term
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class _Conditioned(nn.Module):
    """Shared input handling: preconditioned x and the embedded log-SNR."""

    def __init__(self, dim: int, d_out: int, hidden: int, n_layers: int, time_dim: int,
                 data_var: float) -> None:
        super().__init__()
        if time_dim % 2:
            raise ValueError(f"time_dim must be even, got {time_dim}")
        self.dim, self.time_dim, self.data_var = dim, time_dim, float(data_var)
        self.mlp = _mlp(dim + time_dim, hidden, n_layers, d_out)

    def c_in(self, alpha: Tensor, sigma: Tensor) -> Tensor:
        return torch.rsqrt(alpha**2 * self.data_var + sigma**2)

    def features(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(c_in `[..., 1]`, the MLP input `[..., d + time_dim]`) for alpha, sigma scalars or
        broadcastable to the batch shape `[...]` of x (a noise level per point)."""
        alpha, sigma = (torch.as_tensor(v, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
                        for v in (alpha, sigma))
        log_snr = torch.log(alpha**2) - torch.log(sigma**2)
        c = self.c_in(alpha, sigma)[..., None]
        return c, torch.cat([c * x, sinusoidal_embedding(log_snr, self.time_dim)], dim=-1)


class EnergyNet(_Conditioned):
    """E_theta(x; alpha, sigma) with log p_t = -E; see the module docstring.

    Args:
        dim: data dimension d.
        hidden, n_layers: MLP width and depth.
        time_dim: width of the log-SNR embedding (even).
        data_var: per-coordinate variance of the data, for the preconditioning.
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3, time_dim: int = 32,
                 data_var: float = 1.0) -> None:
        super().__init__(dim, 1, hidden, n_layers, time_dim, data_var)

    def forward(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float) -> Tensor:
        """The energy `[...]` for x `[..., d]` (alpha, sigma as in `features`)."""
        c, inp = self.features(x, alpha, sigma)
        return 0.5 * ((c * x) ** 2).sum(-1) + self.mlp(inp)[..., 0]

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor, create_graph: bool = False) -> Tensor:
        """-grad_x E by autograd, `[..., d]`."""
        with torch.enable_grad():
            if not (create_graph and x.requires_grad):
                x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self(x, alpha, sigma).sum(), x,
                                          create_graph=create_graph)
        return -grad


class ScoreNet(_Conditioned):
    """s_theta(x; alpha, sigma) = -eps_theta / sigma; see the module docstring."""

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3, time_dim: int = 32,
                 data_var: float = 1.0) -> None:
        super().__init__(dim, dim, hidden, n_layers, time_dim, data_var)

    def forward(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The noise prediction eps_theta `[..., d]`."""
        c, inp = self.features(x, alpha, sigma)
        return _per_point(sigma, x) * c**2 * x + self.mlp(inp)

    def score(self, x: Tensor, alpha: Tensor, sigma: Tensor, create_graph: bool = False) -> Tensor:
        """-eps_theta / sigma, `[..., d]` (differentiable whatever `create_graph`)."""
        return -self(x, alpha, sigma) / _per_point(sigma, x)


def _per_point(value: Tensor | float, x: Tensor) -> Tensor:
    """A noise coefficient shaped `[..., 1]` against x `[..., d]`."""
    return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand(x.shape[:-1])[..., None]


# ---- iDEM's energy parametrisation: E_theta(x, t) on a VE schedule ---------------------------
class TimeEnergy(nn.Module):
    """A noised energy E_theta(x, t) whose call returns the score s = -grad_x E, so that it
    stands in for iDEM's score network (training, reverse SDE, probability-flow ODE) while
    `energy` gives the unnormalised log-density log p_t = -E at every level (for SMC).

        E_theta(x, t) = |P x|^2 / (2 (data_var + sigma_t^2)) + head(x, t),

    P the COM-free projector for particles (identity otherwise): the network starts as the
    Gaussian p_t of isotropic data of variance `data_var`, like `EnergyNet`; `head` sees the
    preconditioned c_in x, c_in = (data_var + sigma_t^2)^(-1/2) (so its share of the score
    shrinks at high noise, where p_t is nearly that Gaussian): an MLP on [c_in x, emb(t)]
    ("mlp") or the sum over particles of an MLP of message-passing node features ("egnn";
    translation, rotation and permutation invariant). The score is by autograd, with a graph
    (create_graph) whenever autograd is on, so that the DEM loss on the score trains the energy
    (iDEM's regression target, arXiv 2402.06121 eq. 9; energy parametrisation as in Noised
    Energy Matching, arXiv 2409.09787).

    Args:
        dim: coordinates d.
        sigma: t -> sigma_t (the schedule's `sigma`).
        kind: "mlp" or "egnn".
        hidden, n_layers: width and depth.
        particles: (n_particles, spatial_dim) for "egnn" and COM-free projection, or None.
        data_var: per-coordinate variance of the base Gaussian.
    """

    def __init__(self, dim: int, sigma: Any, kind: str = "mlp", hidden: int = 128,
                 n_layers: int = 3, particles: tuple[int, int] | None = None,
                 data_var: float = 1.0, time_dim: int = 32) -> None:
        super().__init__()
        self.dim, self.sigma, self.kind, self.data_var = dim, sigma, kind, float(data_var)
        self.particles = particles
        self.time_dim = time_dim
        if kind == "mlp":
            self.head: nn.Module = _mlp(dim + time_dim, hidden, n_layers, 1)
        elif kind == "egnn":
            if particles is None:
                raise ValueError("an EGNN energy needs a particle layout")
            self.head = _InvariantEGNN(*particles, hidden, n_layers, time_dim)
        else:
            raise ValueError(f"kind must be 'mlp' or 'egnn', got {kind!r}")

    def _center(self, x: Tensor) -> Tensor:
        if self.particles is None:
            return x
        n, d = self.particles
        v = x.reshape(*x.shape[:-1], n, d)
        return (v - v.mean(-2, keepdim=True)).reshape(x.shape)

    def energy(self, x: Tensor, t: Tensor | float) -> Tensor:
        """E_theta(x, t) `[...]` for x `[..., d]`, t a scalar or `[...]`."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        sigma = torch.as_tensor(self.sigma(t), dtype=x.dtype, device=x.device)
        c = torch.rsqrt(self.data_var + sigma**2)[..., None]
        xc = self._center(x)
        emb = sinusoidal_embedding(t * 100.0, self.time_dim, max_period=1000.0)
        if self.kind == "mlp":
            head = self.head(torch.cat([c * xc, emb], dim=-1))[..., 0]
        else:
            head = self.head(c * xc, emb)
        return 0.5 * ((c * xc) ** 2).sum(-1) + head

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The score -grad_x E_theta(x, t) `[..., d]`."""
        create = torch.is_grad_enabled()  # training: the loss on the score reaches the weights
        with torch.enable_grad():
            if not (create and x.requires_grad):
                x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(x, t).sum(), x, create_graph=create)
        return -grad


class _InvariantEGNN(nn.Module):
    """sum_i MLP(h_i^L): the node features of L message-passing layers (`EquivariantLayer`'s
    messages on the fixed input distances, every layer updating h), started from an embedding
    of t shared by all particles: invariant to rotations, translations and permutations."""

    def __init__(self, n_particles: int, spatial_dim: int, hidden: int, n_layers: int,
                 time_dim: int) -> None:
        super().__init__()
        self.n_particles, self.spatial_dim = n_particles, spatial_dim
        self.embed = nn.Linear(time_dim, hidden)
        self.layers = nn.ModuleList(EquivariantLayer(hidden) for _ in range(n_layers))
        self.readout = _mlp(hidden, hidden, 1, 1)
        register_graph(self, n_particles)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x `[B, n d]`, emb `[B, time_dim]` -> `[B]`."""
        b = x.shape[0]
        xl = x.reshape(b, self.n_particles, self.spatial_dim)
        h = self.embed(emb).unsqueeze(1)  # [B, 1, H]: every particle alike
        pairs = (self.pair_first, self.pair_second)
        for layer in self.layers:
            # positions stay fixed: h depends on the distances only (the coordinate updates
            # fed back into later layers made the energy's gradient diverge in training)
            _, h = layer(xl, h, self.col, pairs)
        return self.readout(h)[..., 0].sum(-1)
