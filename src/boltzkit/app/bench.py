"""`boltzkit bench`: a leaderboard of samplers x targets at stated energy budgets.

Each cell is one `runner.run_sampler` run in its own run directory (`OUT/cells/TARGET-SAMPLER`,
with its metrics.jsonl stream), a task for `boltzkit.app.executors` (serial, local or ray; a
re-run skips the cells already finished). The leaderboard shows per cell the target's headline
metrics with their noise floors (the value a perfect sampler would get, from two disjoint
reference sets), and is written with every cell's run into `OUT/report.html` and
`OUT/report.md` (`boltzkit.app.report`); `OUT/bench.json` records the lot.

Budgets are target energy evaluations (configurations), the same for every sampler of a
target (`BUDGETS`; `--budget` replaces them all). `quick` is the smoke test: two targets with
exact samplers, two MCMC samplers, tiny budgets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from boltzkit import targets
from boltzkit.app import executors, report, rundir, runner, tracking
from boltzkit.core.callback import Callback, null_callback
from boltzkit.core.errors import UsageError

TARGETS = ("gmm40", "many-well-32", "dw4", "lj13")
SAMPLERS = ("mala", "pt", "smc", "idem")
BUDGETS: dict[str, int] = {"gmm40": 2_000_000, "many-well-32": 2_000_000, "dw4": 1_000_000,
                           "lj13": 2_000_000}
HEADLINE: dict[str, tuple[str, ...]] = {
    "gmm40": ("energy_w2", "mode_weight_error_max_pp"),
    "many-well-32": ("energy_w2", "x_w2"),
    "dw4": ("energy_w2", "distance_w2"),
    "lj13": ("energy_w2", "distance_w2"),
    "aldp-fab": ("ramachandran_tv_30x30", "energy_w2"),
}
DEFAULT_HEADLINE = ("energy_w2", "x_w2")


class Plan(NamedTuple):
    """What a bench runs: targets, samplers, budget per target, seed, samples per run."""

    targets: tuple[str, ...]
    samplers: tuple[str, ...]
    budgets: dict[str, int]
    seed: int = 0
    n_samples: int = 1000
    device: str = "cpu"  # every sampler's config `device` (`--device`)


QUICK = Plan(("gmm40", "many-well-32"), ("mala", "rwmh"),
             {"gmm40": 3000, "many-well-32": 3000}, n_samples=200)


def plan(quick: bool = False, target_names: Sequence[str] | None = None,
         sampler_names: Sequence[str] | None = None, budget: int | None = None,
         seed: int = 0, device: str = "cpu") -> Plan:
    """The bench to run: `QUICK` or the full one, with names, budget and seed replaced; every
    name is checked here (UsageError listing the valid ones)."""
    base = QUICK if quick else Plan(_with_aldp(TARGETS), SAMPLERS, dict(BUDGETS))
    names = tuple(target_names or base.targets)
    for name in names:
        targets.factory(name)
    for name in sampler_names or base.samplers:
        runner.sampler_module(name)
    if budget is not None and budget < 1:
        raise UsageError(f"--budget must be a positive number of energy evaluations, got "
                         f"{budget}")
    budgets = {t: budget or base.budgets.get(t) or max(base.budgets.values()) for t in names}
    runner.check_device(device)
    return Plan(names, tuple(sampler_names or base.samplers), budgets, seed, base.n_samples,
                device)


def _with_aldp(names: tuple[str, ...]) -> tuple[str, ...]:
    # aldp-fab: the unconstrained alanine dipeptide of the FAB / ASBS tables
    return names + ("aldp-fab",) if "aldp-fab" in targets.names() else names


def run_cell(target: str, sampler: str, budget: int, seed: int, n_samples: int,
             run_dir: str, device: str = "cpu") -> dict[str, Any]:
    """Task: one sampler run into `run_dir` (started afresh: a directory left by a dead attempt
    is removed), its events streamed to metrics.jsonl; returns its metrics and wall time."""
    path = executors.fresh_dir(run_dir)
    with tracking.track(null_callback, path) as callback:
        outcome = runner.run_sampler(target_name=target, sampler=sampler, budget=budget,
                                     seed=seed, out=path, n_samples=n_samples,
                                     sets=[f"device={device}"], callback=callback,
                                     figures=False,
                                     command=["boltzkit", "sample", target, "--sampler",
                                              sampler, "--budget", str(budget), "--seed",
                                              str(seed), "--n-samples", str(n_samples),
                                              "--out", run_dir, "--no-figures", "--device",
                                              device])
    return {"metrics": outcome.metrics, "wall_s": outcome.wall_s}


def tasks(bench: Plan, out: Path) -> list[executors.Task]:
    """One task per (target, sampler)."""
    out_tasks = []
    for target in bench.targets:
        for sampler in bench.samplers:
            kwargs = {"target": target, "sampler": sampler, "budget": bench.budgets[target],
                      "seed": bench.seed, "n_samples": bench.n_samples, "device": bench.device}
            key = executors.task_key(f"{target}-{sampler}", kwargs)
            out_tasks.append(executors.Task(key, run_cell, {
                **kwargs, "run_dir": str(out / "cells" / f"{target}-{sampler}")}))
    return out_tasks


def leaderboard(bench: Plan, cells: dict[tuple[str, str], dict[str, Any] | None]
                ) -> report.Table:
    """Targets x samplers; each cell the target's headline metrics (with noise floors) and the
    wall time, or "failed"."""
    rows = []
    for target in bench.targets:
        row = [f"{target} (budget {bench.budgets[target]:,})"]
        for sampler in bench.samplers:
            value = cells.get((target, sampler))
            if value is None:
                row.append("failed")
                continue
            metrics = value["metrics"]
            parts = [f"{k} {report.cell(metrics, k)}"
                     for k in HEADLINE.get(target, DEFAULT_HEADLINE) if k in metrics]
            row.append("; ".join(parts + [f"{value['wall_s']:.1f} s"]))
        rows.append(row)
    return report.Table("Leaderboard: headline metrics, noise floor = mean ± std between "
                        "disjoint reference sets",
                        ["target"] + list(bench.samplers), rows)


def run(out: str | Path, bench: Plan, executor: executors.Executor | None = None,
        callback: Callback = null_callback, command: Sequence[str] = ()) -> dict[str, Any]:
    """Runs every cell, writes bench.json, report.html and report.md; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    executor = executor or executors.Serial()
    all_tasks = tasks(bench, out)
    result = executor.map(all_tasks, out / "runs", callback)
    cells, finished = {}, []
    for task in all_tasks:
        value = result.values.get(task.key)
        cells[(task.kwargs["target"], task.kwargs["sampler"])] = value
        if value is not None:
            finished.append(str(Path(task.kwargs["run_dir"]).relative_to(out)))
    board = leaderboard(bench, cells)
    rundir.write_json(out / "bench.json", {
        "plan": bench._asdict(), "executor": executor.name, "command": list(command),
        "environment": rundir.environment(), "cells": finished,
        "failed": sorted(result.failed), "leaderboard": dataclasses.asdict(board)})
    html_path, md_path = report.write(out / "report.html", [out], title="boltzkit bench")
    return {"n_cells": len(all_tasks), "n_finished": len(finished),
            "n_failed": len(result.failed), "n_skipped": len(result.skipped),
            "report": str(html_path), "markdown": str(md_path)}
