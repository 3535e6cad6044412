"""The run skeleton every sampler shares: evaluation counts since the start of a run, restored
counts on resume, and atomic checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from boltzkit.targets.base import Target

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path | None, state: dict[str, Any]) -> None:
    """Writes `state` (modules' and optimisers' state dicts, step, history) to run_dir."""
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    tmp.replace(run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path | None, resume: bool) -> dict[str, Any] | None:
    """The last checkpoint in run_dir when resuming, else None."""
    if not resume or run_dir is None or not (run_dir / CHECKPOINT).exists():
        return None
    return torch.load(run_dir / CHECKPOINT, weights_only=False)


def spent_since(target: Target, start: dict[str, int]) -> dict[str, int]:
    """Evaluations charged to `target` since the counts `start` (saved with a checkpoint)."""
    return {k: v - start[k] for k, v in target.counter.as_dict().items()}


def restore_counts(target: Target, spent: dict[str, int]) -> None:
    """Charges a resumed run with what the interrupted one had spent, so budgets hold."""
    for key, value in spent.items():
        setattr(target.counter, key, getattr(target.counter, key) + value)
