"""Data-parallel flow training (boltzkit.samplers.distributed, flow.train under
torch.distributed): with 2 CPU processes (gloo) and the same global batch, the loss trajectory
is the single-process one in float64, counts and budget are global; the broken variant (no
gradient all-reduce) departs from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from boltzkit import targets
from boltzkit.core.errors import UsageError
from boltzkit.models.flows import make_flow
from boltzkit.samplers import distributed
from boltzkit.samplers import flow as flow_bg

CONFIG = flow_bg.Config(n_layers=2, hidden=16, n_steps=5, batch_size=64, n_shards=2, lr=1e-2,
                        log_every=1, checkpoint_every=0, dtype="float64")
BUDGET = 64 * 4  # global: four steps


def histories() -> dict[str, list[float] | int]:
    """Loss per step of a full run and of a budgeted one, and the energy evaluations recorded
    (global: summed over the ranks) (the same seed, target and flow on every rank)."""
    target = targets.get("two-modes")
    out: dict[str, list[float] | int] = {}
    for name, budget in (("full", None), ("budgeted", BUDGET)):
        torch.manual_seed(0)
        flow = make_flow(CONFIG.flow_config(target.dim, conditional=False)).double()
        record = flow_bg.train(flow, target, CONFIG, budget=budget)
        out[name] = [h["loss"] for h in record["history"]]
        out[f"{name}_n_energy"] = record["history"][-1]["n_energy"]
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: joins the gloo group, trains, then trains the broken variant (the gradients
    of the other rank's shards never arrive); rank 0 saves both histories."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2)
    try:
        result = {"ok": histories()}
        distributed.sum_gradients = lambda parameters, w: None
        result["broken"] = histories()
        if rank == 0:
            torch.save(result, Path(out_dir) / "rank0.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_follow_the_single_process_loss_trajectory(tmp_path: Path) -> None:
    single = histories()
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    both = torch.load(tmp_path / "rank0.pt")
    ranks, broken = both["ok"], both["broken"]
    assert len(single["full"]) == CONFIG.n_steps and len(single["budgeted"]) == 4
    for name in ("full", "budgeted"):
        torch.testing.assert_close(torch.tensor(ranks[name]), torch.tensor(single[name]),
                                   rtol=1e-10, atol=1e-10)
        assert ranks[f"{name}_n_energy"] == single[f"{name}_n_energy"]  # global counts
    assert single["budgeted_n_energy"] == BUDGET
    departure = max(abs(a - b) for a, b in zip(broken["full"], single["full"], strict=True))
    assert departure > 1e-6


def test_shards_must_divide_between_ranks_and_the_batch() -> None:
    with pytest.raises(UsageError, match="multiple of the number of ranks"):
        distributed.shards(3, distributed.World(0, 2))
    target = targets.get("two-modes")
    flow = make_flow(CONFIG.flow_config(target.dim, conditional=False)).double()
    with pytest.raises(UsageError, match="multiple of n_shards"):
        flow_bg.train(flow, target, flow_bg.Config(batch_size=10, n_shards=4, n_steps=1))
