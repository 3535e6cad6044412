"""`boltzkit experiment budget-curves`: each sampler at a ladder of energy budgets, every
headline metric against the budget with the noise floor as a band, training evaluations
included (every run is a `boltzkit sample` run under that budget).

Methods: "pt", "mala" (MCMC baselines with the target's preset), "idem" (the reverse SDE of
the trained network), "idem-ode" (iDEM made exact: probability-flow samples with importance
weights, `--set correction=ode`), "idem-smc" (the energy-parametrised iDEM corrected by SMC
along its own noised levels, `--set correction=smc --set parametrisation=energy`), "flow" (a
flow Boltzmann generator, reverse KL, reweighted), "flow-pt" (flow-assisted parallel
tempering, `boltzkit.samplers.flow_pt`: PT explores, a flow learns from its samples, then
proposes independence moves at every rung).

Each (target, method, budget) runs once per seed; tables and curves give the mean over seeds
and, with two or more, its standard error (std / sqrt(n_seeds)). The verdict names, per target
and metric, the smallest budget at which a neural method's mean beats PT's by more than
2 sqrt(SE_method^2 + SE_PT^2) (with one seed, by more than twice the noise floor's spread), or
says that none does in the range measured.

Every run is a task for `boltzkit.app.executors` (`--executor serial|local|ray`); its metrics
are kept in `out_dir/runs/KEY.json`, and a re-run in the same directory skips what is there.

Settings (`--set key=value`): preset ("quick": gmm40 at 3e4 and 1e5 evaluations, for tests;
"default": gmm40, dw4 and lj13 at 1e5 .. 1e7), targets, methods, budgets, seeds, n_samples,
figures. Writes results.csv (a row per run), summary.csv (mean and SE per target, method and
budget), results.md, verdict.json and budget_curves.png (the noise floor as a band, mean +-
2 std of a perfect sampler's metric).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boltzkit.app import executors, runner
from boltzkit.core import config as configs
from boltzkit.core.callback import Callback
from boltzkit.core.errors import UnknownName

NEURAL = ("idem", "idem-ode", "idem-smc", "flow", "flow-pt")
# The trained samplers' iteration counts are lifted so that the budget, not a preset's count,
# ends their training (a budget given is a budget spent).
IDEM_UNTIL_BUDGET = "n_outer=1000000000"
# method -> (sampler, extra `--set` assignments)
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pt": ("pt", ()), "mala": ("mala", ()), "idem": ("idem", (IDEM_UNTIL_BUDGET,)),
    "idem-ode": ("idem", ("correction=ode", IDEM_UNTIL_BUDGET)),
    "idem-smc": ("idem", ("correction=smc", "parametrisation=energy", IDEM_UNTIL_BUDGET)),
    "flow": ("flow", ("objective=reverse", "n_steps=1000000000")),
    "flow-pt": ("flow-pt", ()),
}
HEADLINE: dict[str, tuple[str, ...]] = {
    "gmm40": ("energy_w2", "mode_weight_error_max_pp"), "dw4": ("energy_w2", "distance_w2"),
    "lj13": ("energy_w2", "distance_w2"), "aldp-fab": ("ramachandran_tv_30x30", "energy_w2"),
    "aldp": ("ramachandran_kl_ref_to_samples_30x30_nats", "energy_w2"),
}


@dataclass(frozen=True)
class Settings:
    """The study: targets x methods x budgets x seeds."""

    preset: str = "default"
    targets: tuple[str, ...] = ("gmm40", "dw4", "lj13")
    methods: tuple[str, ...] = ("pt", "mala", "idem", "idem-ode", "flow", "flow-pt")
    budgets: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    seeds: tuple[int, ...] = (0,)
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


def run_name(target: str, method: str, budget: int, seed: int) -> str:
    """The run's directory name (seed 0 keeps the one-seed name)."""
    return f"{target}-{method}-{budget}" + (f"-s{seed}" if seed else "")


def run_one(settings: Settings, target: str, method: str, budget: int, out: Path,
            device: str = "cpu", seed: int = 0) -> dict:
    """One run of `method` on `target` under `budget` on `device` with `seed`: its metrics (and
    a failure reason)."""
    sampler, sets = METHODS[method]
    preset = f"{target}-quick" if sampler == "idem" and settings.quick_idem else None
    try:
        outcome = runner.run_sampler(
            target_name=target, sampler=sampler, budget=budget, seed=seed,
            out=out / run_name(target, method, budget, seed), sets=[*sets, f"device={device}"],
            preset=preset, n_samples=settings.n_samples, figures=False)
    except runner.UsageError as err:  # e.g. a budget that buys no training step
        return {"failed": str(err)}
    return dict(outcome.metrics)


def run_task(overrides: list[str], target: str, method: str, budget: int, out: str,
             device: str = "cpu", seed: int = 0) -> dict:
    """Task: `run_one` on `device` into a fresh `out/<run_name>` (what a dead attempt left
    there removed)."""
    executors.fresh_dir(Path(out) / run_name(target, method, budget, seed))
    return run_one(settings_from(overrides), target, method, budget, Path(out), device, seed)


def tasks(settings: Settings, overrides: list[str], out: Path, device: str = "cpu"
          ) -> list[executors.Task]:
    """One task per (target, method, budget) on `device`; the key hashes what decides the
    run's numbers (not the figures, nor which other runs the ladder holds, nor the device: a
    run finished on one device is not redone on another)."""
    common = {k: v for k, v in configs.to_dict(settings).items()
              if k not in ("figures", "targets", "methods", "budgets", "seeds")}
    out_tasks = []
    for t in settings.targets:
        for m in settings.methods:
            for b in settings.budgets:
                sets = {"sets": list(METHODS[m][1])} if METHODS[m][1] else {}
                for s in settings.seeds:
                    key = executors.task_key(run_name(t, m, b, s),
                                             {**common, "run": [t, m, b], "seed": s, **sets})
                    out_tasks.append(executors.Task(key, run_task, {
                        "overrides": list(overrides), "target": t, "method": m, "budget": b,
                        "out": str(out), "device": device, "seed": s}))
    return out_tasks


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, method, budget): the mean over the seeds that did not fail of
    every numeric metric, `<metric>_se` = std / sqrt(n) when n >= 2, n_seeds; `failed` (the
    first reason) when every seed failed."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"], r["budget"]), []).append(r)
    out = []
    for (t, m, b), members in groups.items():
        ok = [r for r in members if "failed" not in r]
        row: dict[str, Any] = {"target": t, "method": m, "budget": b, "n_seeds": len(ok)}
        if not ok:
            out.append(row | {"failed": members[0]["failed"]})
            continue
        for key in dict.fromkeys(k for r in ok for k in r):
            values = [float(r[key]) for r in ok if isinstance(r.get(key), int | float)
                      and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
            if key in ("target", "method", "budget", "seed") or not values:
                continue
            row[key] = statistics.fmean(values)
            if len(values) >= 2:
                row[f"{key}_se"] = statistics.stdev(values) / math.sqrt(len(values))
        out.append(row)
    return out


def verdict(rows: list[dict[str, Any]], target: str, metric: str) -> str:
    """The smallest budget at which a neural method beats PT beyond the noise, if any (`rows`
    as `aggregate` makes them; the margin is in the module docstring)."""
    by = {(r["method"], r["budget"]): r for r in rows if r["target"] == target}
    for budget in sorted({b for _, b in by}):
        pt_row = by.get(("pt", budget), {})
        pt = pt_row.get(metric)
        for method in NEURAL:
            row = by.get((method, budget), {})
            value = row.get(metric)
            if f"{metric}_se" in row and f"{metric}_se" in pt_row:
                noise = 2 * math.hypot(row[f"{metric}_se"], pt_row[f"{metric}_se"])
            else:
                noise = 2 * (pt_row.get(f"{metric}_floor_std") or 0.0)
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
        rows.append({k: task.kwargs[k] for k in ("target", "method", "budget", "seed")}
                    | metrics)
    summary = aggregate(rows)
    _write(out_dir, rows, summary, settings)
    headline = {t: {m: verdict(summary, t, m) for m in HEADLINE.get(t, ("energy_w2",))}
                for t in settings.targets} | executors.tally(executor, done)
    (out_dir / "verdict.json").write_text(json.dumps(headline, indent=2))
    return headline


def _write(out_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]],
           settings: Settings) -> None:
    for name, table in (("results.csv", rows), ("summary.csv", summary)):
        first = ["target", "method", "budget", "seed" if name == "results.csv" else "n_seeds",
                 "failed"]
        keys = first + sorted({k for r in table for k in r} - set(first))
        with (out_dir / name).open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(table)
    lines = ["# budget curves", "", f"settings: {configs.to_dict(settings)}", "",
             "Cells: mean over seeds +- its SE (n_seeds >= 2), then the noise floor; spent: "
             "the mean energy evaluations used, training included.", ""]
    for target in settings.targets:
        metrics = HEADLINE.get(target, ("energy_w2",))
        lines += [f"## {target}", "", "| method | budget | seeds | spent | "
                  + " | ".join(metrics) + " |", "|---|---|---|---|" + "---|" * len(metrics)]
        for r in (r for r in summary if r["target"] == target):
            cells = [_cell(r, m) for m in metrics]
            spent = f"{r['count_n_energy']:,.0f}" if "count_n_energy" in r else "-"
            lines.append(f"| {r['method']} | {r['budget']:,} | {r['n_seeds']} | {spent} | "
                         + " | ".join(cells) + " |")
        lines += [""] + [f"- {verdict(summary, target, m)}" for m in metrics] + [""]
    (out_dir / "results.md").write_text("\n".join(lines))
    if settings.figures:
        _figure(out_dir, summary, settings)


def _cell(row: dict[str, Any], metric: str) -> str:
    if "failed" in row:
        return "failed: " + row["failed"][:60]
    value, floor = row.get(metric), row.get(f"{metric}_floor")
    text = "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"
    if f"{metric}_se" in row:
        text += f" +- {row[f'{metric}_se']:.2g}"
    return text if floor is None else f"{text} (floor {floor:.3g})"


def _figure(out_dir: Path, summary: list[dict[str, Any]], settings: Settings) -> None:
    from boltzkit.app import plots

    grid: dict[str, dict[str, dict[str, Any]]] = {}
    bands: dict[str, dict[str, dict[str, Any]]] = {}
    for target in settings.targets:
        mine = [r for r in summary if r["target"] == target]
        for metric in HEADLINE.get(target, ("energy_w2",)):
            panel = grid.setdefault(metric, {}).setdefault(target, {})
            for method in settings.methods:
                pts = [r for r in mine if r["method"] == method and r.get(metric) is not None]
                if pts:
                    curve = [[r["budget"] for r in pts], [r[metric] for r in pts]]
                    if all(f"{metric}_se" in r for r in pts):
                        curve.append([r[f"{metric}_se"] for r in pts])
                    panel[method] = tuple(curve)
            floors: dict[int, list[tuple[float, float]]] = {}
            for r in mine:
                if r.get(f"{metric}_floor") is not None:
                    floors.setdefault(r["budget"], []).append(
                        (r[f"{metric}_floor"], r.get(f"{metric}_floor_std") or 0.0))
            if floors:
                xs = sorted(floors)
                mean = [statistics.fmean(f for f, _ in floors[b]) for b in xs]
                spread = [statistics.fmean(s for _, s in floors[b]) for b in xs]
                # on the log axis a band reaching zero is cut at half the smallest value shown
                shown = [y for c in panel.values() for y in c[1] if y > 0] + mean
                bottom = 0.5 * min(shown)
                bands.setdefault(metric, {}).setdefault(target, {})["noise floor +- 2 sd"] = (
                    xs, [max(m - 2 * s, bottom) for m, s in zip(mean, spread, strict=True)],
                    [m + 2 * s for m, s in zip(mean, spread, strict=True)])
    plots.curve_grid(grid, out_dir / "budget_curves.png", xlabel="energy evaluations",
                     xscale="log", yscale="log", bands=bands)


__all__ = ["METHODS", "Settings", "aggregate", "run", "settings_from", "verdict"]
