"""`boltzkit experiment --device`: every experiment takes the device and hands it to the runs it
starts. Without a GPU the hand-over is checked with `meta` standing in for one: the device check
is lifted, the call that starts a run is replaced by a spy that records where the run was asked
to work and stops the experiment there. On CPU, the amc-gmm tasks (SMC along the diffusion path,
denoising score matching) and the TRADE training run under the `strict` guard; on CUDA the
quick presets run end to end."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.devices.guard import CUDA, strict

from boltzkit import experiments
from boltzkit.app import executors, runner
from boltzkit.core.errors import UsageError
from boltzkit.experiments import amc_gmm, budget_curves, idem_verdict, trade_exps
from boltzkit.samplers import idem, mcmc, trade
from boltzkit.targets import get
from boltzkit.targets.family import Family


class Stop(Exception):
    """Raised by a spy once it has seen the run it stands in for."""


def quiet(*args: Any, **kwargs: Any) -> None:
    return None


@pytest.fixture
def meta_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`meta` passes the device check (it stands in for a GPU this machine lacks)."""
    monkeypatch.setattr(runner, "check_device", lambda device: device)


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_takes_a_device(name: str) -> None:
    parameter = inspect.signature(experiments.get(name)).parameters.get("device")
    assert parameter is not None and parameter.default == "cpu"


def test_budget_curves_hands_the_device_to_every_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def spy(**kwargs: Any) -> None:
        seen.append(kwargs["sets"])
        raise UsageError("spy: not run")

    monkeypatch.setattr(runner, "run_sampler", spy)
    budget_curves.run(tmp_path, ["preset=quick"], quiet, device="meta")
    assert len(seen) == 4 and all(sets[-1] == "device=meta" for sets in seen), seen
    assert any("correction=ode" in sets for sets in seen)  # the method's own sets are kept


def test_idem_verdict_runs_idem_and_the_baselines_on_the_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meta_allowed: None) -> None:
    seen: dict[str, Any] = {}

    def spy(target: Any, config: Any, **kwargs: Any) -> None:
        seen.update(target=target.device, config=config.device)
        raise Stop

    monkeypatch.setattr(idem, "sample", spy)
    with pytest.raises(RuntimeError, match="the iDEM run failed"):  # the task's Stop, recorded
        idem_verdict.run(tmp_path, ["target=two-modes", "preset=gmm40-quick"], device="meta")
    assert seen == {"target": torch.device("meta"), "config": "meta"}
    monkeypatch.setattr(mcmc, "sample", spy)
    cfg = idem_verdict.VerdictConfig(target="two-modes")
    with pytest.raises(Stop):
        idem_verdict._baseline("mala", get("two-modes").to("meta"), cfg, {}, 100, quiet)
    assert seen == {"target": torch.device("meta"), "config": "meta"}


def test_amc_gmm_gives_every_task_the_device(tmp_path: Path) -> None:
    _, blocks = amc_gmm.configs_from(["preset=quick"])
    train, runs = amc_gmm.tasks(blocks, tmp_path, device="meta")
    assert train and runs
    assert {t.kwargs["device"] for t in train + runs} == {"meta"}
    on_cpu = amc_gmm.tasks(blocks, tmp_path)
    assert [t.key for t in on_cpu[0] + on_cpu[1]] == [t.key for t in train + runs]


FIRST_SWEEP = {
    "amc-gmm": ["preset=quick", "figures=false"],
    "budget-curves": ["preset=quick"],
    "idem-verdict": ["target=two-modes", "preset=gmm40-quick"],
    "trade-gmm": ["preset=quick", "n_eval=64"],
    "trade-multi-well": ["preset=quick"],
    "trade-phi4": ["preset=quick", "n_eval=64"],
    "trade-two-moons": ["preset=quick", "n_eval=64"],
}


@pytest.mark.parametrize("name", sorted(FIRST_SWEEP))
def test_the_device_reaches_every_executor_task_but_not_its_key(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meta_allowed: None) -> None:
    """The experiment's first sweep, seen by a spy: on `meta` every task carries the device as
    a keyword (so it reaches a worker process too), and the keys are those of the CPU sweep (a
    run finished on one device is not redone on another)."""
    seen: list[executors.Task] = []

    def spy(executor: Any, tasks: list[executors.Task], *args: Any) -> None:
        seen.extend(tasks)
        raise Stop

    for module in (executors, amc_gmm):
        monkeypatch.setattr(module, "sweep", spy)
    keys = {}
    for device in ("meta", "cpu"):
        seen.clear()
        with pytest.raises(Stop):
            experiments.get(name)(tmp_path, FIRST_SWEEP[name], quiet, device=device)
        assert seen and {t.kwargs["device"] for t in seen} == {device}
        keys[device] = [t.key for t in seen]
    assert keys["meta"] == keys["cpu"]


def test_amc_gmm_tasks_follow_the_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    """A perfect-model run, a training and a learned-model run; every tensor made without
    `device=` would land on meta here and fail (the mixture is built on the host first, as
    targets are, then moved)."""
    mixture = amc_gmm.make_mixture("two-modes", 2, 3.0)
    monkeypatch.setattr(amc_gmm, "make_mixture", lambda *args: mixture)
    cfg = {"n_particles": 64, "n_steps": 4, "train_steps": 3, "train_hidden": 8}
    coords = {"cfg": cfg, "mixture": "two-modes", "d": 2, "a": 3.0}
    path = str(tmp_path / "model.pt")
    with strict("cpu"):
        perfect = amc_gmm.run_model(**coords, model="perfect", mcmc=True, kernel="second-order",
                                    seed=0, model_path=None, device="cpu")
        trained = amc_gmm.train_model(**coords, model="learned-energy", path=path, device="cpu")
        learned = amc_gmm.run_model(**coords, model="learned-energy", mcmc=False, kernel="ddim",
                                    seed=0, model_path=path, device="cpu")
    for row in (perfect["row"], learned["row"]):
        assert 0 <= row["mode_weight_error_pp"] <= 100 and row["n_target"] > 0
    assert trained["rows"] and all(0 <= r["ess_fraction"] <= 1 for r in trained["rows"])


def test_trade_trains_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow is built (zuko cannot build on meta: the spy stops there) from the config's
    device and data moved there; the family's target and the data are moved, the caller's
    stay where they were."""
    seen: dict[str, Any] = {}

    def spy(config: Any, dim: int, data: Any, context_dim: int = 0) -> None:
        seen.update(config=config.device, data=data.device)
        raise Stop

    monkeypatch.setattr(trade, "build_flow", spy)
    settings = trade_exps.settings_from(["preset=quick", "methods=trade-grid"])
    target = get("tempered-gmm-2d")
    data = trade.Data(target.sample(64).float(), 1.0, torch.zeros(64, 2))
    problem = {"c0": 1.0, "c_min": 0.5, "c_max": 2.0}
    with pytest.raises(Stop):
        trade_exps.train_method(settings, "trade-grid", Family(target), data, problem,
                                device="meta")
    meta = torch.device("meta")
    assert seen == {"config": "meta", "data": meta}
    family, moved = trade_exps.on_device(Family(target), data, "meta")
    assert {family.target.device, moved.x.device, moved.c.device, moved.context.device} == {meta}
    assert family.target.counter is target.counter and target.device == torch.device("cpu")
    assert data.x.device == torch.device("cpu")


def test_trade_training_follows_the_device() -> None:
    settings = trade_exps.settings_from(["preset=quick", "methods=trade-grid", "n_steps=4",
                                         "warmup_steps=2"])
    target = get("tempered-gmm-2d")
    data = trade.Data(target.sample(64).float(), 1.0)
    problem = {"c0": 1.0, "c_min": 0.5, "c_max": 2.0}
    with strict("cpu"):
        flow, record = trade_exps.train_method(settings, "trade-grid", Family(target), data,
                                               problem, device="cpu")
    assert record["n_steps"] == 4 and next(flow.parameters()).device.type == "cpu"


QUICK_RUNS = {
    "amc-gmm": ["preset=quick", "figures=false"],
    "budget-curves": ["preset=quick"],
    "trade-gmm": ["preset=quick"],
    "trade-multi-well": ["preset=quick"],
    "trade-phi4": ["preset=quick"],
    "trade-two-moons": ["preset=quick"],
    "idem-verdict": ["target=gmm40", "preset=gmm40-quick", "n_samples=64", "max_ot=64",
                     "baselines=mala", "idem.n_outer=2", "idem.n_inner=2", "mcmc.n_chains=8"],
}


@pytest.mark.parametrize("name", sorted(QUICK_RUNS))
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_experiment_runs_on_cuda(name: str, device: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from boltzkit.cli import app

    args = [a for s in QUICK_RUNS[name] for a in ("--set", s)]
    res = CliRunner().invoke(app, ["experiment", name, "--out", str(tmp_path), "--device",
                                   device, "--quiet", *args])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "experiment.json").read_text())["device"] == device
    assert json.loads((tmp_path / "headline.json").read_text())


def test_an_experiment_without_a_device_runs_on_the_cpu_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meta_allowed: None) -> None:
    from typer.testing import CliRunner

    from boltzkit.cli import app

    def cpu_only(out_dir: Path, overrides: list[str], callback: Any) -> dict[str, Any]:
        return {"ran": 1}

    monkeypatch.setattr(experiments, "get", lambda name: cpu_only)
    res = CliRunner().invoke(app, ["experiment", "x", "--out", str(tmp_path / "a"),
                                   "--device", "meta"])
    assert res.exit_code == 2 and "runs on the CPU only" in res.output, res.output
    res = CliRunner().invoke(app, ["experiment", "x", "--out", str(tmp_path / "b"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "headline.json").read_text()) == {"ran": 1}
