"""`boltzkit experiment budget-curves`: each sampler at a ladder of energy budgets, every
headline metric against the budget with the noise floor as a band, training evaluations
included (every run is a `boltzkit sample` run under that budget).

Methods: "pt", "mala" (MCMC baselines with the target's preset), "idem" (the reverse SDE of
the trained network), "idem-ode" (iDEM made exact: probability-flow samples with importance
weights, `--set correction=ode`), "idem-smc" (the energy-parametrised iDEM corrected by SMC
along its own noised levels, `--set correction=smc --set parametrisation=energy`), "flow" (a
flow Boltzmann generator, reverse KL, reweighted).
The verdict names, per target and metric, the smallest budget at which a neural method beats PT
by more than twice the noise floor's spread, or says that none does in the range measured.
Flow-assisted PT (`boltzkit.mc.independence`) has no sampler entry yet, so it is not a method.

Every run is a task for `boltzkit.app.executors` (`--executor serial|local|ray`); its metrics
are kept in `out_dir/runs/KEY.json`, and a re-run in the same directory skips what is there.

Settings (`--set key=value`): preset ("quick": gmm40 at 3e4 and 1e5 evaluations, for tests;
"default": gmm40 and dw4 at 1e5 .. 1e7), targets, methods, budgets, seed, n_samples, figures.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boltzkit.app import executors, runner
from boltzkit.core import config as configs
from boltzkit.core.callback import Callback
from boltzkit.core.errors import UnknownName

NEURAL = ("idem", "idem-ode", "idem-smc", "flow")
# method -> (sampler, extra `--set` assignments, preset given a target); None: the default
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pt": ("pt", ()), "mala": ("mala", ()), "idem": ("idem", ()),
    "idem-ode": ("idem", ("correction=ode",)), "flow": ("flow", ("objective=reverse",)),
    "idem-smc": ("idem", ("correction=smc", "parametrisation=energy")),
}
HEADLINE: dict[str, tuple[str, ...]] = {
    "gmm40": ("energy_w2", "mode_weight_error_max_pp"), "dw4": ("energy_w2", "distance_w2"),
    "lj13": ("energy_w2", "distance_w2"), "aldp-fab": ("ramachandran_tv_30x30", "energy_w2"),
}


@dataclass(frozen=True)
class Settings:
    """The study: targets x methods x budgets, one seed."""

    preset: str = "default"
    targets: tuple[str, ...] = ("gmm40", "dw4")
    methods: tuple[str, ...] = ("pt", "mala", "idem", "idem-ode", "flow")
    budgets: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    seed: int = 0
    n_samples: int = 1000
    quick_idem: bool = False  # the "<target>-quick" iDEM presets (tests)
    figures: bool = True


QUICK = Settings(preset="quick", targets=("gmm40",), methods=("pt", "idem-ode"),
                 budgets=(30_000, 100_000), n_samples=200, quick_idem=True, figures=False)


def settings_from(overrides: list[str]) -> Settings:
    items = configs.parse_assignments(overrides)
    name = items.pop("preset", "default")
    bases = {"default": Settings(), "quick": QUICK}
    if name not in bases:
        raise UnknownName("budget-curves preset", name, bases)
    settings = configs.override(bases[name], items)
    for method in settings.methods:
        if method not in METHODS:
            raise UnknownName("budget-curves method", method, METHODS)
    return settings


def run_one(settings: Settings, target: str, method: str, budget: int, out: Path,
            device: str = "cpu") -> dict:
    """One run of `method` on `target` under `budget` on `device`: its metrics (and a failure
    reason)."""
    sampler, sets = METHODS[method]
    preset = f"{target}-quick" if sampler == "idem" and settings.quick_idem else None
    try:
        outcome = runner.run_sampler(
            target_name=target, sampler=sampler, budget=budget, seed=settings.seed,
            out=out / f"{target}-{method}-{budget}", sets=[*sets, f"device={device}"],
            preset=preset, n_samples=settings.n_samples, figures=False)
    except runner.UsageError as err:  # e.g. a budget that buys no training step
        return {"failed": str(err)}
    return dict(outcome.metrics)


def run_task(overrides: list[str], target: str, method: str, budget: int, out: str,
             device: str = "cpu") -> dict:
    """Task: `run_one` on `device` into a fresh `out/<target>-<method>-<budget>` (what a dead
    attempt left there removed)."""
    executors.fresh_dir(Path(out) / f"{target}-{method}-{budget}")
    return run_one(settings_from(overrides), target, method, budget, Path(out), device)


def tasks(settings: Settings, overrides: list[str], out: Path, device: str = "cpu"
          ) -> list[executors.Task]:
    """One task per (target, method, budget) on `device`; the key hashes what decides the
    run's numbers (not the figures, nor which other runs the ladder holds, nor the device: a
    run finished on one device is not redone on another)."""
    common = {k: v for k, v in configs.to_dict(settings).items()
              if k not in ("figures", "targets", "methods", "budgets")}
    out_tasks = []
    for t in settings.targets:
        for m in settings.methods:
            for b in settings.budgets:
                key = executors.task_key(f"{t}-{m}-{b}", {**common, "run": [t, m, b]})
                out_tasks.append(executors.Task(key, run_task, {
                    "overrides": list(overrides), "target": t, "method": m, "budget": b,
                    "out": str(out), "device": device}))
    return out_tasks


def verdict(rows: list[dict[str, Any]], target: str, metric: str) -> str:
    """The smallest budget at which a neural method beats PT beyond the noise, if any."""
    by = {(r["method"], r["budget"]): r for r in rows if r["target"] == target}
    for budget in sorted({b for _, b in by}):
        pt = by.get(("pt", budget), {}).get(metric)
        noise = 2 * (by.get(("pt", budget), {}).get(f"{metric}_floor_std") or 0.0)
        for method in NEURAL:
            value = by.get((method, budget), {}).get(metric)
            if pt is not None and value is not None and value < pt - noise:
                return f"{method} beats PT on {metric} from {budget:,} energy evaluations"
    return f"no neural method beats PT on {metric} in the budgets measured"


def run(out_dir: Path, overrides: list[str], callback: Callback,
        executor: executors.Executor | None = None, device: str = "cpu") -> dict[str, Any]:
    """Samplers against energy budget on particle targets; curves, tables and a verdict.
    The runs are tasks on `executor` (default serial), every run on `device`."""
    settings = settings_from(overrides)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = tasks(settings, overrides, out_dir / "runs", device)
    done = executors.sweep(executor, todo, out_dir / "runs", callback)
    rows = []
    for task in todo:
        failure = (done.failed.get(task.key) or "not run").splitlines()[0]
        metrics = done.values.get(task.key, {"failed": failure})
        rows.append({k: task.kwargs[k] for k in ("target", "method", "budget")} | metrics)
    _write(out_dir, rows, settings)
    headline = {t: {m: verdict(rows, t, m) for m in HEADLINE.get(t, ("energy_w2",))}
                for t in settings.targets} | executors.tally(executor, done)
    (out_dir / "verdict.json").write_text(json.dumps(headline, indent=2))
    return headline


def _write(out_dir: Path, rows: list[dict[str, Any]], settings: Settings) -> None:
    keys = ["target", "method", "budget", "failed"] + sorted(
        {k for r in rows for k in r} - {"target", "method", "budget", "failed"})
    with (out_dir / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# budget curves", "", f"settings: {configs.to_dict(settings)}", ""]
    for target in settings.targets:
        metrics = HEADLINE.get(target, ("energy_w2",))
        lines += [f"## {target}", "", "| method | budget | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]
        for r in (r for r in rows if r["target"] == target):
            cells = [_cell(r, m) for m in metrics]
            lines.append(f"| {r['method']} | {r['budget']:,} | " + " | ".join(cells) + " |")
        lines += [""] + [f"- {verdict(rows, target, m)}" for m in metrics] + [""]
    (out_dir / "results.md").write_text("\n".join(lines))
    if settings.figures:
        _figure(out_dir, rows, settings)


def _cell(row: dict[str, Any], metric: str) -> str:
    if "failed" in row:
        return "failed (budget too small)"
    value, floor = row.get(metric), row.get(f"{metric}_floor")
    text = "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
    return text if floor is None else f"{text} (floor {floor:.3g})"


def _figure(out_dir: Path, rows: list[dict[str, Any]], settings: Settings) -> None:
    from boltzkit.app import plots

    grid: dict[str, dict[str, dict[str, Any]]] = {}
    for target in settings.targets:
        for metric in HEADLINE.get(target, ("energy_w2",)):
            panel = grid.setdefault(metric, {}).setdefault(target, {})
            for method in settings.methods:
                pts = [(r["budget"], r[metric]) for r in rows if r["target"] == target
                       and r["method"] == method and r.get(metric) is not None]
                if pts:
                    panel[method] = tuple(zip(*pts, strict=True))
            floors = [r.get(f"{metric}_floor") for r in rows
                      if r["target"] == target and r.get(f"{metric}_floor") is not None]
            if floors:
                panel["noise floor"] = (list(settings.budgets), [floors[0]] * len(settings.budgets))
    plots.curve_grid(grid, out_dir / "budget_curves.png", xlabel="energy evaluations",
                     xscale="log", yscale="log")


__all__ = ["METHODS", "Settings", "run", "settings_from", "verdict"]
