"""`boltzkit experiment trade-aldp`: TRADE on alanine dipeptide, from 600 K MD data to 300-1000 K,
against its baselines and a 300 K flow Boltzmann generator (arXiv 2410.19492, "molecular
conformation generation"; ../shared/REFERENCE.md, "Alanine dipeptide").

The system is `aldp` (amber99sbildn + OBC2, H-bond constraints), on its 48 free internal
coordinates (`targets.molecules.constrained`: the density of constrained MD, torsions on the
circle); flows are "mixed" coupling flows (circular splines on the 19 dihedrals, splines on the
standardised bonds and angles). The condition is c = T / 600 K, so c0 = 1 and the range
[0.5, 5/3] covers 300 K to 1000 K (TRADE's own [0.4, 1.1] is relative to another reference
temperature). Data and references are the project's own MD (`boltzkit reference aldp`, cached
and found by their settings): 600 K frames split 0.8 / 0.05 / 0.15 (train / validation / test,
in time order; the flow kept is the one of lowest validation NLL after the warm-up), and
at 300 K (replica exchange), 450 K and 1000 K the reference frames.

Methods: those of `trade_exps.METHODS` (trade-free, trade-free-fit, latent_nll, reweight,
reverse_kl, ...) trained on the 600 K data over the range, and `bg-300`, a flow trained by
maximum likelihood on 80 % of the 300 K frames (the upper bound that needs data TRADE does not
use), evaluated at 300 K only; beside it `pt-300` and `md-300`, parallel tempering and plain
MD at 300 K with the same energy budget (`run`). Per method, seed and temperature: ESS/N
(Kish, from the real log-weights log gamma_T - log q_T; TRADE's notebook zeroed them), the
NLL of held-apart MD frames in internal coordinates (nats, per configuration), the 30 x 30
(phi, psi) histogram KL (reference || reweighted samples) and TV, the phi > 0 population of
the reweighted samples with its Kish SE beside the reference's (batch-means SE), the energy
W2 in kT of the systematically resampled set, and the D-alanine fraction; noise floors from
the reference (its two time-halves compared with each other), and the energy evaluations
spent. Writes results.csv, results.md (mean +- SE over seeds), summary.csv, settings.json and
the figures ramachandran_grid.png and free_energy_phi_<T>K.png.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit.core import config as configs
from boltzkit.core.callback import Callback
from boltzkit.core.errors import UsageError
from boltzkit.evaluate import metrics as sample_metrics
from boltzkit.evaluate import molecular
from boltzkit.experiments import trade_exps
from boltzkit.experiments.tables import seed_summary, write_tables
from boltzkit.mc.resampling import systematic
from boltzkit.models import flow_objectives
from boltzkit.models.flows import ConditionalFlow, make_flow
from boltzkit.samplers import trade
from boltzkit.targets.family import Family
from boltzkit.targets.molecules import aldp
from boltzkit.targets.molecules.constrained import ConstrainedInternalTarget

T0 = 600.0
# MD per temperature: (frames, MDConfig overrides, seed); `boltzkit reference aldp
# --temperature T --n-samples N --seed S --set ...` makes (and caches) the same set.
# The training sets (600 K, and 300 K for bg-300) are dense in time (0.3 and 0.25 ps between
# frames): with 4,800 frames at 600 K the flows overfitted (test NLL rose with training).
MD_FULL: dict[float, tuple[int, tuple[str, ...], int]] = {
    600.0: (20000, ("steps_per_frame=150",), 1),
    1000.0: (1500, ("steps_per_frame=250",), 2),
    450.0: (2000, ("steps_per_frame=500",), 3),
    300.0: (6000, ("steps_per_frame=125", "n_replicas=4", "temperature_max_K=900"), 4),
}
MD_QUICK_SETS = ("steps_per_frame=20", "n_equilibration_steps=200")
BG_300 = "bg-300"
# MCMC and MD at 300 K with the 300 K flow's energy budget (`Settings.baseline_budget`)
BASELINES = ("pt-300", "md-300")
METRICS = ("ess_fraction", "nll_test", "rama_kl", "rama_tv", "phi_positive", "energy_w2_kT",
           "d_alanine", "energy_evals")


@dataclass(frozen=True)
class Settings:
    """Experiment settings (`--set key=value`; `preset=quick` for a minutes-long smoke run)."""

    methods: tuple[str, ...] = ("trade-free", "trade-free-fit", "latent_nll", "reweight",
                                "reverse_kl", BG_300, *BASELINES)
    temperatures: tuple[float, ...] = (300.0, 450.0, 600.0, 1000.0)
    seeds: tuple[int, ...] = (0,)
    n_steps: int = 2000
    warmup_steps: int = 500
    n_layers: int = 6
    hidden: int = 128
    bins: int = 8
    bound: float = 5.0
    lr: float = 5e-4
    batch_size: int = 256
    n_eval: int = 5000
    quick_md_frames: int = 0  # > 0: short fresh MD of this many frames per temperature (tests)
    threads: int = 2
    figures: bool = True
    trade_set: tuple[str, ...] = ()
    baseline_budget: int = 0  # pt-300 / md-300; 0: what the 300 K flow cost (run docstring)


QUICK = {"methods": ("trade-free", "latent_nll", "reweight", BG_300), "n_steps": 6,
         "warmup_steps": 3, "n_layers": 2, "hidden": 16, "n_eval": 256, "quick_md_frames": 48,
         "figures": True}


def settings_from(overrides: list[str]) -> Settings:
    items = configs.parse_assignments(overrides)
    base = Settings(**QUICK) if items.pop("preset", "default") == "quick" else Settings()
    settings = configs.override(base, items)
    valid = [*trade_exps.METHODS, BG_300, *BASELINES]
    unknown = [m for m in settings.methods if m not in valid]
    if unknown:
        raise UsageError(f"unknown methods {unknown}; valid: {', '.join(valid)}")
    missing = [t for t in settings.temperatures if t not in MD_FULL]
    if missing and not settings.quick_md_frames:
        raise UsageError(f"no MD settings for temperatures {missing} K; valid: "
                         f"{', '.join(f'{t:g}' for t in sorted(MD_FULL))}")
    return settings


# ---- data ---------------------------------------------------------------------------------
def md_frames(temperature: float, settings: Settings, callback: Callback) -> tuple[Tensor, int]:
    """Cartesian MD frames `[n, 66]` of aldp at `temperature` K (cached; see MD_FULL) and the
    force evaluations they cost (every replica's steps, equilibration included)."""
    from boltzkit.app.md_reference import make_md_reference

    target = aldp(temperature=temperature)
    if settings.quick_md_frames:
        n, sets, seed = settings.quick_md_frames, MD_QUICK_SETS, 0
    else:
        n, sets, seed = MD_FULL[temperature]
    callback("log", message=f"MD frames at {temperature:g} K ({n}, cached when present)")
    ref = make_md_reference(target, n, sets=sets, seed=seed)
    return ref.samples.to(torch.float64), int(ref.metadata["counts"]["n_force_evals"])


def split(frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(train, validation, test): the first 80 %, the next 5 % and the last 15 % in time
    order. Validation frames choose the training step whose flow is kept (`trade.train`)."""
    n = len(frames)
    return frames[: int(0.8 * n)], frames[int(0.8 * n): int(0.85 * n)], frames[int(0.85 * n):]


# ---- evaluation ---------------------------------------------------------------------------
def reference_floor(reference: Tensor, energies: Tensor) -> dict[str, float]:
    """Noise floors: the reference's first time-half against its second."""
    h = len(reference) // 2
    a, b = molecular.torsions(reference[:h]), molecular.torsions(reference[h:])
    return {"rama_kl": molecular.ramachandran_kl(a, b), "rama_tv": molecular.ramachandran_tv(a, b),
            "energy_w2_kT": sample_metrics.energy_w2(energies[:h], energies[h:])}


@torch.no_grad()
def sample_metrics_at(x: Tensor, log_w: Tensor | None, temperature: float, reference: Tensor
                      ) -> tuple[dict[str, float], Tensor]:
    """Rama KL / TV, phi > 0 (with its SE) beside the reference's, energy W2 in kT at
    `temperature` and the D-alanine fraction of Cartesian samples `x` `[n, 66]`, weighted by
    `log_w`, or, with None, an equally weighted correlated series (chains or MD; phi > 0 SE by
    batch means over 10 blocks); returns them and the (resampled) samples."""
    molecule = aldp(temperature=temperature).uncounted()
    ref_t, x_t = molecular.torsions(reference), molecular.torsions(x)
    ref_pop = molecular.phi_positive_population(ref_t, n_blocks=10)
    pop = molecular.phi_positive_population(x_t, log_w, n_blocks=None if log_w is not None
                                            else 10)
    kept = x if log_w is None else x[systematic(log_w[None])[0]]
    return {
        "rama_kl": molecular.ramachandran_kl(x_t, ref_t, log_w=log_w),
        "rama_tv": molecular.ramachandran_tv(x_t, ref_t, log_w=log_w),
        "phi_positive": pop.fraction, "phi_positive_se": pop.se,
        "phi_positive_reference": ref_pop.fraction, "phi_positive_reference_se": ref_pop.se,
        "energy_w2_kT": sample_metrics.energy_w2(molecule.energy(kept), molecule.energy(reference)),
        "d_alanine": molecular.d_alanine_fraction(x, log_w).fraction,
    }, kept


@torch.no_grad()
def evaluate(flow: ConditionalFlow, space: ConstrainedInternalTarget, family: Family,
             temperature: float, reference: Tensor, test_y: Tensor, n: int
             ) -> tuple[dict[str, float], Tensor]:
    """The metrics of the flow at `temperature` (module docstring): ESS/N from the real
    log-weights, the test NLL and `sample_metrics_at` of the reweighted samples; returns them
    and the resampled Cartesian samples."""
    c = temperature / T0
    y, log_w, n_bad = flow_objectives.reweight(flow, family.at(c), n, c)
    weights = flow_objectives.summarise_weights(log_w)
    x = space.to_cartesian(y)[0]
    nll = -flow.log_prob(test_y.to(flow.loc.dtype), c).double().mean()
    row, kept = sample_metrics_at(x, log_w, temperature, reference)
    return {"ess_fraction": weights["ess_fraction"], "n_nonfinite_weights": n_bad,
            "nll_test": float(nll), **row}, kept


def run_baseline(method: str, budget: int, n: int, seed: int, callback: Callback
                 ) -> tuple[Tensor, int]:
    """Cartesian 300 K samples of "pt-300" (parallel tempering with the `aldp` preset in the
    free internal coordinates) or "md-300" (plain constrained Langevin MD, 2 fs, a tenth of
    the budget as equilibration, `n` frames evenly over the rest) under `budget` energy (force)
    evaluations, and the evaluations spent."""
    from boltzkit.app.md_reference import MDConfig, run_md
    from boltzkit.samplers import mcmc

    target = aldp(temperature=300.0)
    callback("log", message=f"{method}: {budget:,} energy evaluations (seed {seed})")
    if method == "pt-300":
        space = ConstrainedInternalTarget(target)
        torch.manual_seed(seed)
        result = mcmc.sample(space, mcmc.preset("aldp", sampler="pt"), n_samples=n,
                             budget=budget)
        return space.to_cartesian(result.samples)[0], int(result.counts["n_energy"])
    n_equilibration = budget // 10
    steps_per_frame = max(1, (budget - n_equilibration) // n)
    md = run_md(target, MDConfig(n_frames=n, steps_per_frame=steps_per_frame,
                                 n_equilibration_steps=n_equilibration, seed=seed + 1))
    return md.positions.to(torch.float64), int(md.n_steps)


# ---- training -----------------------------------------------------------------------------
def train_method(method: str, settings: Settings, family: Family,
                 boundaries: dict[float, tuple[trade.Data, trade.Data]], callback: Callback,
                 seed: int, device: str = "cpu") -> tuple[ConditionalFlow, dict[str, Any]]:
    """One flow: a TRADE method on the 600 K data, or bg-300 (NLL on 300 K data at c = 0.5),
    trained on `device` and returned on the CPU; `boundaries` maps a temperature to its
    (training, validation) data."""
    tsettings = trade_exps.Settings(
        n_steps=settings.n_steps, warmup_steps=settings.warmup_steps, kind="mixed",
        n_layers=settings.n_layers, hidden=settings.hidden, bins=settings.bins,
        bound=settings.bound, lr=settings.lr, trade_set=settings.trade_set)
    problem = {"c0": 1.0, "c_min": 300.0 / T0, "c_max": 1000.0 / T0,
               "batch_size": settings.batch_size}
    base = "nll_data" if method == BG_300 else method
    config = trade_exps.trade_config(tsettings, base, **problem)
    circular = tuple(int(i) for i in torch.nonzero(family.target.circular))
    config = replace(config, device=device,
                     **({"c0": 300.0 / T0} if method == BG_300 else {}))
    boundary, validation = boundaries[300.0 if method == BG_300 else T0]
    family, boundary = trade_exps.on_device(family, boundary, device)
    validation = trade_exps.on_device(family, validation, device)[1]
    torch.manual_seed(seed)
    arch = config.flow_config(family.target.dim, conditional=config.method != "latent_nll",
                              latent_power=config.latent_power(), circular=circular)
    with torch.device(device):
        flow = make_flow(arch, boundary.x).to(getattr(torch, config.dtype))
    callback("log", message=f"training {method} (seed {seed})")
    record = trade.train(flow, family, config, boundary, callback=callback,
                         validation=validation if config.uses_data else None)
    return flow.cpu().eval(), {**record, "uses_data": config.uses_data}


def run(out_dir: Path, overrides: list[str], callback: Callback, device: str = "cpu"
        ) -> dict[str, Any]:
    """The experiment (module docstring); flows train on `device`, evaluation runs on the
    CPU; returns the 300 K headline per method (means over the seeds).

    Costs (`energy_evals` per row, in energy or force evaluations): a flow costs the MD force
    evaluations of its data (600 K, or 300 K for bg-300; equilibration and every replica
    included; none for a method that fits no data, e.g. reverse_kl), its training's energy
    evaluations and the `n_eval` evaluations of its weights; pt-300 and md-300 get
    `baseline_budget`, by default bg-300's cost."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = settings_from(overrides)
    torch.set_num_threads(settings.threads)
    record = {"experiment": "trade-aldp", "settings": configs.to_dict(settings),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    space = ConstrainedInternalTarget(aldp(temperature=T0))
    family = Family(space, "temperature")
    at_300 = {BG_300, *BASELINES} & set(settings.methods)
    evaluated = sorted({*settings.temperatures, *((300.0,) if at_300 else ())})
    made = {t: md_frames(t, settings, callback) for t in sorted({T0, *evaluated})}
    frames = {t: x for t, (x, _) in made.items()}
    as_y = {t: space.wrap(space.from_cartesian(x)) for t, x in frames.items()}
    splits = {t: split(as_y[t]) for t in (T0, 300.0) if t in as_y}
    boundaries = {t: (trade.Data(train.float(), t / T0), trade.Data(val.float(), t / T0))
                  for t, (train, val, _) in splits.items()}
    # held-apart frames: the test split where a split trains a flow, else every frame
    tests = {t: splits[t][2] if t in splits else as_y[t] for t in evaluated}
    floors = {t: reference_floor(frames[t], aldp(temperature=t).energy(frames[t]))
              for t in evaluated}
    budget = settings.baseline_budget or (made[300.0][1] + settings.n_eval if at_300 else 0)
    callback("log", message=f"frames per temperature: { {t: len(x) for t, x in frames.items()} }")
    rows, samples, trained = [], {}, {}
    for seed in settings.seeds:
        for method in settings.methods:
            if method in BASELINES:
                began = time.perf_counter()
                x, spent = run_baseline(method, budget, settings.n_eval, seed, callback)
                row, kept = sample_metrics_at(x, None, 300.0, frames[300.0])
                rows.append({"method": method, "seed": seed, "temperature_K": 300.0, **row,
                             **{f"{k}_floor": v for k, v in floors[300.0].items()},
                             "energy_evals": spent, "budget": budget,
                             "seconds": time.perf_counter() - began})
                samples[(method, 300.0)] = kept
                continue
            flow, rec = train_method(method, settings, family, boundaries, callback, seed,
                                     device)
            trained[(method, seed)] = rec
            data_cost = made[300.0 if method == BG_300 else T0][1] if rec["uses_data"] else 0
            train_evals = rec["history"][-1]["n_energy"] if rec["history"] else 0
            for t in ((300.0,) if method == BG_300 else settings.temperatures):
                row, x = evaluate(flow, space, family, t, frames[t], tests[t], settings.n_eval)
                rows.append({"method": method, "seed": seed, "temperature_K": t, **row,
                             **{f"{k}_floor": v for k, v in floors[t].items()},
                             "energy_evals": data_cost + train_evals + settings.n_eval,
                             "train_seconds": rec["seconds"], "train_energy_evals": train_evals})
                samples[(method, t)] = x
    notes = ("ESS/N Kish from real log-weights; NLL in nats per configuration of held-apart "
             "MD frames in the 48 internal coordinates; rama_kl = KL(reference || samples), "
             "30 x 30 bins, nats; energy W2 in kT of the resampled set; floors: reference "
             "time-halves; energy_evals: MD data + training + weights (flows), the budget "
             "spent (pt-300, md-300); cells: mean +- SE over seeds")
    write_tables(out_dir, rows, METRICS, "temperature_K",
                 "TRADE on alanine dipeptide (aldp), data at 600 K", notes)
    if settings.figures:
        _figures(out_dir, frames, samples, evaluated)
    headline = {m: {k: cell.get(k) for k in METRICS}
                for (m, t), cell in seed_summary(rows, "temperature_K", METRICS).items()
                if t == 300.0}
    record.update(wall_s=time.perf_counter() - t0, headline=headline, baseline_budget=budget,
                  md_force_evals={f"{t:g}": cost for t, (_, cost) in made.items()},
                  training={f"{m}/{s}": {"seconds": r["seconds"], "n_steps": r["n_steps"]}
                            for (m, s), r in trained.items()})
    (out_dir / "settings.json").write_text(json.dumps(record, indent=2, default=str))
    return headline


def _figures(out_dir: Path, frames: dict[float, Tensor], samples: dict[tuple[str, float], Tensor],
             temperatures: list[float]) -> None:
    """ramachandran_grid.png (rows: the reference and each method; columns: temperatures) and
    free_energy_phi_<T>K.png (F along phi per method)."""
    from boltzkit.app import plots

    temps = list(temperatures)
    series = {"reference": {t: molecular.torsions(frames[t]) for t in temps}}
    for (method, t), x in samples.items():
        series.setdefault(method, {})[t] = molecular.torsions(x)
    plots.ramachandran_grid(series, out_dir / "ramachandran_grid.png")
    for t in temps:
        profiles = {name: molecular.free_energy_profile(by_t[t][:, 0])
                    for name, by_t in series.items() if t in by_t}
        plots.free_energy_profiles(profiles, out_dir / f"free_energy_phi_{t:g}K.png")
