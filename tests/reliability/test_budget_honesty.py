"""Budgets and progress that tell the truth: asking for more samples than a budget buys is an
error saying how many it buys; a budget that pays for nothing is an error; a run the budget
stopped says where, and its progress stays where it got to; Ctrl-C leaves a last checkpoint."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from boltzkit import targets
from boltzkit.samplers import flow, mcmc, trade
from boltzkit.samplers.run import load_checkpoint


def test_more_samples_than_the_budget_buys_is_an_error(bk, tmp_path) -> None:
    result = bk.cli("sample", "gmm40", "--sampler", "mala", "--budget", 2000, "--n-samples",
                    100_000, "--out", tmp_path / "r", "--quiet", "--no-figures")
    bk.error(result, 2, "buys at most", "--n-samples")


def test_an_idem_budget_that_pays_for_no_training_step_is_an_error(bk, tmp_path) -> None:
    result = bk.cli("sample", "gmm40", "--sampler", "idem", "--budget", 10, "--out",
                    tmp_path / "r", "--quiet", "--no-figures")
    bk.error(result, 2, "one inner training step")


def test_a_run_stopped_by_its_budget_says_where_and_its_bar_is_not_filled() -> None:
    events: list[tuple[str, dict]] = []
    target = targets.get("two-modes", d=2)
    config = trade.Config(kind="affine", n_layers=2, hidden=8, depth=1, boundary="reverse_kl",
                          n_steps=2000, warmup_steps=2, batch_size=16, n_conditions=2,
                          n_per_condition=8, rho="mse", checkpoint_every=0)
    res = trade.sample(target, config, n_samples=64, budget=5000,
                       callback=lambda e, **i: events.append((e, i)))
    assert res.diagnostics["stopped_by_budget"] and res.diagnostics["n_steps"] < 2000
    advanced = sum(i.get("n", 1) for e, i in events if e == "advance")
    assert advanced == res.diagnostics["n_steps"]  # the bar's position, not its total
    logs = [i["message"] for e, i in events if e == "log"]
    assert any(f"stopped by the budget after {advanced:,} of 2,000 steps" in m for m in logs)


def interrupt_at(k: int, signum: int):
    """A progress callback that sends this process `signum` at its k-th advance: a real signal,
    delivered between two steps of the run."""
    seen = [0]

    def callback(event: str, **info) -> None:
        if event == "advance":
            seen[0] += 1
            if seen[0] == k:
                os.kill(os.getpid(), signum)

    return callback


def test_ctrl_c_leaves_a_checkpoint_at_the_step_reached_and_resume_continues(tmp_path) -> None:
    target = targets.get("gmm40")
    # no periodic checkpoint falls due, so the one found was written for the interrupt
    config = mcmc.MALAConfig(n_chains=16, step_size=0.5, checkpoint_every=10**6)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        mcmc.sample(target, config, n_samples=64, budget=20_000, run_dir=tmp_path,
                    callback=interrupt_at(3, signal.SIGINT))
    state = load_checkpoint(tmp_path / mcmc.CHECKPOINT)
    assert state is not None and state["step"] == state["record"]["t"] > 0
    resumed = mcmc.sample(target, config, n_samples=64, budget=20_000, run_dir=tmp_path,
                          resume=True)
    assert resumed.counts["n_energy"] <= 20_000 and resumed.samples.shape == (64, 2)


def test_an_interrupted_flow_saves_a_whole_step_not_half_an_update(tmp_path) -> None:
    target = targets.get("two-modes", d=2)
    config = flow.Config(kind="affine", n_layers=2, hidden=8, depth=1, n_steps=50,
                         batch_size=16, checkpoint_every=10**6)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        flow.sample(target, config, n_samples=64, budget=None, run_dir=tmp_path,
                    callback=interrupt_at(5, signal.SIGINT))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state is not None and state["step"] == 5  # the 5th step completed, then saved
