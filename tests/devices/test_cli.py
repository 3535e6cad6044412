"""`--device` on sample, reference, bench and experiment: the sampler's config and the target
follow it end to end; a device this machine lacks (cuda without CUDA, cuda:N beyond the count)
is a one-line usage error (exit 2) naming the devices it has, before anything is written."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from tests.devices.guard import DEVICES
from typer.testing import CliRunner

from boltzkit.app import runner
from boltzkit.cli import app
from boltzkit.core.errors import UsageError
from boltzkit.samplers import mcmc
from boltzkit.targets import get

NO_CUDA = not torch.cuda.is_available()


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


N_CUDA = torch.cuda.device_count() if torch.cuda.is_available() else 0
# "cuda" where this machine has none, "cuda:N" one beyond those it has, and non-devices.
ABSENT = [pytest.param("cuda", marks=pytest.mark.skipif(N_CUDA > 0, reason="CUDA is here")),
          f"cuda:{N_CUDA}", "tpu", "meta"]
OUT = ["--out", "OUT"]  # replaced by a fresh directory
COMMANDS = {
    "sample": ["sample", "gmm40", "--sampler", "mala", "--budget", "2000", *OUT],
    "reference": ["reference", "dw4", "--n-samples", "10"],  # writes to the cache only
    "bench": ["bench", "--quick", *OUT],
    "experiment": ["experiment", "amc-gmm", "--set", "preset=quick", *OUT],
}


@pytest.mark.parametrize("device", ABSENT)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_device_is_a_usage_error(command: str, device: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = invoke(*[str(out) if a == "OUT" else a for a in COMMANDS[command]], "--device", device)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: --device: "), lines
    assert "available: cpu" in lines[0] and repr(device) in lines[0], lines
    assert not out.exists()  # refused before anything was written


def test_check_device_names_the_devices() -> None:
    assert runner.check_device("cpu") == "cpu"
    assert runner.available_devices()[0] == "cpu"
    if NO_CUDA:
        with pytest.raises(UsageError, match="available: cpu$"):
            runner.check_device("cuda")


def test_the_runner_moves_the_target_to_the_config_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    target = get("two-modes")
    config = dataclasses.replace(mcmc.Config(sampler="mala"), device="cpu")
    assert runner.on_config_device(target, config) is target  # already there
    monkeypatch.setattr(runner, "check_device", lambda d: d)  # meta stands in for a GPU
    moved = runner.on_config_device(target, dataclasses.replace(config, device="meta"))
    assert moved.device == torch.device("meta") and moved.means.device.type == "meta"
    assert moved.counter is target.counter and target.means.device.type == "cpu"


@pytest.mark.parametrize("device", DEVICES)
def test_sample_runs_on_the_device(tmp_path: Path, device: str) -> None:
    out = tmp_path / "run"
    res = invoke("sample", "two-modes", "--sampler", "smc", "--budget", "20000", "--n-samples",
                 "128", "--device", device, "--out", str(out), "--quiet", "--no-figures")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["device"] == device
    assert (out / "samples.npz").exists()
