"""Data-parallel training over `torch.distributed` (gloo on CPU, nccl on GPU; launched by
torchrun, Ray Train or `torch.multiprocessing`): the pieces a training loop needs to split its
global batch across ranks and still follow the single-process trajectory.

The global batch of B samples is cut into `n_shards` shards of B / n_shards, shard s drawn
under its own seed `shard_seed(seed, step, s)` (the global RNG is forked and restored), so the
batch is the same whatever the number of ranks W (n_shards a multiple of W): rank r computes
shards r, r + W, ... (`shard_map`). The loss is the mean of the shard losses,
L = (1/S) sum_s l_s; rank r back-propagates its part L_r = (1/S) sum_{s of r} l_s and the
gradients are summed over ranks (`sum_gradients`), which gives grad L on every rank; the
optimiser steps are then identical and the parameters stay equal. Everything outside the
shards (buffers, generation) draws from the global RNG, seeded alike on every rank, so it stays
in lock-step. Counts are global: after a step `share_counts` adds the other ranks' evaluations
to each rank's counter, so every rank reads the sum over ranks and checks the global budget.

Reference: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020, arXiv 2006.15704 (gradient all-reduce after the backward pass).

>>> world(), shards(4, World(1, 2))
(World(rank=0, size=1), [1, 3])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

import torch
import torch.distributed as dist

from boltzkit.core.errors import UsageError
from boltzkit.targets.base import Target

T = TypeVar("T")


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


def check_shards(n_shards: int, batch_size: int, w: World) -> None:
    """A usage error unless n_shards divides between the ranks and divides the batch."""
    shards(n_shards, w)
    if batch_size % n_shards:
        raise UsageError(f"batch_size={batch_size} must be a multiple of n_shards={n_shards}")


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of one shard of one step: distinct for every (seed, step, shard)."""
    return (seed * 1_000_003 + step * 1_009 + shard) % 2**63


def shard_map(fn: Callable[[int], T], n_shards: int, w: World, seed: int, step: int
              ) -> list[T]:
    """[fn(s) for this rank's shards s], each call under the seed `shard_seed(seed, step, s)`
    (the global torch RNG, CUDA's included, is restored after each)."""
    out = []
    for shard in shards(n_shards, w):
        with torch.random.fork_rng():
            torch.manual_seed(shard_seed(seed, step, shard))
            out.append(fn(shard))
    return out


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
    return all_sums([value], w)[0]


def all_sums(values: Sequence[float], w: World) -> list[float]:
    """The sums of several floats over the ranks, in one all-reduce (float64)."""
    if w.size == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def share_counts(target: Target, before: dict[str, int], w: World) -> None:
    """Makes every rank's counter read the global count: n_k += sum_r d_r - d_own for each
    count k, where d_r is rank r's evaluations since its counter read `before` (this rank's
    reading at the start of the step). Collective: every rank calls it at the same point."""
    if w.size == 1:
        return
    now = target.counter.as_dict()
    keys = sorted(now)
    local = [now[k] - before[k] for k in keys]
    t = torch.tensor(local, dtype=torch.int64, device=_reduce_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    for key, own, total in zip(keys, local, t.tolist(), strict=True):
        setattr(target.counter, key, getattr(target.counter, key) + total - own)


def _reduce_device() -> torch.device:
    """Where a scalar all-reduce runs: the current CUDA device under nccl (which reduces no
    CPU tensors), else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
