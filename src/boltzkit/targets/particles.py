"""Particle systems with pair potentials: DW-4 and Lennard-Jones clusters (REFERENCE.md, "Targets").

E(x) = sum_{i<j} phi(|x_i - x_j|^2) + (k/2) sum_i |x_i - x_com|^2, log_prob = -E (kT = 1), for
x `[..., n_particles * spatial_dim]` with any leading batch dimensions.

Two evaluation paths, compared with each other in the tests:
- `_log_prob` under autograd (x requires grad): pair differences over the precomputed i < j index
  pairs, no `torch.cdist`, so double backward (Hessians, create_graph=True) works.
- everything else (`log_prob`, `energy`, `log_prob_and_score` without create_graph): the energy
  and its hand-derived gradient in one pass, in chunks of configurations laid out batch-last
  (`[d, n, b]`), so that every elementwise op runs over long contiguous rows: 5 to 22 times the
  base-class autograd throughput on CPU at batch 65,536 (BENCHMARKS.md, "Energy throughput").

Overlapping particles (r = 0): Lennard-Jones energies are +inf, so log_prob = -inf (counted in
`counter.n_nonfinite` by the base class); the score there is NaN. DW-4 is finite at r = 0 and
its score takes the subgradient 0 for the coincident pair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from boltzkit.targets.base import Target

# Pair-difference elements (spatial_dim * n_pairs * configurations) per chunk of the fast path:
# 2 MB in float32, so that a chunk's temporaries stay in cache (BENCHMARKS.md).
_CHUNK_ELEMENTS = 2**19


class PairPotential(Target):
    """E(x) = sum_{i<j} phi(r_ij^2) + (harmonic / 2) sum_i |x_i - x_com|^2, log_prob = -E.

    Subclasses give phi of the squared distance r2 twice: differentiably (`_pair_energy`) and
    with its derivative for the fast path (`_pair_energy_and_coef`, coef = 2 dphi/dr2, so that
    grad_{x_i} phi = coef * (x_i - x_j)).

    Args:
        n_particles: number of particles n.
        spatial_dim: dimension d of each particle's coordinates.
        harmonic: spring constant k of the harmonic term about the centre of mass (0: none).
        chunk_size: configurations per chunk of the fast path; default from `_CHUNK_ELEMENTS`.
    """

    def __init__(self, n_particles: int, spatial_dim: int, harmonic: float = 0.0,
                 chunk_size: int | None = None) -> None:
        if n_particles < 2:
            raise ValueError(f"a pair potential needs at least 2 particles, got {n_particles}")
        super().__init__(n_particles * spatial_dim)
        self.n_particles, self.spatial_dim = int(n_particles), int(spatial_dim)
        self.harmonic = float(harmonic)
        self._pairs = torch.triu_indices(n_particles, n_particles, 1)
        n_pairs = n_particles * (n_particles - 1) // 2
        self.chunk_size = chunk_size or max(64, _CHUNK_ELEMENTS // (n_pairs * spatial_dim))

    # ---- the pair function, to implement ------------------------------------------------
    def _pair_energy(self, r2: Tensor) -> Tensor:
        """phi(r2) elementwise, differentiable twice."""
        raise NotImplementedError

    def _pair_energy_and_coef(self, r2: Tensor, need_coef: bool) -> tuple[Tensor, Tensor | None]:
        """(phi(r2), 2 dphi/dr2 or None) elementwise; may overwrite r2."""
        raise NotImplementedError

    # ---- Target -------------------------------------------------------------------------
    def _log_prob(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return -self._energy_differentiable(x)
        return -self._energy_and_grad(x, need_grad=False)[0]

    def log_prob_and_score(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """(log_prob(x), grad_x log_prob(x)) from the analytic gradient; with create_graph=True
        by autograd (the base class), differentiable again."""
        if create_graph:
            return super().log_prob_and_score(x, create_graph=True)
        self.check_input(x)
        n = x[..., 0].numel()
        self.counter.n_energy += n
        self.counter.n_grad += n
        t = self.temperature
        with torch.no_grad():
            energy, grad = self._energy_and_grad(x.detach(), need_grad=True)
            lp = self._finite_or_minus_inf(energy.neg_())
            if isinstance(t, Tensor):
                return lp / t, grad / -t.unsqueeze(-1)
            return lp.div_(t), grad.mul_(-1.0 / t)  # in place: one pass over the gradient

    # ---- the two evaluation paths -------------------------------------------------------
    def _pair_index(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._pairs.device != device:  # after `to(device)` no copy per call
            self._pairs = self._pairs.to(device)
        i, j = self._pairs
        return i, j

    def _energy_differentiable(self, x: Tensor) -> Tensor:
        """E(x) `[...]` by plain tensor ops on `[..., n, d]` (autograd, double backward)."""
        i, j = self._pair_index(x.device)
        xp = x.unflatten(-1, (self.n_particles, self.spatial_dim))
        r2 = (xp[..., i, :] - xp[..., j, :]).square().sum(-1)
        energy = self._pair_energy(r2).sum(-1)
        if self.harmonic:
            centred = xp - xp.mean(-2, keepdim=True)
            energy = energy + 0.5 * self.harmonic * centred.square().sum((-2, -1))
        return energy

    def _energy_and_grad(self, x: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """(E(x) `[...]`, grad E `[..., dim]` or None) without autograd, chunk by chunk."""
        flat = x.reshape(-1, self.dim)
        energy = flat.new_empty(flat.shape[0])
        grad = torch.empty_like(flat) if need_grad else None
        n, d = self.n_particles, self.spatial_dim
        for start in range(0, flat.shape[0], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            energy[rows], grad_t = self._chunk(flat[rows], need_grad)
            if grad is not None:
                grad[rows].view(-1, n, d).copy_(grad_t.permute(2, 1, 0))
        return energy.view(x.shape[:-1]), None if grad is None else grad.view(x.shape)

    def _chunk(self, x: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        """x `[b, dim]` -> (E `[b]`, grad E `[d, n, b]` or None)."""
        i, j = self._pair_index(x.device)
        xt = x.view(-1, self.n_particles, self.spatial_dim).permute(2, 1, 0).contiguous()
        diff = xt.index_select(1, i) - xt.index_select(1, j)  # [d, pairs, b]
        r2 = diff[0].square()
        for k in range(1, self.spatial_dim):
            r2.addcmul_(diff[k], diff[k])
        phi, coef = self._pair_energy_and_coef(r2, need_grad)
        energy = phi.sum(0)
        centred = None
        if self.harmonic:
            centred = xt - xt.mean(1, keepdim=True)
            energy += 0.5 * self.harmonic * centred.square().sum((0, 1))
        if not need_grad:
            return energy, None
        grad = centred.mul_(self.harmonic) if centred is not None else torch.zeros_like(xt)
        force = diff.mul_(coef)
        return energy, grad.index_add_(1, i, force).index_add_(1, j, force, alpha=-1)


class DoubleWell(PairPotential):
    """Pairwise double well: phi(r) = a (r - offset)^4 + b (r - offset)^2, no harmonic term.

    DW-4 (Köhler, Klein & Noé 2020, arXiv 2006.02425; the iDEM code, arXiv 2402.06121): 4
    particles in 2-D, a = 0.9, b = -4, offset = 4, kT = 1. bgflow's `MultiDoubleWellPotential`
    also takes a constant per pair, which iDEM sets to 0 (so it is left out here).
    """

    def __init__(self, n_particles: int = 4, spatial_dim: int = 2, a: float = 0.9,
                 b: float = -4.0, offset: float = 4.0) -> None:
        super().__init__(n_particles, spatial_dim)
        self.a, self.b, self.offset = float(a), float(b), float(offset)
        self.name = f"dw{n_particles}"

    def _distance(self, r2: Tensor) -> Tensor:
        # sqrt'(0) is infinite: the clamp keeps phi's gradient at coincident particles finite.
        return r2.clamp_min(torch.finfo(r2.dtype).tiny).sqrt()

    def _pair_energy(self, r2: Tensor) -> Tensor:
        u2 = (self._distance(r2) - self.offset).square()
        return u2 * (self.a * u2 + self.b)

    def _pair_energy_and_coef(self, r2: Tensor, need_coef: bool) -> tuple[Tensor, Tensor | None]:
        r = self._distance(r2)
        u = r - self.offset
        u2 = u * u
        phi = (self.a * u2 + self.b).mul_(u2)
        if not need_coef:
            return phi, None
        # 2 dphi/dr2 = phi'(r) / r = (4 a u^3 + 2 b u) / r
        return phi, (4 * self.a * u2 + 2 * self.b).mul_(u).div_(r)


class LennardJones(PairPotential):
    """Lennard-Jones cluster: phi(r) = pair_factor * (r^-12 - 2 r^-6) (epsilon = r_min = 1) plus
    the harmonic term (1/2) sum_i |x_i - x_com|^2.

    pair_factor = 2 is the iDEM-code convention (arXiv 2402.06121; its sum runs over ordered
    pairs i != j, twice the formula printed in the paper; its reference data were drawn from it).
    pair_factor = 1 is the unordered-pair sum of bgflow and E(n) flows (EACF; Satorras et al. 2021,
    arXiv 2105.09016), with the same harmonic term.
    """

    def __init__(self, n_particles: int, spatial_dim: int = 3, pair_factor: float = 2.0,
                 harmonic: float = 1.0, name: str | None = None) -> None:
        super().__init__(n_particles, spatial_dim, harmonic)
        self.pair_factor = float(pair_factor)
        self.name = name or f"lj{n_particles}"
        self.typical_energy_max = 0.0  # a bound cluster; E > 0 means overlapping atoms

    def _pair_energy(self, r2: Tensor) -> Tensor:
        inv6 = r2.reciprocal().pow(3)
        return self.pair_factor * inv6 * (inv6 - 2.0)

    def _pair_energy_and_coef(self, r2: Tensor, need_coef: bool) -> tuple[Tensor, Tensor | None]:
        inv2 = r2.reciprocal_()
        inv4 = inv2 * inv2
        inv6 = inv4 * inv2
        # the product form keeps phi = +inf at r = 0 (the difference would be inf - inf = NaN)
        phi = (inv6 - 2.0).mul_(inv6).mul_(self.pair_factor)
        if not need_coef:
            return phi, None
        # 2 dphi/dr2 = -12 pair_factor r^-8 (r^-6 - 1)
        return phi, inv6.sub_(1.0).mul_(inv4).mul_(inv4).mul_(-12.0 * self.pair_factor)


def dw4() -> DoubleWell:
    """DW-4: 4 particles in 2-D, pairwise double well a = 0.9, b = -4, offset = 4, kT = 1."""
    return DoubleWell()


def lj13() -> LennardJones:
    """LJ-13 in 3-D, iDEM-code convention (ordered pairs, pair_factor 2) with harmonic term."""
    return LennardJones(13)


def lj55() -> LennardJones:
    """LJ-55 in 3-D, iDEM-code convention (ordered pairs, pair_factor 2) with harmonic term."""
    return LennardJones(55)


def lj13_eacf() -> LennardJones:
    """LJ-13 with the unordered-pair (EACF / bgflow) convention, pair_factor 1, same harmonic."""
    return LennardJones(13, pair_factor=1.0, name="lj13-eacf")
