"""iDEM's budget-aware target evaluation, over the shared run skeleton (`boltzkit.samplers.run`:
counts, budget, checkpoints with the RNG state)."""

from __future__ import annotations

from torch import Tensor

from boltzkit.samplers.run import OutOfBudget, Run

CHECKPOINT = "idem_checkpoint.pt"

__all__ = ["CHECKPOINT", "CountingEvaluator", "OutOfBudget"]


class CountingEvaluator:
    """(log gamma, grad log gamma) of the run's target at x * scale, in the sampler's
    coordinates: y -> (log gamma(scale y), scale grad log gamma(scale y)), refusing (OutOfBudget,
    before evaluating) a call that would exceed the run's budget."""

    def __init__(self, run: Run, scale: float) -> None:
        self.run, self.scale = run, float(scale)

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.run.check(y.shape[0])
        if self.scale == 1.0:
            return self.run.target.log_prob_and_score(y)
        lp, score = self.run.target.log_prob_and_score(y * self.scale)
        return lp, score.mul_(self.scale)
