"""User errors are one line (exit 2); a bug inside a sampler is not passed off as one: it keeps
its traceback, which the run's log records."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from boltzkit import samplers
from boltzkit.cli import app
from boltzkit.core.errors import UsageError


@dataclass(frozen=True)
class Config:
    kind: str = "bug"


def sample(target, config, *, n_samples, budget, callback, run_dir=None, resume=False):
    if config.kind == "usage":
        raise UsageError("budget 10 does not pay for one step (needs 32)")
    raise ValueError("an internal shape mismatch")  # a bug, though a ValueError


@pytest.fixture
def broken(monkeypatch):
    mod = types.ModuleType("boltzkit_test_broken_sampler")
    mod.Config, mod.sample = Config, sample
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(samplers.REGISTRY._entries, "broken", mod.__name__)


def test_a_bug_keeps_its_traceback_in_the_log(tmp_path, broken) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["sample", "gmm40", "--sampler", "broken", "--budget",
                                      "100", "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)
    log = (out / "log.txt").read_text()
    assert "unexpected error" in log and "Traceback" in log
    assert "an internal shape mismatch" in log


def test_a_usage_error_is_one_line_with_exit_2(tmp_path, broken) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["sample", "gmm40", "--sampler", "broken", "--budget",
                                      "100", "--out", str(out), "--quiet",
                                      "--set", "kind=usage"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "does not pay" in result.output
    assert "unexpected error" not in (out / "log.txt").read_text()


def test_summary_dict_shows_one_element_tensors_and_arrays_as_numbers() -> None:
    import numpy as np
    import torch

    from boltzkit.app.runner import summary_dict

    flat = summary_dict({"t": torch.tensor([2.5]), "a": np.array([[3.0]]),
                         "big": torch.zeros(2, 3)})
    # Tensor.size is a method: the old check never saw a one-element tensor as a scalar.
    assert flat == {"t": 2.5, "a": 3.0, "big": "array (2, 3)"}
