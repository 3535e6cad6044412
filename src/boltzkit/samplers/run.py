"""The run skeleton every sampler shares: evaluation counts since the start of a run, the budget,
atomic checkpoints with the RNG state, resume and progress events.

A sampler's loop reads

    run = Run(target, budget=budget, reserve=n_samples, run_dir=run_dir,
              checkpoint_every=config.checkpoint_every, callback=callback)
    state = run.load(resume)                  # None, or the saved state (counts, RNG restored)
    run.start(total=n_steps, unit="step", description="...")
    while step < n_steps:
        if run.stop_before(cost_of_next_step):  # sets run.stopped_by_budget
            break
        ...one step...
        run.advance(1, loss=loss)
        if run.due(step):
            run.save({...})
    run.save({...})                           # the final state, finished or stopped
    run.end()

Counts: `run.spent` is what this run has charged to the target's `EvalCounter` since `Run` was
made; a resumed run first charges the counter with what the interrupted one had spent
(`restore_counts`), so `spent` covers the whole run, budgets hold across a kill, and the change
of the target's counter equals the counts a sampler reports. The budget is in energy
evaluations (configurations); `reserve` of them are kept for work after the loop (e.g. the
importance weights of the returned samples).

Checkpoints are written to a temporary file and renamed over the last one (`os.replace`), so a
kill never leaves a torn file; each holds the global torch (and CUDA), numpy and Python RNG
states, which `load` restores: a resumed run draws the same random numbers as an uninterrupted
one. `checkpoint_every = 0` (or `run_dir = None`) writes no checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from boltzkit.core.errors import UsageError
from boltzkit.core.files import atomic_torch_save
from boltzkit.samplers import Callback, null_callback
from boltzkit.targets.base import Target

CHECKPOINT = "checkpoint.pt"


class OutOfBudget(Exception):
    """Raised before a target evaluation that would exceed the run's budget (`Run.check`)."""


# ---- counts -----------------------------------------------------------------------------
def spent_since(target: Target, start: dict[str, int]) -> dict[str, int]:
    """Evaluations charged to `target` since its counter read `start`: now - start, per key."""
    return {k: v - start[k] for k, v in target.counter.as_dict().items()}


def restore_counts(target: Target, spent: dict[str, int]) -> None:
    """Charges a resumed run with what the interrupted one had spent, so budgets hold."""
    for key, value in spent.items():
        setattr(target.counter, key, getattr(target.counter, key) + int(value))


def require(budget: int | None, cost: int, what: str) -> None:
    """Raises ValueError (a usage error at the CLI) if `budget` cannot pay even the `cost`
    energy evaluations of `what`."""
    if budget is not None and budget < cost:
        raise UsageError(f"budget {budget} does not pay for {what} ({cost} energy evaluations)")


def require_weights(budget: int | None, n_samples: int) -> None:
    """The importance weights of the returned samples cost n_samples evaluations: a smaller
    budget is an error (`require`)."""
    require(budget, n_samples,
            f"the weights of the returned samples: it is smaller than n_samples {n_samples}")


# ---- random state and files -------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global random states: torch (CPU and every CUDA device), numpy, Python."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores the global random states saved by `rng_state`."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Writes `state` to `path` atomically (`boltzkit.core.files.atomic_torch_save`: a temporary
    file renamed over the old checkpoint; a failing disk is an `EnvironmentProblem` naming the
    path and the cause, and leaves the previous checkpoint intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The state saved at `path`, or None if there is none."""
    if not path.exists():
        return None
    return torch.load(path, weights_only=False)


# ---- the run ----------------------------------------------------------------------------
class Run:
    """Bookkeeping of one sampler run: counts, budget, checkpoints, progress events.

    Args:
        target: the target whose `EvalCounter` the run is charged to.
        budget: the most energy evaluations the whole run (a resumed one included) may spend;
            None for no limit.
        reserve: evaluations kept back from the loop for work after it.
        run_dir: where checkpoints go (None: nowhere).
        checkpoint_every: steps between checkpoints (`due`); 0 writes none.
        checkpoint_name: the checkpoint's file name in run_dir.
        callback: the progress hook (`boltzkit.samplers.Callback`).
    """

    def __init__(self, target: Target, *, budget: int | None = None, reserve: int = 0,
                 run_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 0,
                 checkpoint_name: str = CHECKPOINT, callback: Callback = null_callback) -> None:
        self.target, self.budget, self.reserve = target, budget, int(reserve)
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.checkpoint_every, self.checkpoint_name = int(checkpoint_every), checkpoint_name
        self.callback = callback
        self.stopped_by_budget = False
        self._start = target.counter.as_dict()
        self._done, self._total, self._unit = 0, 0, "step"
        self.interrupted: int | None = None
        self._caught: dict[int, Any] = {}

    # ---- counts and budget ----------------------------------------------------------------
    @property
    def spent(self) -> dict[str, int]:
        """Evaluations of this run (a resumed run's earlier part included), per counter key."""
        return spent_since(self.target, self._start)

    @property
    def remaining(self) -> int | None:
        """Energy evaluations the loop may still spend (budget - reserve - spent), or None."""
        if self.budget is None:
            return None
        return self.budget - self.reserve - self.spent["n_energy"]

    def affords(self, cost: int) -> bool:
        """Whether `cost` more energy evaluations stay within the budget."""
        remaining = self.remaining
        return remaining is None or cost <= remaining

    def stop_before(self, cost: int) -> bool:
        """True (and `stopped_by_budget` set) if a step of `cost` evaluations would overspend."""
        if self.affords(cost):
            return False
        self.stopped_by_budget = True
        return True

    def check(self, cost: int) -> None:
        """Raises OutOfBudget (and sets `stopped_by_budget`) if `cost` more would overspend:
        for evaluations deep inside a step, where returning is awkward."""
        if self.stop_before(cost):
            raise OutOfBudget(f"{cost} more evaluations would exceed the budget of {self.budget}")

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        """Where the checkpoint goes, or None when the run writes none."""
        if self.run_dir is None or self.checkpoint_every <= 0:
            return None
        return self.run_dir / self.checkpoint_name

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after step `step` (1-based): every checkpoint_every."""
        return self.checkpoint_path is not None and step % self.checkpoint_every == 0

    def save(self, state: dict[str, Any]) -> None:
        """Writes `state` plus the counts spent so far and the RNG states (no-op when the run
        writes no checkpoint)."""
        path = self.checkpoint_path
        if path is not None:
            save_checkpoint(path, {**state, "spent": self.spent, "rng": rng_state()})

    def load(self, resume: bool) -> dict[str, Any] | None:
        """When resuming, the last checkpoint (None if there is none yet), after charging its
        counts to the target and restoring the RNG states; None when not resuming."""
        if not resume:
            return None
        if self.run_dir is None:
            raise UsageError("resume=True needs a run_dir")
        state = load_checkpoint(self.run_dir / self.checkpoint_name)
        if state is None:
            return None
        restore_counts(self.target, state["spent"])
        set_rng_state(state["rng"])
        return state

    @contextlib.contextmanager
    def deferred_interrupts(self) -> Iterator[None]:
        """Within the block a first Ctrl-C or SIGTERM only sets `interrupted`; the loop calls
        `stop_for_interrupt` between steps, so the last checkpoint holds a state the run
        really reached (an interrupt inside an optimiser step would save half an update). A
        second signal acts at once. Outside the main thread nothing is deferred."""
        caught: dict[int, Any] = {}

        def defer(signum: int, frame: Any) -> None:
            if self.interrupted is not None:  # the second one: no more waiting
                self._reraise(signum, caught)
            self.interrupted = signum

        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                caught[signum] = signal.signal(signum, defer)
        except ValueError:  # not the main thread
            caught.clear()
        self._caught = caught
        try:
            yield
        finally:
            for signum, previous in caught.items():
                signal.signal(signum, previous)

    def stop_for_interrupt(self, state: dict[str, Any]) -> None:
        """Called between steps once `interrupted` is set: writes the checkpoint `state`, logs
        where the run stopped and acts on the signal as it would have (KeyboardInterrupt for
        Ctrl-C, the previous SIGTERM handler)."""
        assert self.interrupted is not None
        if self.checkpoint_path is not None:
            self.save(state)
            self.log(f"interrupted after {self.position}: checkpoint written")
        self._reraise(self.interrupted, self._caught)

    @staticmethod
    def _reraise(signum: int, caught: dict[int, Any]) -> None:
        for restored, previous in caught.items():
            signal.signal(restored, previous)
        previous = caught.get(signum)
        if signum == signal.SIGINT or not callable(previous):
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)
        previous(signum, None)

    # ---- progress events ------------------------------------------------------------------
    @property
    def position(self) -> str:
        """e.g. '588 of 2000 steps'."""
        return f"{self._done:,} of {self._total:,} {self._unit}s"

    def start(self, total: int, unit: str, description: str) -> None:
        """The "start" event."""
        self._done, self._total, self._unit = 0, int(total), unit
        self.callback("start", total=total, unit=unit, description=description)

    def advance(self, n: int = 1, **info: Any) -> None:
        """An "advance" event of n units, with scalars to show."""
        self._done += int(n)
        self.callback("advance", n=n, **info)

    def log(self, message: str) -> None:
        """A "log" event."""
        self.callback("log", message=message)

    def end(self) -> None:
        """The "end" event; a run the budget stopped says where."""
        if self.stopped_by_budget:
            self.log(f"stopped by the budget after {self.position} "
                     f"({self.spent['n_energy']:,} of {self.budget:,} energy evaluations)")
        self.callback("end")
