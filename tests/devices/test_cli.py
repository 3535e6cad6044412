"""`boltzkit sample --device` (and `reference --device`): the sampler's config and the target
follow it end to end; a device this machine lacks is a one-line usage error (exit 2) naming the
devices it has."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boltzkit.app import runner
from boltzkit.cli import app
from boltzkit.core.errors import UsageError
from boltzkit.samplers import mcmc
from boltzkit.targets import get

NO_CUDA = not torch.cuda.is_available()


def invoke(*args: str) -> object:
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "tpu", "meta"])
def test_a_missing_device_is_a_usage_error(device: str) -> None:
    if device.startswith("cuda") and not NO_CUDA and torch.cuda.device_count() > 1:
        pytest.skip("this machine has the device")
    res = invoke("sample", "gmm40", "--sampler", "mala", "--budget", "2000", "--device", device)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "available: cpu" in lines[0] and repr(device) in lines[0], lines
    assert "Traceback" not in res.output


def test_reference_refuses_a_missing_device() -> None:
    res = invoke("reference", "dw4", "--n-samples", "10", "--device", "tpu")
    assert res.exit_code == 2 and "available: cpu" in res.output, res.output


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


@pytest.mark.parametrize("device", ["cpu"] + ([] if NO_CUDA else ["cuda"]))
def test_sample_runs_on_the_device(tmp_path: Path, device: str) -> None:
    out = tmp_path / "run"
    res = invoke("sample", "two-modes", "--sampler", "smc", "--budget", "20000", "--n-samples",
                 "128", "--device", device, "--out", str(out), "--quiet", "--no-figures")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "config.json").read_text())["device"] == device
    assert (out / "samples.npz").exists()
