"""The experiments' runs as executor tasks (boltzkit.app.executors): serial and local give the
same results table on a tiny preset of trade-multi-well, budget-curves and idem-verdict; a
re-run in the same directory skips every finished run and writes the same table; a run whose
worker dies is retried once and recorded, and the sweep finishes. (amc-gmm, the executors
themselves and Ray: tests/app/test_executors.py.)"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from boltzkit.app import executors

TRADE = ["preset=quick", "methods=trade-free,latent_nll", "n_steps=10", "n_data=200",
         "n_eval=200"]
CURVES = ["preset=quick", "methods=pt", "budgets=20000,30000", "n_samples=100"]
VERDICT = ["target=gmm40", "preset=gmm40-quick", "n_samples=64", "max_ot=64",
           "baselines=mala,pt", "idem.hidden=8", "idem.ema_decay=none", "idem.n_layers=1",
           "idem.n_outer=2", "idem.n_inner=2", "idem.batch_size=16", "idem.n_mc=8",
           "idem.n_generate=32", "idem.n_sde_steps=10", "idem.n_init=32", "mcmc.n_chains=8",
           "mcmc.n_temps=2"]
WALL = ("wall", "seconds", "train_s", "_s")  # wall-clock columns: the only ones that may differ


def experiment(name: str, *args: object, **kwargs: object) -> dict:
    """The experiment `name`, imported here: the pool's workers import this module for its
    tasks, so its top-level imports stay light."""
    from boltzkit import experiments

    return experiments.get(name)(*args, **kwargs)


def quiet(event: str, **info: object) -> None:
    """Ignores every event."""


def table(out: Path, name: str) -> list[dict[str, str]]:
    if name == "idem-verdict":
        record = json.loads((out / "verdict.json").read_text())
        return [{"method": m, **{k: str(v) for k, v in row.items()}}
                for m, row in record["table"].items()] + [{"counts": str(record["counts"])}]
    with open(out / "results.csv") as fh:
        return [{k: v for k, v in row.items() if not k.endswith(WALL)}
                for row in csv.DictReader(fh)]


@pytest.mark.parametrize("name, overrides", [("trade-multi-well", TRADE),
                                             ("budget-curves", CURVES),
                                             ("idem-verdict", VERDICT)])
def test_serial_and_local_give_the_same_table_and_a_rerun_skips(
        name: str, overrides: list[str], tmp_path: Path) -> None:
    if name == "idem-verdict":
        pytest.importorskip("ot")
    serial = experiment(name, tmp_path / "serial", overrides, quiet,
                        executor=executors.make("serial"))
    local = experiment(name, tmp_path / "local", overrides, quiet,
                       executor=executors.make("local", 2))
    assert serial["n_failed"] == local["n_failed"] == 0
    assert (serial["executor"], local["executor"]) == ("serial", "local")
    assert table(tmp_path / "local", name) == table(tmp_path / "serial", name)
    n_runs = len(list((tmp_path / "serial" / "runs").glob("*.json")))
    again = experiment(name, tmp_path / "serial", overrides, quiet)
    assert again["n_skipped"] == n_runs > 0
    assert table(tmp_path / "serial", name) == table(tmp_path / "local", name)


def die_once(marker: str, **kwargs: object) -> dict:
    """The budget-curves task, after killing its own process the first time it runs."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(3)
    from boltzkit.experiments import budget_curves

    return budget_curves.run_task(**kwargs)


def test_a_killed_worker_is_retried_once_and_the_sweep_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from boltzkit.experiments import budget_curves

    made, killed = budget_curves.tasks, []

    def dying(*args: object) -> list[executors.Task]:
        first, *rest = made(*args)
        killed.append(first.key)
        kwargs = {"marker": str(tmp_path / "marker"), **first.kwargs}
        return [executors.Task(first.key, die_once, kwargs), *rest]

    monkeypatch.setattr(budget_curves, "tasks", dying)
    headline = budget_curves.run(tmp_path / "out", CURVES, quiet,
                                 executor=executors.make("local", 2))
    assert headline["n_failed"] == 0
    record = json.loads((tmp_path / "out" / "runs" / f"{killed[0]}.json").read_text())
    assert record["attempts"] == 2 and "WorkerDied" in record["failures"][0]
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 2 and not any(r["failed"] for r in rows)
