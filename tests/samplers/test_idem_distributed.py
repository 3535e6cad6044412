"""Data-parallel iDEM (boltzkit.samplers.distributed, idem under torch.distributed): with 2 CPU
processes (gloo) and the same global batch (n_shards = 2), the loss and estimator-ESS
trajectories, the samples and the evaluation counts are the single-process ones in float64;
the budget is global (both ranks stop at the step a single process stops at); the broken
variant (no gradient all-reduce) departs from the single-process trajectory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from boltzkit import targets
from boltzkit.core.errors import UsageError
from boltzkit.samplers import distributed, idem

CONFIG = idem.Config(hidden=16, n_layers=2, n_outer=5, n_inner=1, batch_size=8, n_mc=4,
                     n_shards=2, n_generate=8, n_sde_steps=5, buffer_size=32, n_init=8,
                     checkpoint_every=0, sigma_min=0.01, sigma_max=2.0, dtype="float64",
                     ema_decay=None)
STEP = 8 * 4  # B x K evaluations of one inner step
BUDGET = 3 * STEP + 5  # global: three steps


def runs() -> dict[str, dict]:
    """Loss and ESS traces, samples and counts of a full and of a budgeted run (the same seed
    on every rank, as the CLI seeds every rank)."""
    out = {}
    for name, budget in (("full", None), ("budgeted", BUDGET)):
        torch.manual_seed(0)
        target = targets.get("two-modes")
        res = idem.sample(target, CONFIG, n_samples=6, budget=budget)
        out[name] = {"loss": res.diagnostics["loss_trace"],
                     "ess": res.diagnostics["estimator_ess_trace"], "samples": res.samples,
                     "counts": res.counts, "counter": target.counter.as_dict()}
    return out


def worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank: joins the gloo group, runs, then runs the broken variant (the other rank's
    gradients never arrive); each rank saves its results."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=2)
    try:
        result = {"ok": runs()}
        distributed.sum_gradients = lambda parameters, w: None
        result["broken"] = runs()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    single = runs()
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(single["full"]["loss"]) == CONFIG.n_outer
    assert len(single["budgeted"]["loss"]) == 3
    assert single["budgeted"]["counts"]["n_energy"] == 3 * STEP
    for both in ranks:
        for name in ("full", "budgeted"):
            ok, one = both["ok"][name], single[name]
            for key in ("loss", "ess"):
                torch.testing.assert_close(torch.tensor(ok[key]), torch.tensor(one[key]),
                                           rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(ok["samples"], one["samples"], rtol=1e-9, atol=1e-10)
            assert ok["counts"] == one["counts"] and ok["counter"] == one["counter"]
    broken = ranks[0]["broken"]["full"]["loss"]
    departure = max(abs(a - b) for a, b in zip(broken, single["full"]["loss"], strict=True))
    assert departure > 1e-6


def test_shards_must_divide_the_batch() -> None:
    with pytest.raises(UsageError, match="multiple of n_shards"):
        idem.sample(targets.get("two-modes"), idem.Config(
            **{**CONFIG.__dict__, "batch_size": 10, "n_shards": 4}), n_samples=2)
