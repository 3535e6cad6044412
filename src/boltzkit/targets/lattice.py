"""phi^4 scalar field theory on a periodic L x L lattice, hopping-parameter form.

S(phi) = sum_x [(1 - 2 lam) phi_x^2 + lam phi_x^4 - 2 kappa sum_mu phi_x phi_{x+mu}], mu over the
two positive directions; log_prob = -S. Configurations are flattened row-major to dim = L * L.
Conventions as in TRADE (arXiv 2410.19492) and Albergo, Kanwar & Shanahan (arXiv 1904.12072):
L = 8, lam = 0.02, kappa in [0.22, 0.32]. No exact sampler: reference data come from MCMC.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from boltzkit.targets.base import Target


class Phi4(Target):
    """phi^4 on a periodic L x L lattice with hopping parameter kappa and coupling lam.

    `kappa` may be a float or a tensor broadcasting against the batch shape `[...]`, so that
    d log_prob / d kappa (TRADE's A = dS/dkappa, up to sign) is available by autograd;
    `dS_dkappa(x)` gives it in closed form.
    """

    def __init__(self, L: int = 8, lam: float = 0.02, kappa: float | Tensor = 0.25) -> None:
        if L < 2:
            raise ValueError(f"L must be at least 2, got {L}")
        super().__init__(L * L)
        self.L, self.lam, self.kappa = L, lam, kappa
        self.name = "phi4"

    def with_kappa(self, kappa: float | Tensor) -> Phi4:
        """The same theory at another hopping parameter (shares the evaluation counter)."""
        new = copy.copy(self)
        new.kappa = kappa
        return new

    def field(self, x: Tensor) -> Tensor:
        """x `[..., L*L]` as a field `[..., L, L]`."""
        return x.reshape(*x.shape[:-1], self.L, self.L)

    def hopping(self, x: Tensor) -> Tensor:
        """sum_x sum_mu phi_x phi_{x+mu}, `[...]`."""
        phi = self.field(x)
        right = torch.roll(phi, shifts=-1, dims=-1)
        down = torch.roll(phi, shifts=-1, dims=-2)
        return (phi * (right + down)).sum((-2, -1))

    def dS_dkappa(self, x: Tensor) -> Tensor:
        """dS / dkappa = -2 sum_x sum_mu phi_x phi_{x+mu}, `[...]`."""
        return -2.0 * self.hopping(x)

    def action(self, x: Tensor) -> Tensor:
        """S(phi), `[...]` (uncounted)."""
        phi2 = x**2
        local = ((1 - 2 * self.lam) * phi2 + self.lam * phi2**2).sum(-1)
        return local - 2.0 * self.kappa * self.hopping(x)

    def _log_prob(self, x: Tensor) -> Tensor:
        return -self.action(x)

    def describe(self) -> dict[str, object]:
        kappa = self.kappa if not isinstance(self.kappa, Tensor) else "tensor"
        return {**super().describe(), "L": self.L, "lam": self.lam, "kappa": kappa}

    def __repr__(self) -> str:
        return f"Phi4(L={self.L}, lam={self.lam}, kappa={self.kappa})"


def magnetisation(x: Tensor) -> Tensor:
    """Mean field per configuration m = (1/V) sum_x phi_x, `[...]` for x `[..., V]`."""
    return x.mean(-1)


def susceptibility(x: Tensor) -> Tensor:
    """chi = V (<m^2> - <|m|>^2) over the samples x `[n, V]` (a 0-dim tensor)."""
    m = magnetisation(x)
    return x.shape[-1] * ((m**2).mean() - m.abs().mean() ** 2)


def binder_cumulant(x: Tensor) -> Tensor:
    """U = 1 - <m^4> / (3 <m^2>^2) over the samples x `[n, V]` (a 0-dim tensor)."""
    m = magnetisation(x)
    return 1 - (m**4).mean() / (3 * (m**2).mean() ** 2)


def phi4(L: int = 8, lam: float = 0.02, kappa: float = 0.25) -> Phi4:
    """TRADE's phi^4 benchmark: L = 8, lam = 0.02, kappa = 0.25 (also 0.29 in the paper)."""
    return Phi4(L, lam, kappa)
