"""Time-conditioned multilayer perceptron: the score network of iDEM on non-particle targets.

>>> import torch
>>> net = TimeMLP(dim=2, hidden=32, n_layers=2)
>>> net(torch.zeros(5, 2), torch.rand(5)).shape
torch.Size([5, 2])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a scalar time, as in the Transformer and DDPM.

    emb(t)_k = sin(scale * t * f_k), emb(t)_{k+D/2} = cos(scale * t * f_k),
    f_k = max_period^(-k / (D/2)), k = 0..D/2-1. With `scale` = 1000 and t in [0, 1] the highest
    frequency resolves differences of 1e-3 in t (Ho et al. 2020, arXiv 2006.11239).

    Args:
        dim: embedding width D (even).
        max_period: the slowest period, in units of `scale * t`.
        scale: multiplies t before the sinusoids.
    """

    def __init__(self, dim: int, max_period: float = 10_000.0, scale: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding width must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale

    def forward(self, t: Tensor) -> Tensor:
        """t `[...]` -> `[..., D]`."""
        angle = (self.scale * t).unsqueeze(-1) * self.freqs.to(t.dtype)
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class TimeMLP(nn.Module):
    """s_theta(x, t) = MLP([x, e(t)]) with e(t) a learned map of sinusoidal time features.

    Architecture: e(t) = Linear(SiLU(Linear(sin_emb(t)))); h = Linear([x, e(t)]); then
    `n_layers` residual blocks h <- h + Linear(SiLU(h)); output Linear(SiLU(h)) -> dim, initialised
    at zero so that an untrained network predicts a zero score.

    Args:
        dim: input and output width.
        hidden: hidden width.
        n_layers: number of residual blocks.
        time_dim: width of the sinusoidal embedding (frequencies 0.1 .. 100 per unit t).
    """

    def __init__(self, dim: int, hidden: int = 128, n_layers: int = 3, time_dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        # Angular frequencies 0.1 .. 100 per unit t: t in [0, 1] resolved to about 1e-2.
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(time_dim, max_period=1000.0, scale=100.0),
            nn.Linear(time_dim, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.input = nn.Linear(dim + hidden, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(n_layers))
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x `[B, dim]`, t `[B]` (or a scalar broadcast over the batch) -> `[B, dim]`."""
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[:-1])
        h = self.input(torch.cat([x, self.time_embed(t)], dim=-1))
        for block in self.blocks:
            h = h + block(nn.functional.silu(h))
        return self.output(nn.functional.silu(h))
