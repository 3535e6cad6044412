"""The shared run skeleton (`boltzkit.samplers.run`): counts since the start, the budget with a
reserve, atomic checkpoints that restore counts and every RNG, checkpoint_every = 0, events."""

import random

import numpy as np
import pytest
import torch

from boltzkit.samplers import run as skeleton
from boltzkit.targets.base import Target


class Quadratic(Target):
    def _log_prob(self, x):
        return -0.5 * x.square().sum(-1)


def draws() -> tuple[float, float, float]:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def test_counts_are_since_the_start_and_the_budget_keeps_its_reserve():
    target = Quadratic(2)
    target.log_prob(torch.zeros(7, 2))  # spent before the run: not its business
    run = skeleton.Run(target, budget=30, reserve=10)
    target.log_prob_and_score(torch.zeros(12, 2))
    assert run.spent == {"n_energy": 12, "n_grad": 12, "n_nonfinite": 0}
    assert run.remaining == 8 and run.affords(8) and not run.stopped_by_budget
    assert run.stop_before(9) and run.stopped_by_budget
    with pytest.raises(skeleton.OutOfBudget):
        run.check(9)
    assert not skeleton.Run(target).stop_before(10**12), "no budget, no limit"


def test_require_names_the_cost():
    with pytest.raises(ValueError, match=r"budget 9 does not pay for .*n_samples 10"):
        skeleton.require_weights(9, 10)
    skeleton.require_weights(None, 10)
    skeleton.require(10, 10, "anything")


def test_checkpoint_round_trip_restores_counts_and_every_rng(tmp_path):
    target = Quadratic(2)
    run = skeleton.Run(target, run_dir=tmp_path, checkpoint_every=2)
    target.log_prob(torch.zeros(5, 2))
    assert not run.due(1) and run.due(2)
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    run.save({"step": 2})
    expected = draws()
    assert [p.name for p in tmp_path.iterdir()] == [skeleton.CHECKPOINT], "no temporary left"
    torch.manual_seed(4)
    np.random.seed(4)
    random.seed(4)
    fresh = Quadratic(2)
    state = skeleton.Run(fresh, run_dir=tmp_path).load(resume=True)
    assert state["step"] == 2 and state["spent"]["n_energy"] == 5
    assert fresh.counter.n_energy == 5, "the resumed run is charged the earlier evaluations"
    assert draws() == expected
    assert skeleton.Run(fresh, run_dir=tmp_path).load(resume=False) is None
    assert skeleton.Run(fresh, run_dir=tmp_path / "empty").load(resume=True) is None
    with pytest.raises(ValueError, match="needs a run_dir"):
        skeleton.Run(fresh).load(resume=True)


def test_checkpoint_every_zero_writes_nothing(tmp_path):
    run = skeleton.Run(Quadratic(2), run_dir=tmp_path, checkpoint_every=0)
    assert not run.due(1) and run.checkpoint_path is None
    run.save({"step": 1})
    assert not any(tmp_path.iterdir())


def test_progress_events_reach_the_callback():
    events = []
    run = skeleton.Run(Quadratic(2), callback=lambda event, **info: events.append((event, info)))
    run.start(total=3, unit="step", description="d")
    run.advance(2, loss=0.5)
    run.log("m")
    run.end()
    assert events == [("start", {"total": 3, "unit": "step", "description": "d"}),
                      ("advance", {"n": 2, "loss": 0.5}), ("log", {"message": "m"}),
                      ("end", {})]
