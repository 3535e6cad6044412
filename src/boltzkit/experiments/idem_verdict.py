"""`idem-verdict`: iDEM against MCMC given exactly the energy evaluations iDEM used.

A neural sampler is only worth its cost if it beats equal-budget MCMC (REFERENCE.md: an
independent re-run of the official iDEM code found energy W2 0.44 on DW-4 and 5.2 on LJ-13 where
MCMC with the same budget reached 0.15 and 0.52). This experiment trains iDEM, counts its energy
evaluations N, runs each baseline (parallel tempering, MALA) with budget N, evaluates every
sample set against the same reference with `boltzkit.evaluate.evaluation.evaluate` (noise floors
included) and writes one table. Lower is better for every headline metric; the method with
the most headline wins is named (ties: the first headline metric decides).

iDEM is one task for `boltzkit.app.executors`, then each baseline (at iDEM's count) is one,
in parallel (`--executor serial|local|ray`); each seeds itself from `seed`, so the table does
not depend on the executor. Results are kept in `out_dir/runs` (samples in
`out_dir/samples/`), and a re-run in the same directory skips what is there.

Overrides: keys of `VerdictConfig`, plus `idem.KEY=VALUE` for the iDEM config and
`mcmc.KEY=VALUE` for the baselines' configs (each baseline takes the keys its config has; a key
no baseline has is an error).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boltzkit.app import executors, references
from boltzkit.core.config import override, parse_assignments, to_dict
from boltzkit.samplers import Callback, SampleResult, null_callback

HEADLINE_PARTICLES = ("energy_w2", "distance_tv", "symmetry_w2", "x_w2")
HEADLINE_MIXTURE = ("x_w2", "mode_weight_error_mean_pp", "energy_w2")


@dataclass(frozen=True)
class VerdictConfig:
    """target: registry name; preset: the iDEM preset; baselines: MCMC samplers run with iDEM's
    evaluation count; budget: iDEM's own budget (None: the preset's full run); reference: a
    reference file (default: exact sampler, project reference, or ../shared/data); resume:
    continue the iDEM run from its checkpoint in out_dir/idem (e.g. after a kill); seed: iDEM
    runs under `seed`, baseline i under `seed + 1 + i`, the evaluation under `seed`."""

    target: str = "dw4"
    preset: str = "dw4-quick"
    baselines: tuple[str, ...] = ("pt", "mala")
    n_samples: int = 1000
    budget: int | None = None
    reference: str | None = None
    max_ot: int = 1000
    resume: bool = False
    seed: int = 0


def run(out_dir: Path, overrides: list[str], callback: Callback = null_callback,
        executor: executors.Executor | None = None, device: str = "cpu") -> dict:
    """iDEM against MCMC baselines given the same number of energy evaluations.

    Runs the comparison (iDEM, then the baselines, as tasks on `executor`, default serial;
    every sampler on `device`, the target moved there; the evaluation on the host), writes
    `verdict.md` and `verdict.json` into out_dir, returns the headline numbers (per method and
    metric, plus `winner`)."""
    from boltzkit.app import runner
    from boltzkit.evaluate.evaluation import evaluate
    from boltzkit.samplers import idem

    out_dir = Path(out_dir)
    cfg, idem_sets, _ = _split_overrides(overrides)
    target = runner.build_target(cfg.target)
    idem_cfg = dataclasses.replace(override(idem.preset(cfg.preset), idem_sets), device=device)
    reference = references.resolve_reference(target.uncounted(), cfg.target, path=cfg.reference,
                                         n=cfg.n_samples)
    first = executors.sweep(executor, [_task(overrides, out_dir, device, "idem")],
                            out_dir / "runs", callback)
    if not first.values:
        raise RuntimeError(f"the iDEM run failed: {next(iter(first.failed.values()))}")
    spent = next(iter(first.values.values()))["counts"]["n_energy"]
    rest = executors.sweep(executor, [_task(overrides, out_dir, device, name, i, spent)
                                      for i, name in enumerate(cfg.baselines)],
                           out_dir / "runs", callback)
    runs = {**first.values, **rest.values}
    results = {r["method"]: _loaded(r) for r in runs.values()}
    seconds = {r["method"]: r["seconds"] for r in runs.values()}
    torch.save({n: r.samples for n, r in results.items()}, out_dir / "samples.pt")
    torch.manual_seed(cfg.seed)  # the evaluation's subsets: the same after any executor
    table = {name: evaluate(r.samples, target, reference.samples, max_ot=cfg.max_ot)
             for name, r in results.items()}
    headline = HEADLINE_MIXTURE if _is_mixture(target) else HEADLINE_PARTICLES
    verdict = decide(table, [m for m in headline if all(m in row for row in table.values())])
    _write(out_dir, cfg, idem_cfg, table, results, seconds, reference.source, verdict)
    callback("log", message=verdict["text"])
    flat: dict[str, Any] = {"budget_n_energy": spent, "winner": verdict["winner"],
                            **executors.tally(executor, first, rest)}
    for name, row in table.items():
        for metric in verdict["metrics"]:
            flat[f"{name}.{metric}"] = row[metric]
            if f"{metric}_floor" in row:
                flat[f"floor.{metric}"] = row[f"{metric}_floor"]
    return flat


def run_method(overrides: list[str], out_dir: str, method: str, index: int = 0,
               budget: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Task: iDEM (method "idem", its own budget) or baseline number `index` at `budget`,
    seeded from the config's seed, on `device` (the target moved there); its samples saved on
    the host under out_dir/samples. Returns the samples' path, counts, diagnostics and wall
    seconds."""
    from boltzkit.app import runner
    from boltzkit.core.seeding import seed_everything
    from boltzkit.samplers import idem

    cfg, idem_sets, mcmc_sets = _split_overrides(overrides)
    idem_cfg = dataclasses.replace(override(idem.preset(cfg.preset), idem_sets), device=device)
    target = runner.on_config_device(runner.build_target(cfg.target), idem_cfg)
    start = time.perf_counter()
    if method == "idem":
        seed_everything(cfg.seed)
        result = idem.sample(target, idem_cfg, n_samples=cfg.n_samples, budget=cfg.budget,
                             run_dir=Path(out_dir) / "idem", resume=cfg.resume)
        seconds = result.diagnostics["wall_seconds"]  # all processes if resumed
    else:
        seed_everything(cfg.seed + 1 + index)
        result = _baseline(method, target, cfg, mcmc_sets, int(budget or 0), null_callback)
        seconds = time.perf_counter() - start
    path = Path(out_dir) / "samples" / f"{method}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    log_w = None if result.log_w is None else result.log_w.cpu()
    torch.save({"samples": result.samples.cpu(), "log_w": log_w}, path)  # the host
    return {"method": method, "path": str(path), "counts": result.counts,
            "diagnostics": json.loads(json.dumps(result.diagnostics, default=str)),
            "seconds": seconds}


def _task(overrides: list[str], out_dir: Path, device: str, method: str, index: int = 0,
          budget: int | None = None) -> executors.Task:
    """The task of `run_method`; the device is no part of its key (a run finished on one
    device is not redone on another)."""
    kwargs = {"overrides": list(overrides), "out_dir": str(out_dir), "method": method,
              "index": index, "budget": budget}
    return executors.Task(executors.task_key(method, kwargs), run_method,
                          {**kwargs, "device": device})


def _loaded(record: dict[str, Any]) -> SampleResult:
    saved = torch.load(record["path"], weights_only=False)
    return SampleResult(saved["samples"], saved["log_w"], None, record["diagnostics"],
                        record["counts"])


def decide(table: dict[str, dict[str, float]], metrics: list[str]) -> dict[str, Any]:
    """Per-metric winners (lowest value) and the overall winner by count of wins; ties go to the
    method that wins the first metric. Returns {"winner", "wins", "per_metric", "text"}."""
    per_metric = {m: min(table, key=lambda name, m=m: table[name][m]) for m in metrics}
    wins = {name: sum(w == name for w in per_metric.values()) for name in table}
    best = max(wins.values()) if wins else 0
    tied = [name for name, w in wins.items() if w == best]
    winner = per_metric[metrics[0]] if len(tied) > 1 and metrics else tied[0]
    lines = [f"{m}: {w} wins ({', '.join(f'{n} {table[n][m]:.4g}' for n in table)})"
             for m, w in per_metric.items()]
    text = "\n".join([*lines, f"verdict: {winner} wins {wins[winner]} of {len(metrics)} "
                               "headline metrics at equal energy budget"])
    return {"winner": winner, "wins": wins, "per_metric": per_metric, "metrics": metrics,
            "text": text}


def _split_overrides(overrides: list[str]) -> tuple[VerdictConfig, dict[str, str], dict[str, str]]:
    items = parse_assignments(overrides)
    idem_sets = {k[5:]: v for k, v in items.items() if k.startswith("idem.")}
    mcmc_sets = {k[5:]: v for k, v in items.items() if k.startswith("mcmc.")}
    own = {k: v for k, v in items.items() if not k.startswith(("idem.", "mcmc."))}
    cfg = override(VerdictConfig(), own)
    _check_mcmc_keys(cfg.baselines, mcmc_sets)
    return cfg, idem_sets, mcmc_sets


def _check_mcmc_keys(baselines: tuple[str, ...], sets: dict[str, str]) -> None:
    # A key must belong to at least one baseline's config (n_temps is PT's only).
    from boltzkit.samplers import mcmc as mc

    valid = {f.name for name in baselines for f in dataclasses.fields(mc.Config(name))}
    unknown = sorted(set(sets) - valid)
    if unknown:
        raise KeyError(f"unknown mcmc.* key(s) {unknown} for baselines {list(baselines)}; "
                       f"valid keys: {', '.join(sorted(valid))}")


def _baseline(name: str, target: Any, cfg: VerdictConfig, sets: dict[str, str], budget: int,
              callback: Callback) -> SampleResult:
    from boltzkit.samplers import mcmc as mc

    try:
        config = mc.preset(cfg.target, sampler=name)
    except KeyError:
        config = mc.Config(name)
    fields = {f.name for f in dataclasses.fields(config)}
    config = override(config, {k: v for k, v in sets.items() if k in fields})
    config = dataclasses.replace(config, device=str(target.device))
    return mc.sample(target, config, n_samples=cfg.n_samples, budget=budget, callback=callback)


def _is_mixture(target: Any) -> bool:
    from boltzkit.evaluate import metrics

    return metrics.is_mixture(target)


def _write(out_dir: Path, cfg: VerdictConfig, idem_cfg: Any, table: dict[str, dict[str, float]],
           results: dict[str, SampleResult], seconds: dict[str, float], reference_source: str,
           verdict: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = list(table)
    metrics = [m for m in verdict["metrics"]]
    extra = [m for m in table[methods[0]] if m not in metrics and not m.endswith(("_floor",
                                                                                   "_floor_std"))]
    lines = [f"# iDEM vs equal-budget MCMC on {cfg.target}", "",
             f"Budget: {results['idem'].counts['n_energy']:,} energy evaluations (iDEM's count, "
             f"given to every baseline). Reference: {reference_source}. Samples per method: "
             f"{cfg.n_samples}. Lower is better; `floor` = reference vs reference.", "",
             "| metric | " + " | ".join(methods) + " | floor |",
             "|---" * (len(methods) + 2) + "|"]
    for m in metrics + extra:
        floor = table[methods[0]].get(f"{m}_floor")
        cells = [_fmt(table[n].get(m)) for n in methods]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_fmt(floor)} |")
    lines += ["| energy evaluations | " + " | ".join(
        f"{results[n].counts['n_energy']:,}" for n in methods) + " | |",
              "| wall seconds | " + " | ".join(f"{seconds[n]:.0f}" for n in methods) + " | |",

              "", "```", verdict["text"], "```", ""]
    (out_dir / "verdict.md").write_text("\n".join(lines))
    record = {"config": to_dict(cfg), "idem_config": to_dict(idem_cfg), "table": table,
              "counts": {n: r.counts for n, r in results.items()}, "seconds": seconds,
              "reference": reference_source, "winner": verdict["winner"],
              "per_metric": verdict["per_metric"],
              "diagnostics": {n: r.diagnostics for n, r in results.items()}}
    (out_dir / "verdict.json").write_text(json.dumps(record, indent=1, default=str))


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"
