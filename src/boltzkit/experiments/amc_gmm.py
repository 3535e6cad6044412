"""`boltzkit experiment amc-gmm`: diffusion-based annealed Monte Carlo on Gaussian mixtures
(Grenioux & Noble, "Diffusion-based Annealed Boltzmann Generators: benefits, pitfalls and hopes",
arXiv 2601.21026).

Each run: SMC along the diffusion path of a VP (or VE) schedule, N particles, `n_steps` noised
levels uniform in log-SNR then the exact target, a denoising kernel from
`boltzkit.diffusion.kernels` with the noising kernel as backward kernel, systematic resampling
at ESS/N < `ess_threshold`, optionally MALA refresh at each level. The diffusion model is the
perfect one (exact noised marginals) or learned by denoising score matching ("learned-energy":
SMC with the learned log-densities; "learned-score": AIS only, whose intermediate densities
telescope out).

Mixtures: "two-modes" (weights 2/3, 1/3 at -a 1 and +a 1, covariance 0.05 I), and "modes-K":
K components at a * s_k with s_k seeded random sign vectors in {-1, 1}^d, weights proportional
to 1..K, covariance 0.05 I. Metrics per run: mode-weight error max_k 100 |w_hat_k - w_k|
(percentage points; w_hat from the weighted particles assigned to their most likely component),
|log Z error| (log Z = 0), minimum ESS/N over levels and at the last level (before
resampling; for score-only models, whose per-level ESS is that of partial weights, only the
last one means anything), resampling count, evaluations (target,
model, Jacobian-vector products) and wall time; learned models add per-level Fisher divergence
and ESS of the learned log-density (`boltzkit.diffusion.learned.level_diagnostics`).

Each run, and each training of a learned model, is a task for `boltzkit.app.executors`
(`--executor serial|local|ray`); its result is kept in `out_dir/runs/KEY.json` (learned models
in `out_dir/models/`), and a re-run in the same directory skips what is there.

Outputs in `out_dir`: results.csv (one row per run), results.md (mean +- SE over seeds),
learned_levels.csv, configs.json, and figures error_vs_dim.png, ess_traces.png. Presets
(`preset=NAME`): "acceptance" (the issue's check), "quick" (seconds, for tests), "dims",
"modes", "mcmc", "learned" and "sweep" (all of them).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boltzkit.app.executors import Executor, Task, sweep, tally, task_key
from boltzkit.core import config as configs
from boltzkit.core import presets
from boltzkit.core.callback import Callback
from boltzkit.diffusion.kernels import KERNELS, NoisingKernel, make_kernel
from boltzkit.diffusion.learned import DSMConfig, level_diagnostics, train_dsm
from boltzkit.diffusion.schedules import SCHEDULES, PerfectModel, time_grid
from boltzkit.evaluate import metrics
from boltzkit.mc.mcmc import MALA
from boltzkit.mc.paths import DiffusionPath
from boltzkit.mc.smc import MCMCMove, Resampling, smc
from boltzkit.targets.gmm import GaussianMixture
from boltzkit.targets.mixtures import two_modes

ALL_KERNELS = tuple(KERNELS)


@dataclass(frozen=True)
class Config:
    """One block of runs: the product of mixtures x dims x separations x models x mcmc x
    kernels x seeds (kernels a model cannot run are skipped)."""

    mixtures: tuple[str, ...] = ("two-modes",)
    dims: tuple[int, ...] = (32,)
    separations: tuple[float, ...] = (3.0,)
    models: tuple[str, ...] = ("perfect",)
    kernels: tuple[str, ...] = ALL_KERNELS
    mcmc: tuple[bool, ...] = (False,)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    n_particles: int = 2000
    n_steps: int = 32
    grid: str = "log_snr"
    schedule: str = "vp"
    t_min: float = 1e-3
    ess_threshold: float = 0.5
    n_mcmc_steps: int = 2
    mcmc_step_size: float = 0.01
    train_steps: int = 3000
    train_hidden: int = 128
    figures: bool = True


PRESET_FILE = "amc_gmm"  # boltzkit/presets/amc_gmm.toml


def configs_from(overrides: list[str]) -> tuple[str, list[Config]]:
    """The preset named by `preset=...` (default "acceptance"), each block overridden."""
    items = configs.parse_assignments(overrides)
    name = items.pop("preset", "acceptance")
    found = presets.blocks(presets.load(PRESET_FILE), name, kind="amc-gmm preset")
    return name, [configs.override(configs.override(Config(), b), items) for b in found]


def make_mixture(name: str, d: int, a: float) -> GaussianMixture:
    """"two-modes" or "modes-K" (see the module docstring); seeded, float64."""
    if name == "two-modes":
        return two_modes(d, a)
    if not name.startswith("modes-"):
        raise KeyError(f"unknown mixture {name!r}; valid: two-modes, modes-K (K an integer)")
    k = int(name.split("-")[1])
    gen = torch.Generator().manual_seed(1000 * k + d)
    signs = torch.randint(0, 2, (k, d), generator=gen).double() * 2 - 1
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    return GaussianMixture(weights, a * signs, 0.05**0.5, name=name)


def weighted_mode_error(x: torch.Tensor, log_W: torch.Tensor, target: GaussianMixture) -> float:
    """max_k 100 |sum_i W_i 1[x_i in mode k] - w_k| (percentage points)."""
    labels = metrics.mode_assignments(x, target)
    w_hat = torch.zeros(target.n_components, dtype=torch.float64, device=x.device).index_add_(
        0, labels, log_W.exp())
    return float(100 * (w_hat - target.weights.double()).abs().max())


def run_one(target: GaussianMixture, model: Any, kernel_name: str, use_mcmc: bool, seed: int,
            cfg: Config) -> tuple[dict[str, Any], list[float]]:
    """One SMC run; returns its table row and ESS/N trace."""
    torch.manual_seed(seed)
    times = time_grid(model.schedule, cfg.n_steps, cfg.grid, t_min=cfg.t_min)
    path = DiffusionPath(model, target.uncounted(), times)
    kernel = make_kernel(kernel_name)
    mcmc = MCMCMove(MALA(cfg.mcmc_step_size), cfg.n_mcmc_steps) if use_mcmc else None
    threshold = cfg.ess_threshold if model.has_log_prob else 0.0
    counts0 = path.counts()
    start = time.perf_counter()
    res = smc(path, n_particles=cfg.n_particles, proposal=kernel, mcmc=mcmc,
              backward=None if kernel.deterministic else NoisingKernel(),
              resampling=Resampling("systematic", threshold))
    wall = time.perf_counter() - start
    ess = (res.diagnostics.ess / cfg.n_particles).tolist()
    spent = {k: v - counts0[k] for k, v in path.counts().items()}
    row = {"mode_weight_error_pp": weighted_mode_error(res.x, res.log_W, target),
           "abs_log_Z_error": abs(float(res.log_Z) - float(target.log_Z)),
           "min_ess_fraction": min(ess), "final_ess_fraction": ess[-1],
           "n_resampled": int(res.diagnostics.resampled.sum()),
           "n_target": spent["n_target"], "n_net": spent["n_net"], "n_jvp": spent["n_jvp"],
           "wall_s": wall}
    return row, ess


def train_model(cfg: dict[str, Any], mixture: str, d: int, a: float, model: str, path: str,
                device: str = "cpu") -> dict[str, Any]:
    """Task: trains the learned model `model` ("learned-energy" or "learned-score") by
    denoising score matching (seed 10000 + d) on `device`, saves it to `path` (torch.save) and
    returns its per-level diagnostic rows, final loss and training time."""
    config, target = configs.override(Config(), cfg), make_mixture(mixture, d, a).to(device)
    schedule = SCHEDULES[config.schedule]()
    torch.manual_seed(10_000 + d)
    dsm = DSMConfig(parametrisation=model.split("-")[1], n_steps=config.train_steps,
                    hidden=config.train_hidden)
    start = time.perf_counter()
    trained = train_dsm(target, schedule, dsm)
    wall = time.perf_counter() - start
    times = time_grid(schedule, config.n_steps, config.grid, t_min=config.t_min)[1:-1]
    diag = level_diagnostics(trained.model, PerfectModel(target, schedule), times)
    mode_err = 100 * (diag.mode_weights - target.weights.cpu()).abs().amax(-1)
    key = {"mixture": mixture, "d": d, "a": a, "model": model}
    rows = [{**key, "t": float(diag.times[i]), "log_snr": float(diag.log_snr[i]),
             "fisher": float(diag.fisher[i]), "ess_fraction": float(diag.ess_fraction[i]),
             "learned_mode_weight_error_pp": float(mode_err[i])} for i in range(len(times))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model, path)
    return {"rows": rows, "final_loss": sum(trained.losses[-50:]) / 50, "wall_s": wall}


def run_model(cfg: dict[str, Any], mixture: str, d: int, a: float, model: str, mcmc: bool,
              kernel: str, seed: int, model_path: str | None, device: str = "cpu"
              ) -> dict[str, Any]:
    """Task: one SMC run (`run_one`, seeded with `seed`) on `device` with the perfect model or
    the learned one saved at `model_path`; returns its table row and ESS/N trace."""
    config, target = configs.override(Config(), cfg), make_mixture(mixture, d, a).to(device)
    if model == "perfect":
        diffusion = PerfectModel(target, SCHEDULES[config.schedule]())
    else:
        diffusion = torch.load(model_path, map_location=device, weights_only=False)
    row, ess = run_one(target, diffusion, kernel, mcmc, seed, config)
    meta = {"mixture": mixture, "d": d, "a": a, "model": model, "mcmc": mcmc, "kernel": kernel,
            "seed": seed}
    return {"row": {**meta, **row}, "ess": ess}


def tasks(blocks: list[Config], out_dir: Path, device: str = "cpu"
          ) -> tuple[list[Task], list[Task]]:
    """The sweep as tasks on `device`: one training task per learned model and (mixture, d, a),
    one task per run (block x mixture x d x a x model x mcmc x kernel x seed; duplicates once).
    The device is no part of a task's key: a run finished on one device is not redone on
    another."""
    train: dict[str, Task] = {}
    runs: dict[str, Task] = {}
    for cfg in blocks:
        c = configs.to_dict(cfg)
        for mix, d, a, name in itertools.product(cfg.mixtures, cfg.dims, cfg.separations,
                                                 cfg.models):
            coords = {"cfg": c, "mixture": mix, "d": d, "a": a, "model": name}
            path = None
            if name != "perfect":
                key = task_key(f"train-{mix}-d{d}-a{a:g}-{name}", coords)
                path = str(out_dir / "models" / f"{key}.pt")
                train.setdefault(key, Task(key, train_model, {**coords, "path": path,
                                                                "device": device}))
            for use_mcmc, kernel, seed in itertools.product(cfg.mcmc, cfg.kernels, cfg.seeds):
                if not _valid(name, use_mcmc, kernel):
                    continue
                kw = {**coords, "mcmc": use_mcmc, "kernel": kernel, "seed": seed}
                key = task_key(f"{mix}-d{d}-a{a:g}-{name}-{'mcmc-' * use_mcmc}{kernel}-s{seed}",
                               kw)
                runs.setdefault(key, Task(key, run_model, {**kw, "model_path": path,
                                                            "device": device}))
    return list(train.values()), list(runs.values())


def run(out_dir: Path, overrides: list[str], callback: Callback,
        executor: Executor | None = None, device: str = "cpu") -> dict[str, Any]:
    """Diffusion-annealed SMC on Gaussian mixtures: denoising kernels x perfect/learned models.

    Runs the preset's blocks as independent tasks on `executor` (default serial; each task
    seeds itself, so the tables do not depend on it; runs finished in `out_dir/runs` by an
    earlier call are skipped), every run on `device`, writes the tables and figures, returns
    headline numbers."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    preset, blocks = configs_from(overrides)
    for cfg in blocks:
        _check_names(cfg)
    (out_dir / "configs.json").write_text(json.dumps(
        {"preset": preset, "blocks": [configs.to_dict(c) for c in blocks]}, indent=2))
    started = time.perf_counter()
    train_tasks, run_tasks = tasks(blocks, out_dir, device)
    trained = sweep(executor, train_tasks, out_dir / "runs", callback)
    for key, value in trained.values.items():
        callback("log", message=f"trained {key}: final loss {value['final_loss']:.4f} "
                 f"({value['wall_s']:.0f} s)")
    ready = [t for t in run_tasks if t.kwargs["model_path"] is None
             or Path(t.kwargs["model_path"]).exists()]
    done = sweep(executor, ready, out_dir / "runs", callback)
    rows = [v["row"] for v in done.values.values()]
    traces = {tuple(v["row"].values())[:7]: v["ess"] for v in done.values.values()}
    learned_rows = [r for v in trained.values.values() for r in v["rows"]]
    for name, table in (("results.csv", rows), ("learned_levels.csv", learned_rows)):
        (out_dir / name).unlink(missing_ok=True)
        for row in table:
            _append_csv(out_dir / name, row)
    summary = summarise(rows)
    (out_dir / "results.md").write_text(markdown_table(summary) + "\n" + "\n".join(
        pivot_table(summary, m, label) for m, label in (
            ("mode_weight_error_pp", "mode-weight error (pp)"),
            ("abs_log_Z_error", "abs log Z error"), ("min_ess_fraction", "min ESS/N"))))
    if any(c.figures for c in blocks):
        _figures(out_dir, summary, traces)
    out = headline(summary, preset, time.perf_counter() - started, len(rows))
    counted = tally(executor, trained, done)
    counted["n_failed"] += len(run_tasks) - len(ready)
    return {**out, **counted}


def _check_names(cfg: Config) -> None:
    unknown = sorted(set(cfg.kernels) - set(KERNELS))
    if unknown:
        raise KeyError(f"unknown kernel(s) {unknown}; valid kernels: {', '.join(KERNELS)}")
    bad = sorted(set(cfg.models) - {"perfect", "learned-energy", "learned-score"})
    if bad:
        raise KeyError(f"unknown model(s) {bad}; valid: perfect, learned-energy, learned-score")


def _valid(model: str, use_mcmc: bool, kernel: str) -> bool:
    """The exact kernel needs the perfect model; MCMC needs log-densities."""
    return (kernel != "exact" or model == "perfect") and not (use_mcmc and model ==
                                                               "learned-score")


GROUP = ("mixture", "d", "a", "model", "mcmc", "kernel")
METRICS = ("mode_weight_error_pp", "abs_log_Z_error", "min_ess_fraction", "final_ess_fraction",
           "n_resampled", "n_target", "n_net", "n_jvp", "wall_s")


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard error over seeds of every metric, per GROUP key."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP), []).append(row)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(GROUP, key, strict=True))
        entry["n_seeds"] = len(members)
        for m in METRICS:
            values = torch.tensor([float(r[m]) for r in members], dtype=torch.float64)
            entry[m] = float(values.mean())
            entry[m + "_se"] = float(values.std() / math.sqrt(len(values))) if len(
                values) > 1 else float("nan")
        out.append(entry)
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """The summary as a markdown table (mean +- SE over seeds)."""
    head = ("| mixture | d | a | model | MCMC | kernel | mode-weight err (pp) | abs log Z err "
            "| min ESS/N | resamplings | target evals | model evals | JVPs | wall (s) |\n")
    lines = [head, "|---" * 14 + "|\n"]
    for s in summary:
        lines.append(
            f"| {s['mixture']} | {s['d']} | {s['a']:g} | {s['model']} | "
            f"{'yes' if s['mcmc'] else 'no'} | {s['kernel']} | "
            f"{_pm(s, 'mode_weight_error_pp', '.2f')} | {_pm(s, 'abs_log_Z_error', '.3f')} | "
            f"{s['min_ess_fraction']:.3f} | "
            f"{s['n_resampled']:.1f} | {s['n_target']:.0f} | {s['n_net']:.0f} | "
            f"{s['n_jvp']:.2g} | {s['wall_s']:.1f} |\n")
    return "".join(lines)


def pivot_table(summary: list[dict[str, Any]], metric: str, label: str) -> str:
    """Mean `metric` over seeds, one row per (mixture, a, model, mcmc, kernel), one column per
    dimension d (markdown)."""
    dims = sorted({s["d"] for s in summary})
    cells: dict[tuple, dict[int, float]] = {}
    for s in summary:
        key = (s["mixture"], s["a"], s["model"], "yes" if s["mcmc"] else "no", s["kernel"])
        cells.setdefault(key, {})[s["d"]] = s[metric]
    lines = [f"{label}, mean over seeds\n\n",
             "| mixture | a | model | MCMC | kernel | " + " | ".join(f"d={d}" for d in dims)
             + " |\n", "|---" * (5 + len(dims)) + "|\n"]
    for (mix, a, model, mcmc, kernel), by_d in cells.items():
        values = " | ".join(f"{by_d[d]:.3g}" if d in by_d else "" for d in dims)
        lines.append(f"| {mix} | {a:g} | {model} | {mcmc} | {kernel} | {values} |\n")
    return "".join(lines)


def _pm(entry: dict[str, Any], metric: str, fmt: str) -> str:
    se = entry[metric + "_se"]
    return f"{entry[metric]:{fmt}}" + ("" if math.isnan(se) else f" ± {se:{fmt}}")


def headline(summary: list[dict[str, Any]], preset: str, wall: float,
             n_runs: int) -> dict[str, Any]:
    """Per-kernel means of the first (mixture, d, a, model, mcmc) group; for the acceptance
    preset, whether second-order and transport pass and first order is clearly worse."""
    out: dict[str, Any] = {"preset": preset, "n_runs": n_runs, "wall_s": wall}
    first = summary[0] if summary else None
    head = [s for s in summary if first and all(s[k] == first[k] for k in GROUP[:-1])]
    for s in head:
        out[f"{s['kernel']}/mode_weight_error_pp"] = s["mode_weight_error_pp"]
        out[f"{s['kernel']}/abs_log_Z_error"] = s["abs_log_Z_error"]
    if preset == "acceptance":
        by = {s["kernel"]: s for s in head}
        good = [by[k] for k in ("second-order", "ddim", "pf-euler") if k in by]
        bad = [by[k] for k in ("first-order-ratio", "first-order-forward") if k in by]
        out["acceptance_passed"] = bool(good and bad) and all(
            g["mode_weight_error_pp"] < 2 and g["abs_log_Z_error"] < 0.05 for g in good) and all(
            b["mode_weight_error_pp"] > max(g["mode_weight_error_pp"] for g in good)
            for b in bad)
    return out


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _figures(out_dir: Path, summary: list[dict[str, Any]], traces: dict[tuple, list[float]]
             ) -> None:
    """error_vs_dim.png (perfect model, no MCMC, one panel per mixture and separation) and
    ess_traces.png (ESS/N per level, first seed of the first group). Local to this experiment
    until boltzkit.app.plots takes it over; matplotlib is imported lazily with the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(s["mixture"], s["a"]) for s in summary
                     if s["model"] == "perfect" and not s["mcmc"]})
    if panels:
        fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 6.5), squeeze=False)
        for j, (mix, a) in enumerate(panels):
            for kernel in dict.fromkeys(s["kernel"] for s in summary):
                pts = sorted((s["d"], s["mode_weight_error_pp"], s["abs_log_Z_error"])
                             for s in summary if (s["mixture"], s["a"], s["kernel"]) ==
                             (mix, a, kernel) and s["model"] == "perfect" and not s["mcmc"])
                if pts:
                    axes[0, j].plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=kernel)
                    axes[1, j].plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=kernel)
            axes[0, j].set_title(f"{mix}, a = {a:g}")
            for i, label in enumerate(("mode-weight error (pp)", "|log Z error|")):
                axes[i, j].set(xscale="log", yscale="log", xlabel="d", ylabel=label)
        axes[0, -1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "error_vs_dim.png", dpi=120)
        plt.close(fig)
    if traces:
        first = next(iter(traces))
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, ess in traces.items():
            if key[:5] == first[:5] and key[6] == first[6]:
                ax.plot(range(1, len(ess) + 1), ess, label=key[5])
        mix, d, a, model, mcmc = first[:5]
        ax.set(xlabel="level", ylabel="ESS / N (before resampling)", yscale="log",
               title=f"{mix}, d = {d}, a = {a:g}, {model} model{', MCMC' if mcmc else ''}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "ess_traces.png", dpi=120)
        plt.close(fig)

