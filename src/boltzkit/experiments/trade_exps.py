"""`boltzkit experiment trade-*`: TRADE (arXiv 2410.19492) against its baselines, one conditional
flow per method trained from boundary data only.

- trade-gmm: tempered-gmm-2d, data at T = 1, T in [0.162, 6.16]; KL(p_T || q_T) with the exact
  normaliser by grid quadrature at the paper's nine temperatures, IS ESS/N, density figure.
- trade-multi-well: multi-well-5d, data at T = 1, T in [0.5, 1]; KL(p_T || q_T) (NLL on exact
  samples minus the exact entropy) and ESS/N at T = 0.5 and 1.
- trade-phi4, trade-two-moons: `phi4_experiment`, `two_moons_experiment` in
  `boltzkit.experiments.trade_extra`, built on the helpers here.

Methods (`methods=...`): trade-grid (log grid, causality weights, flow samples at c), trade-free
(widening curriculum, residual points and SNIS proposal = the flow at c0 reweighted to c),
trade-free-c (curriculum, flow samples at c: diverged on tempered-gmm-2d, see README), trade-ema
(grid, per-point EMA of E_c[A]), trade-grid-fit / trade-free-fit (as trade-grid / trade-free with
E_c[A] fitted per condition instead of importance sampled), latent_nll (NLL at c0, latent
temperature scaling only), reverse_kl (over the range), nll_reverse_kl, reweight (c0 data reweighted
to c), nll_data (conditional NLL on the boundary data only). Every experiment writes results.csv
(long form), results.md (one table per metric, methods x conditions), settings.json and figures into
out_dir; entry points seed torch and record the seed, threads and load.

Each method (training and scoring one flow) is a task for `boltzkit.app.executors`
(`--executor serial|local|ray`, `method_task`): it seeds itself from `seed`, so the tables do
not depend on the executor; what the methods share (references, HMC draws, observations) is
drawn once beforehand into out_dir/shared.pt; results are kept in out_dir/runs (flows in
out_dir/models), and a re-run in the same directory skips the methods already finished.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit.app import executors
from boltzkit.core import config as configs
from boltzkit.core.callback import Callback
from boltzkit.experiments.tables import write_tables
from boltzkit.mc import estimators
from boltzkit.models.flows import ConditionalFlow, dtype_of
from boltzkit.samplers import trade
from boltzkit.targets import get as get_target
from boltzkit.targets.family import Family

GMM_TEMPERATURES = (0.207, 0.336, 0.546, 0.886, 1.0, 1.129, 1.833, 2.976, 4.833)
METHODS: dict[str, dict[str, Any]] = {
    "trade-grid": {"conditions": "grid"},
    "trade-free": {"conditions": "curriculum", "expectation": "flow_c0"},
    "trade-free-c": {"conditions": "curriculum"},
    "trade-ema": {"conditions": "grid", "expectation": "ema"},
    "trade-grid-fit": {"conditions": "grid", "constant": "fitted"},
    "trade-free-fit": {"conditions": "curriculum", "expectation": "flow_c0", "constant": "fitted"},
    "latent_nll": {"method": "latent_nll"},
    "reverse_kl": {"method": "reverse_kl"},
    "nll_reverse_kl": {"method": "nll_reverse_kl"},
    "reweight": {"method": "reweight"},
    "nll_data": {"warmup_steps": 10**9},  # conditional NLL on the boundary data only
}


@dataclass(frozen=True)
class Settings:
    """Shared experiment settings; `trade_set` holds extra trade.Config overrides (key=value)."""

    methods: tuple[str, ...] = ("trade-grid", "trade-free", "latent_nll", "reverse_kl",
                                "nll_reverse_kl", "reweight")
    n_steps: int = 3000
    warmup_steps: int = 500
    n_data: int = 20_000
    n_eval: int = 20_000
    seed: int = 0
    threads: int = 1
    kind: str = "spline"
    n_layers: int = 6
    hidden: int = 64
    bins: int = 10
    bound: float = 6.0
    lr: float = 1e-3
    figures: bool = True
    trade_set: tuple[str, ...] = ()


QUICK = {"n_steps": 20, "warmup_steps": 5, "n_data": 500, "n_eval": 500, "n_layers": 2,
         "hidden": 16, "figures": False}


def settings_from(overrides: list[str]) -> Settings:
    """Settings with `key=value` overrides; `preset=quick` gives a seconds-long run (tests)."""
    items = configs.parse_assignments(overrides)
    base = Settings(**QUICK) if items.pop("preset", "default") == "quick" else Settings()
    return configs.override(base, items)


def trade_config(settings: Settings, method: str, **problem: Any) -> trade.Config:
    """The trade.Config of `method` for a problem (c0, c_min, c_max, parameter, ...)."""
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    base = trade.Config(
        n_steps=settings.n_steps, warmup_steps=settings.warmup_steps, kind=settings.kind,
        n_layers=settings.n_layers, hidden=settings.hidden, bins=settings.bins,
        bound=settings.bound, lr=settings.lr, n_data=settings.n_data, **problem)
    return configs.override(configs.override(base, METHODS[method]), list(settings.trade_set))


def train_method(settings: Settings, method: str, family: Family, data: trade.Data,
                 problem: dict[str, Any], context_dim: int = 0, device: str = "cpu"
                 ) -> tuple[ConditionalFlow, dict[str, Any]]:
    """The flow of `method`, trained from `settings.seed` on `data` on `device` (the target and
    the data moved there); (flow in eval mode on the host, where the evaluation runs, training
    record)."""
    family, data = on_device(family, data, device)
    config = dataclasses.replace(trade_config(settings, method, **problem), device=device)
    torch.manual_seed(settings.seed)
    flow = trade.build_flow(config, data.x.shape[-1], data.x, context_dim)
    record = trade.train(flow, family, config, data)
    return flow.to("cpu").eval(), record


# ---- methods as executor tasks ------------------------------------------------------------
# experiment -> "module:prefix": prefix_setup(settings, shared) -> (family, data, problem,
# context_dim) and prefix_score(method, flow, record, settings, shared) -> (rows, extra)
PROBLEMS = {"trade-gmm": "boltzkit.experiments.trade_exps:gmm",
            "trade-multi-well": "boltzkit.experiments.trade_exps:multi_well",
            "trade-phi4": "boltzkit.experiments.trade_extra:phi4",
            "trade-two-moons": "boltzkit.experiments.trade_extra:moons"}


def method_task(experiment: str, overrides: list[str], method: str, out_dir: str,
                device: str = "cpu") -> dict[str, Any]:
    """Task: trains `method` for `experiment` on `device` (its setup seeded with the settings'
    seed) and scores it on the host; the flow is saved to out_dir/models. Returns rows, extra
    scores, the flow's path and the training seconds."""
    settings, out = settings_from(overrides), Path(out_dir)
    module, prefix = PROBLEMS[experiment].split(":")
    problem = importlib.import_module(module)
    shared = torch.load(out / "shared.pt", weights_only=False)
    torch.manual_seed(settings.seed)
    family, data, conditions, context_dim = getattr(problem, f"{prefix}_setup")(settings, shared)
    flow, record = train_method(settings, method, family, data, conditions, context_dim,
                                device)
    path = out / "models" / f"{method}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(flow, path)
    rows, extra = getattr(problem, f"{prefix}_score")(method, flow, record, settings, shared)
    return {"rows": rows, "extra": extra, "flow": str(path), "seconds": record["seconds"]}


def run_methods(experiment: str, settings: Settings, overrides: list[str], out_dir: Path,
                shared: dict[str, Any], callback: Callback,
                executor: executors.Executor | None, device: str = "cpu"
                ) -> tuple[dict[str, dict], dict]:
    """Every method of `settings` as a task on `executor`, trained on `device` (no part of the
    task's key: a method finished on one device is not redone on another); (method -> task
    value for those that finished, the sweep's tally)."""
    torch.save(shared, out_dir / "shared.pt")
    common = {k: v for k, v in configs.to_dict(settings).items() if k not in ("methods",
                                                                                "figures")}
    tasks = [executors.Task(executors.task_key(f"{experiment}-{m}", {**common, "method": m}),
                            method_task, {"experiment": experiment, "overrides": list(overrides),
                                          "method": m, "out_dir": str(out_dir),
                                          "device": device},
                            num_cpus=settings.threads) for m in settings.methods]
    done = executors.sweep(executor, tasks, out_dir / "runs", callback)
    values = {t.kwargs["method"]: done.values[t.key] for t in tasks if t.key in done.values}
    return values, executors.tally(executor, done)


def load_flow(value: dict[str, Any]) -> ConditionalFlow:
    """A finished method's flow (for figures)."""
    return torch.load(value["flow"], weights_only=False)


def on_device(family: Family, data: trade.Data, device: str) -> tuple[Family, trade.Data]:
    """The family (its target moved by `Target.to`, sharing its counter) and the boundary data
    on `device`."""
    context = None if data.context is None else data.context.to(device)
    return (Family(family.target.to(device), family.parameter, family.c_ref),
            trade.Data(data.x.to(device), data.c.to(device), context))


# ---- tables -------------------------------------------------------------------------------
def begin_run(out_dir: Path, overrides: list[str], name: str) -> tuple[Path, Settings, dict]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_from(overrides)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    record = {"experiment": name, "settings": configs.to_dict(settings),
              "load_average_start": os.getloadavg(), "cpu_count": os.cpu_count(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    return out_dir, settings, record


def finish_run(out_dir: Path, record: dict[str, Any], t0: float, headline: dict[str, Any]
            ) -> dict[str, Any]:
    record.update(wall_s=time.perf_counter() - t0, load_average_end=os.getloadavg(),
                  headline=headline)
    (out_dir / "settings.json").write_text(json.dumps(record, indent=2, default=str))
    return headline


def is_row(flow: ConditionalFlow, family: Family, c: float, n: int) -> dict[str, float]:
    ev = trade.evaluate(flow, family, c, n)
    return {"ess_fraction": ev["ess_fraction"],
            "log_Z_error": ev["log_Z"] - ev["log_Z_true"] if "log_Z_true" in ev else math.nan}


def means_by_method(rows: list[dict[str, Any]], metric: str) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["method"], []).append(r[metric])
    return {m: sum(v) / len(v) for m, v in out.items()}


# ---- tempered-gmm-2d ----------------------------------------------------------------------
@torch.no_grad()
def grid_reference(log_prob: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, h: float,
                   n: int, log_Z: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """n draws from a 2-D density by grid: cells of side h drawn in proportion to the density at
    their centres, then uniform within the cell (law r). Returns (x, log p(x), log SNIS weights
    log p - log r), so that E_p[f] = SNIS(weights, f) without grid bias; log p is normalised by
    `log_Z` when given, else by the grid quadrature.
    """
    axes = [torch.arange(float(lo[i]), float(hi[i]), h, dtype=torch.float64) for i in range(2)]
    centres = torch.cartesian_prod(*axes)
    log_cell = torch.cat([log_prob(chunk) for chunk in centres.split(1 << 20)])
    lse = torch.logsumexp(log_cell, 0)
    log_Z = float(lse) + 2 * math.log(h) if log_Z is None else log_Z
    log_cell = log_cell - lse
    idx = torch.multinomial(torch.exp(log_cell), n, replacement=True)
    x = centres[idx] + (torch.rand(n, 2, dtype=torch.float64) - 0.5) * h
    log_p = log_prob(x) - log_Z
    return x, log_p, log_p - (log_cell[idx] - 2 * math.log(h))


def gmm_reference(target: Any, temperature: float, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """`grid_reference` draws from p_T of a 2-D mixture with its exact log Z(T); h = 0.3 x the
    narrowest tempered std, box: the means +- 7 widest tempered stds."""
    tempered = target.uncounted().tempered(temperature)
    std = tempered.eigvals.sqrt() * math.sqrt(temperature)
    h, s_max = 0.3 * float(std.min()), float(std.max())
    lo = tempered.means.min(0).values - 7 * s_max
    hi = tempered.means.max(0).values + 7 * s_max
    return grid_reference(tempered.log_prob, lo, hi, h, n, tempered.log_Z)


@torch.no_grad()
def gmm_kl(flow: ConditionalFlow, reference: tuple[Tensor, Tensor, Tensor],
           temperature: float) -> tuple[float, float]:
    """KL(p_T || q_T) = E_p[log p_T - log q_T] with the exact normaliser, by SNIS over the
    `gmm_reference` draws; returns (estimate, standard error)."""
    x, log_p, log_w = reference
    log_q = flow.log_prob(x.to(dtype_of(flow)), temperature).double()
    est = estimators.snis(log_w, log_p - log_q)
    return float(est.mean), float(est.se)


GMM_PROBLEM = {"parameter": "temperature", "c0": 1.0, "c_min": 0.162, "c_max": 6.16}


def gmm_setup(settings: Settings, shared: dict[str, Any]) -> tuple:
    target = get_target("tempered-gmm-2d")
    data = trade.Data(target.sample(settings.n_data).float(), 1.0)
    return Family(target), data, GMM_PROBLEM, 0


def gmm_score(method: str, flow: ConditionalFlow, record: dict[str, Any], settings: Settings,
              shared: dict[str, Any]) -> tuple[list[dict[str, Any]], None]:
    exact = Family(get_target("tempered-gmm-2d").uncounted())
    rows = []
    for temp in GMM_TEMPERATURES:
        kl, kl_se = gmm_kl(flow, shared["references"][temp], temp)
        rows.append({"method": method, "T": temp, "kl": kl, "kl_se": kl_se,
                     **is_row(flow, exact, temp, settings.n_eval),
                     "train_s": record["seconds"], "n_energy": record["history"][-1]["n_energy"]})
    return rows, None


def run_gmm(out_dir: Path, overrides: list[str], callback: Callback,
            executor: executors.Executor | None = None, device: str = "cpu") -> dict[str, Any]:
    """TRADE vs baselines on tempered-gmm-2d (data at T = 1 only, T in [0.162, 6.16]); the
    methods are tasks on `executor` (default serial), trained on `device`."""
    out_dir, settings, record = begin_run(out_dir, overrides, "trade-gmm")
    t0 = time.perf_counter()
    target = get_target("tempered-gmm-2d")
    torch.manual_seed(settings.seed + 1)
    references = {temp: gmm_reference(target, temp, settings.n_eval) for temp in GMM_TEMPERATURES}
    done, tally = run_methods("trade-gmm", settings, overrides, out_dir,
                              {"references": references}, callback, executor, device)
    rows = [r for v in done.values() for r in v["rows"]]
    write_tables(out_dir, rows, ("kl", "ess_fraction"), "T",
                 "trade-gmm: KL(p_T || q_T) (nats, exact log Z(T)) and IS ESS/N",
                 f"data at T = 1 only ({settings.n_data} samples); {settings.n_steps} steps.")
    if settings.figures:
        flows = {m: (load_flow(v), None) for m, v in done.items()}
        _density_figure(out_dir / "densities.png", target, flows, (0.336, 1.0, 2.976))
    headline = {"mean_kl": means_by_method(rows, "kl"),
                "mean_ess_fraction": means_by_method(rows, "ess_fraction"), **tally}
    return finish_run(out_dir, record, t0, headline)


def _density_figure(path: Path, target: Any, flows: dict[str, Any],
                    temperatures: tuple[float, ...]) -> None:
    """exp(log p - max) on a 200 x 200 grid: the exact tempered density and each flow's, one
    column per temperature (`plots.image_grid`)."""
    from boltzkit.app import plots

    g = torch.linspace(-8, 11, 200, dtype=torch.float64)
    xy = torch.cartesian_prod(g, g)
    images: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name in ["exact", *flows]:
            images[name] = {}
            for temp in temperatures:
                if name == "exact":
                    lp = target.uncounted().tempered(temp).log_prob(xy)
                else:
                    flow = flows[name][0]
                    lp = flow.log_prob(xy.to(dtype_of(flow)), temp).double()
                images[name][f"T={temp:g}"] = torch.exp(lp - lp.max()).reshape(200, 200).T
    plots.image_grid(images, path, extent=(-8, 11, -8, 11))


# ---- multi-well-5d --------------------------------------------------------------------------
MULTI_WELL_PROBLEM = {"parameter": "temperature", "c0": 1.0, "c_min": 0.5, "c_max": 1.0}


def multi_well_setup(settings: Settings, shared: dict[str, Any]) -> tuple:
    target = get_target("multi-well-5d")
    data = trade.Data(target.sample(settings.n_data).float(), 1.0)
    return Family(target), data, MULTI_WELL_PROBLEM, 0


def multi_well_score(method: str, flow: ConditionalFlow, record: dict[str, Any],
                     settings: Settings, shared: dict[str, Any]
                     ) -> tuple[list[dict[str, Any]], None]:
    target, rows = get_target("multi-well-5d").uncounted(), []
    for temp in (0.5, 0.7, 1.0):
        exact = target.tempered(temp)
        x = exact.sample(settings.n_eval)
        with torch.no_grad():
            gap = exact.log_prob(x) - exact.log_Z - flow.log_prob(
                x.to(dtype_of(flow)), temp).double()
        rows.append({"method": method, "T": temp, "kl": float(gap.mean()),
                     "kl_se": float(gap.std() / math.sqrt(len(gap))),
                     "forward_ess_fraction": estimators.forward_ess_fraction(-gap),
                     **is_row(flow, Family(target), temp, settings.n_eval),
                     "train_s": record["seconds"]})
    return rows, None


def run_multi_well(out_dir: Path, overrides: list[str], callback: Callback,
                   executor: executors.Executor | None = None, device: str = "cpu"
                   ) -> dict[str, Any]:
    """TRADE vs baselines on multi-well-5d (data at T = 1, T in [0.5, 1]); KL(p_T || q_T) from
    exact samples with the exact log Z, and ESS/N, at T = 0.5 and 1; the methods are tasks on
    `executor` (default serial), trained on `device`."""
    out_dir, settings, record = begin_run(out_dir, overrides, "trade-multi-well")
    t0 = time.perf_counter()
    done, tally = run_methods("trade-multi-well", settings, overrides, out_dir, {}, callback,
                              executor, device)
    rows = [r for v in done.values() for r in v["rows"]]
    write_tables(out_dir, rows, ("kl", "ess_fraction", "forward_ess_fraction"), "T",
                 "trade-multi-well: KL(p_T || q_T) (nats, exact samples) and ESS/N",
                 f"data at T = 1 only ({settings.n_data} samples); {settings.n_steps} steps.")
    headline = {"kl_T0.5": {r["method"]: r["kl"] for r in rows if r["T"] == 0.5},
                "ess_T0.5": {r["method"]: r["ess_fraction"] for r in rows if r["T"] == 0.5},
                **tally}
    return finish_run(out_dir, record, t0, headline)


__all__ = ["METHODS", "Settings", "begin_run", "finish_run", "gmm_kl", "gmm_reference",
           "grid_reference", "is_row", "means_by_method", "run_gmm", "run_multi_well",
           "method_task", "run_methods", "train_method", "trade_config"]
