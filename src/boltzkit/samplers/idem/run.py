"""Run bookkeeping shared by iDEM's training loop: budget-aware target evaluation and
checkpoints that a killed run resumes from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit.targets.base import Target

_KEYS = ("n_energy", "n_grad", "n_nonfinite")


class OutOfBudget(Exception):
    """Raised before a target evaluation that would exceed the run's energy budget."""


class CountingEvaluator:
    """(log gamma, grad log gamma) of `target` at x * scale, in the sampler's coordinates:
    y -> (log gamma(scale y), scale grad log gamma(scale y)), refusing to exceed `budget`.

    `spent` is what this run has charged to the target's counter (including a resumed run's
    earlier part, which `restore` adds back to the counter).
    """

    def __init__(self, target: Target, scale: float, budget: int | None) -> None:
        self.target, self.scale, self.budget = target, float(scale), budget
        self._start = target.counter.as_dict()

    @property
    def spent(self) -> dict[str, int]:
        now = self.target.counter.as_dict()
        return {k: now[k] - self._start[k] for k in _KEYS}

    def check(self, n: int) -> None:
        """Raises OutOfBudget if spending n more energy evaluations would exceed the budget."""
        if self.budget is not None and self.spent["n_energy"] + n > self.budget:
            raise OutOfBudget(f"{n} more evaluations would exceed the budget of {self.budget}")

    def restore(self, spent: dict[str, int]) -> None:
        """Charges a resumed run's earlier evaluations to the target's counter."""
        for k in _KEYS:
            setattr(self.target.counter, k, getattr(self.target.counter, k) + int(spent[k]))

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor]:
        self.check(y.shape[0])
        if self.scale == 1.0:
            return self.target.log_prob_and_score(y)
        lp, score = self.target.log_prob_and_score(y * self.scale)
        return lp, score.mul_(self.scale)


class Checkpointer:
    """Writes `run_dir/idem_checkpoint.pt` atomically (temp file + rename) with the global RNG
    state added, and reads it back, restoring the RNG state."""

    name = "idem_checkpoint.pt"

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.path = Path(run_dir) / self.name

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {**state, "rng": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any] | None:
        """The saved state (None if there is no checkpoint); restores the global RNG."""
        if not self.path.exists():
            return None
        state = torch.load(self.path, weights_only=False)
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state
