"""Data-parallel training over `torch.distributed` (gloo on CPU, nccl on GPU; launched by
torchrun, Ray Train or `torch.multiprocessing`): the pieces a training loop needs to split its
global batch across ranks and still follow the single-process trajectory.

The global batch of B samples is cut into `n_shards` shards of B / n_shards, shard s drawn
under its own seed `shard_seed(seed, step, s)` (the global RNG is forked and restored), so the
batch is the same whatever the number of ranks W (n_shards a multiple of W): rank r computes
shards r, r + W, .... The loss is the mean of the shard losses, L = (1/S) sum_s l_s; rank r
back-propagates its part L_r = (1/S) sum_{s of r} l_s and the gradients are summed over ranks
(`sum_gradients`), which gives grad L on every rank; the optimiser steps are then identical
and the parameters stay equal. Counts are per rank: each spends B / W evaluations a step, so
a rank's budget is the global budget / W and the global counts are the sum over ranks.

Reference: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020, arXiv 2006.15704 (gradient all-reduce after the backward pass).

>>> world(), shards(4, World(1, 2))
(World(rank=0, size=1), [1, 3])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.distributed as dist

from boltzkit.core.errors import UsageError


class World(NamedTuple):
    """This process's rank and the number of ranks."""

    rank: int = 0
    size: int = 1


def world() -> World:
    """The process group's rank and size; (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def shards(n_shards: int, w: World) -> list[int]:
    """The shards rank `w.rank` computes: r, r + W, ... (n_shards a multiple of W)."""
    if n_shards % w.size:
        raise UsageError(f"n_shards={n_shards} must be a multiple of the number of ranks "
                         f"({w.size})")
    return list(range(w.rank, n_shards, w.size))


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of one shard of one step: distinct for every (seed, step, shard)."""
    return (seed * 1_000_003 + step * 1_009 + shard) % 2**63


def sum_gradients(parameters: Iterable[torch.nn.Parameter], w: World) -> None:
    """All-reduces (sums) every gradient over the ranks; nothing when there is one rank."""
    if w.size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def broadcast_parameters(module: torch.nn.Module, w: World) -> None:
    """Copies rank 0's parameters and buffers to every rank (equal starting points)."""
    if w.size == 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def all_sum(value: float, w: World) -> float:
    """The sum of a float over the ranks (float64)."""
    if w.size == 1:
        return float(value)
    t = torch.tensor(float(value), dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t)
