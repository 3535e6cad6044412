"""Executors (boltzkit.app.executors) on the amc-gmm sweep and on tiny tasks: the same seeds give
the same results table whatever the executor; a killed worker is retried once and recorded; an
error is recorded and the sweep finishes; a re-run skips the runs already finished."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

import pytest

from boltzkit.app import executors
from boltzkit.core.errors import UsageError

QUICK = ["preset=quick", "models=perfect,learned-score", "figures=false"]


def amc_run(*args: object, **kwargs: object) -> dict:
    """`amc_gmm.run`, imported here: the pool's workers import this module for its tasks, so
    its top-level imports stay light."""
    from boltzkit.experiments import amc_gmm

    return amc_gmm.run(*args, **kwargs)


def quiet(event: str, **info: object) -> None:
    """A callback that ignores every event."""


def table(out: Path) -> list[dict[str, str]]:
    """results.csv without its wall-clock column (the only one that may differ)."""
    with open(out / "results.csv") as fh:
        return [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(fh)]


def square_or_die(x: int, marker: str | None = None) -> int:
    """x * x; kills its own process on the first call for which `marker` does not exist yet."""
    if marker is not None and not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(3)
    return x * x


def die(x: int) -> int:
    os._exit(3)


def square_or_raise(x: int) -> int:
    if x == 1:
        raise ValueError("x = 1 is not allowed")
    return x * x


def crash_tasks(tmp_path: Path, name: str) -> list[executors.Task]:
    marker = str(tmp_path / f"{name}.marker")
    return [executors.Task(f"t{i}", square_or_die, {"x": i, "marker": marker if i == 2 else None})
            for i in range(4)]


def check_crash_recorded(result: executors.SweepResult, out: Path) -> None:
    assert result.values == {"t0": 0, "t1": 1, "t2": 4, "t3": 9} and not result.failed
    record = json.loads((out / "t2.json").read_text())
    assert record["attempts"] == 2 and "WorkerDied" in record["failures"][0]


@pytest.fixture(scope="module")
def serial_table(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("serial")
    headline = amc_run(out, QUICK, quiet, executor=executors.make("serial"))
    assert headline["executor"] == "serial" and headline["n_failed"] == 0
    return table(out)


def test_serial_and_local_give_the_same_table(serial_table, tmp_path: Path) -> None:  # noqa: ANN001
    headline = amc_run(tmp_path, QUICK, quiet, executor=executors.make("local", 2))
    assert headline["executor"] == "local" and headline["n_runs"] == 11
    assert table(tmp_path) == serial_table


def test_a_killed_local_worker_is_retried_once_and_recorded(tmp_path: Path) -> None:
    result = executors.make("local", 2).map(crash_tasks(tmp_path, "local"), tmp_path / "runs")
    check_crash_recorded(result, tmp_path / "runs")


def test_a_worker_that_dies_twice_is_recorded_as_failed_and_the_sweep_finishes(
        tmp_path: Path) -> None:
    """The broken variant of the retry: a task that dies on every attempt."""
    tasks = crash_tasks(tmp_path, "local")
    tasks[2] = executors.Task("t2", die, {"x": 2})
    result = executors.make("local", 1).map(tasks, tmp_path / "runs")
    assert set(result.values) == {"t0", "t1", "t3"} and set(result.failed) == {"t2"}
    assert json.loads((tmp_path / "runs" / "t2.failed.json").read_text())["attempts"] == 2


def test_errors_are_recorded_not_retried_and_the_sweep_finishes(tmp_path: Path) -> None:
    tasks = [executors.Task(f"t{i}", square_or_raise, {"x": i}) for i in range(3)]
    result = executors.make("serial").map(tasks, tmp_path)
    assert result.values == {"t0": 0, "t2": 4} and result.attempts["t1"] == 1
    assert "x = 1 is not allowed" in result.failed["t1"]
    assert (tmp_path / "t1.failed.json").exists() and not (tmp_path / "t1.json").exists()


def test_a_rerun_skips_the_runs_already_finished(serial_table, tmp_path: Path) -> None:  # noqa: ANN001
    first = amc_run(tmp_path, QUICK, quiet)
    results = sorted((tmp_path / "runs").glob("*.json"))
    assert len(results) == first["n_runs"] + 1  # + the learned-score training
    results[0].unlink()
    seen: list[dict] = []
    again = amc_run(tmp_path, QUICK, lambda event, **info: seen.append(info))
    assert again["n_skipped"] == len(results) - 1
    assert table(tmp_path) == serial_table
    changed = amc_run(tmp_path, QUICK + ["n_particles=100", "kernels=exact"], quiet)
    assert changed["n_skipped"] == 0 and changed["n_runs"] == 2  # other settings, other keys


def test_bad_executor_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="valid executors: serial, local, ray"):
        executors.make("dask")
    with pytest.raises(UsageError, match="with --executor ray"):
        executors.make("local", 2, address="auto")
    with pytest.raises(ValueError, match="unique"):
        executors.Serial().map([executors.Task("a", abs, {"x": 1})] * 2)


def serial_only(out_dir: Path, overrides: list[str], callback: object) -> dict:
    """An experiment whose run takes no executor."""
    return {}


def test_cli_says_which_experiments_take_an_executor(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner  # the workers import this module: keep its imports light

    from boltzkit import experiments
    from boltzkit.cli import app

    every = experiments.names()
    monkeypatch.setattr(experiments, "get", lambda name: serial_only if name == "serial-only"
                        else experiments.REGISTRY.get(name))
    monkeypatch.setattr(experiments, "names", lambda: [*every, "serial-only"])
    result = CliRunner().invoke(app, ["experiment", "serial-only", "--out", str(tmp_path),
                                      "--executor", "local"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "takes no --executor" in result.output
    able = result.output.split("experiments that do: ")[1].split(")")[0].split(", ")
    # every registered experiment runs its runs on an executor, but trade-aldp (serial only)
    assert able == [n for n in every if n != "trade-aldp"]


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_serial_and_ray_give_the_same_table_and_ray_retries_a_dead_worker(
        serial_table, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import sys

    import ray

    # Ray's workers import this test module (its tasks) and boltzkit from the driver's path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in sys.path if p))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        ray_executor = executors.make("ray", 2)
        headline = amc_run(tmp_path / "amc", QUICK, quiet, executor=ray_executor)
        assert headline["executor"] == "ray" and table(tmp_path / "amc") == serial_table
        result = ray_executor.map(crash_tasks(tmp_path, "ray"), tmp_path / "runs")
        check_crash_recorded(result, tmp_path / "runs")
    finally:
        ray.shutdown()
