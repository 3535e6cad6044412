"""One sampler run on several data-parallel processes, launched by torchrun:

    torchrun --nproc-per-node 2 -m boltzkit sample dw4 --sampler idem --budget 2e6 \\
        --set n_shards=2 --out runs/dw4-idem-ddp

Every process runs the same command. `join` reads torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), joins the process group (gloo on the CPU, nccl when the
run's device is CUDA, each rank on GPU LOCAL_RANK) and checks that the sampler trains
data-parallel (`DATA_PARALLEL`). Rank 0 is the ordinary run: it writes the run directory,
evaluates and draws. Every other rank `follow`s: it builds the same target and config, seeds
itself with the same seed (the shards carry their own seeds, so everything outside them stays
in lock-step, `boltzkit.samplers.distributed`) and samples with no run directory, no progress
and no evaluation. A process started without torchrun is rank 0 of 1 and nothing changes.
When a rank fails, torchrun stops the others.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from boltzkit.app import runner
from boltzkit.core.errors import UsageError
from boltzkit.core.seeding import seed_everything
from boltzkit.samplers import distributed

DATA_PARALLEL = ("idem", "flow")  # samplers whose training shards over the ranks


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(sampler: str | None, sets: Sequence[str], resume: bool) -> distributed.World:
    """This process's rank and the number of ranks, after joining torchrun's process group
    (nothing to join for one process). A usage error for a sampler that does not train
    data-parallel, and for --resume, on several processes."""
    if world_size() == 1:
        return distributed.World()
    if resume:
        raise UsageError("--resume of a data-parallel run is not supported yet: resume it "
                         "with one process")
    if sampler not in DATA_PARALLEL:
        raise UsageError(f"torchrun with {world_size()} processes trains data-parallel only "
                         f"with the samplers {', '.join(DATA_PARALLEL)}, not {sampler!r}")
    if not dist.is_initialized():
        backend = "nccl" if _device(sets).startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
        atexit.register(_leave)
    return distributed.world()


def follow(*, target_name: str, sampler: str, budget: int, seed: int, sets: Sequence[str],
           preset: str | None, n_samples: int, params: Sequence[str]) -> None:
    """A rank other than 0: rank 0's target, config and seed, sampled with nothing written
    (the shards of the training batch that are this rank's, `boltzkit.samplers.distributed`)."""
    runner.check_sizes(budget, n_samples)
    target = runner.build_target(target_name, params)
    module = runner.sampler_module(sampler)
    if preset is None:
        preset = runner.default_preset(module, target_name)
    config = runner.sampler_config(module, sets, preset, sampler)
    seed_everything(seed)
    target = runner.on_config_device(target, config)  # rank 0's space (`runner.execute`)
    space = runner.on_config_device(runner.sampling_space(target), config)
    module.sample(space, config, n_samples=n_samples, budget=budget)


def describe(w: distributed.World) -> dict[str, object]:
    """What run.json records of the launch: ranks and backend (None for one process)."""
    if w.size == 1:
        return {"data_parallel": None}
    return {"data_parallel": {"world_size": w.size, "backend": dist.get_backend()}}


def _device(sets: Sequence[str]) -> str:
    """The device the run's `--set device=...` names (the last one), else cpu."""
    given = [s.split("=", 1)[1].strip() for s in sets if s.split("=", 1)[0].strip() == "device"]
    return given[-1] if given else "cpu"


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
