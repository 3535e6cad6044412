"""Gaussian noise for samplers, COM-free for particle systems.

`Particles` describes a particle system's coordinate layout; noise for it is N(0, P) with P the
projector onto the centre-of-mass-free subspace V = {x : sum_i x_i = 0}, drawn as (n - 1) d
standard normals mapped by an orthonormal (Helmert) basis of V. `standard_normal` fills large
CPU draws from a fixed number of generators seeded by the global RNG, in parallel threads, so
that results do not depend on the thread count.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from boltzkit.targets.base import remove_com


@dataclass(frozen=True)
class Particles:
    """Layout of a particle system's coordinates: x `[..., n_particles * spatial_dim]`."""

    n_particles: int
    spatial_dim: int

    @property
    def dof(self) -> int:
        """Degrees of freedom of the centre-of-mass-free subspace, (n - 1) d."""
        return (self.n_particles - 1) * self.spatial_dim

    def center(self, x: Tensor) -> Tensor:
        """x minus its centre of mass (a new tensor; `boltzkit.targets.base.remove_com`)."""
        return remove_com(x, self.n_particles, self.spatial_dim)

    def basis(self, like: Tensor) -> Tensor:
        """Orthonormal rows `[(n-1) d, n d]` spanning the COM-free subspace (Helmert basis)."""
        return _com_free_basis(self.n_particles, self.spatial_dim, like.dtype, like.device)


@functools.lru_cache(maxsize=16)
def _com_free_basis(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    # Helmert rows h_k = (1, .., 1, -k, 0, ..) / sqrt(k (k + 1)), k = 1..n-1: orthonormal and
    # orthogonal to (1, .., 1); Kronecker with I_d for particle-major coordinates.
    # built on the host, then moved: a cached constant
    cpu = torch.device("cpu")
    k = torch.arange(1, n, dtype=torch.float64, device=cpu)
    h = torch.tril(torch.ones(n - 1, n, dtype=torch.float64, device=cpu))
    h[torch.arange(n - 1, device=cpu), torch.arange(1, n, device=cpu)] = -k
    h = h / torch.sqrt(k * (k + 1)).unsqueeze(1)
    return torch.kron(h, torch.eye(d, dtype=torch.float64, device=cpu)).to(dtype=dtype,
                                                                        device=device)


_PARALLEL_MIN = 1 << 20  # numbers; below this one generator is faster than a thread pool
_N_STREAMS = 4  # fixed, so that draws do not depend on the thread count


def standard_normal(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """N(0, 1) numbers of `shape` (dtype and device of `like`) from torch's global RNG.

    Large CPU draws are filled by `_N_STREAMS` generators seeded from the global RNG, in
    parallel threads: torch's CPU generator is single-threaded and would otherwise cost a
    quarter of the score estimator's time at 2 threads.
    """
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if out.numel() < _PARALLEL_MIN or out.device.type != "cpu":
        return out.normal_()
    seeds = torch.randint(0, 2**62, (_N_STREAMS,), device="cpu").tolist()
    parts = out.view(-1).chunk(_N_STREAMS)

    def fill(i: int) -> None:
        parts[i].normal_(generator=torch.Generator().manual_seed(seeds[i]))

    if torch.get_num_threads() < 2:
        for i in range(len(parts)):
            fill(i)
    else:
        list(_pool().map(fill, range(len(parts))))
    return out


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_N_STREAMS, thread_name_prefix="boltzkit-rng")


def gaussian_noise(shape: tuple[int, ...], like: Tensor, particles: Particles | None) -> Tensor:
    """Standard normal noise of `shape`; for particles N(0, P) with P the projector onto the
    COM-free subspace, drawn as (n-1) d numbers mapped by an orthonormal basis."""
    if particles is None:
        return standard_normal(shape, like)
    z = standard_normal((*shape[:-1], particles.dof), like)
    return z @ particles.basis(like)
