"""TRADE experiments beyond the temperature targets: phi^4 over the hopping parameter kappa and
tempered two-moons posteriors over the likelihood power beta (arXiv 2410.19492, sections on
lattice field theory and tempered Bayesian inference). Shared settings and tables come from
`boltzkit.experiments.trade_exps`.

- phi4 (8 x 8, lam = 0.02): boundary data at kappa = 0.25 and 0.29 from HMC with exact Z2 flips
  (`phi4_mcmc`), one flow over kappa in [0.22, 0.32]; <|m|>, action per site, susceptibility and
  Binder cumulant vs kappa from the reweighted flow against HMC references (bootstrap over
  independent chains), and ESS/N vs kappa. The default TRADE variants fit E_c[A] instead of
  importance sampling it: with 64 sites the flow's SNIS estimate rests on one or two samples,
  and a residual with a wrong constant cannot be zeroed by any normalised q (E_q[d/dc log q] =
  0), so it pushes on the flow everywhere and drags it away from the data (trade-grid: ESS/N
  1e-4, action per site 1.2 to 2.2 against 0.47 to -0.77 by HMC; README, TRADE).
- two-moons: data at beta = 1 only (joint simulator draws, amortised over y), beta in
  [0.4, 2.1]; at beta in {0.5, 1, 2} and a set of simulated observations: KL(p || q) against the
  posterior by 2-D grid quadrature (exact up to the grid, so used instead of MCMC), a posterior
  calibration curve (coverage of the flow's highest-density regions) and IS ESS/N.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit.app.executors import Executor
from boltzkit.core.callback import Callback
from boltzkit.experiments import trade_exps as tx
from boltzkit.experiments.tables import write_tables
from boltzkit.mc import estimators
from boltzkit.mc.mcmc import HMC
from boltzkit.models import flow_objectives
from boltzkit.models.flows import ConditionalFlow, dtype_of
from boltzkit.samplers import trade
from boltzkit.targets.family import Family
from boltzkit.targets.lattice import Phi4
from boltzkit.targets.two_moons import TwoMoonsPosterior

PHI4_KAPPAS = (0.22, 0.24, 0.25, 0.26, 0.27, 0.28, 0.29, 0.30, 0.32)
PHI4_OBSERVABLES = ("abs_m", "action", "chi", "binder")
MOONS_BETAS = (0.5, 1.0, 2.0)


# ---- phi4 ---------------------------------------------------------------------------------
def phi4_mcmc(target: Phi4, n_chains: int, n_burn: int, n_keep: int, thin: int) -> Tensor:
    """HMC draws `[n_keep, n_chains, V]` (float64): step sizes adapted during burn-in only, then
    frozen; a global flip phi -> -phi with probability 1/2 after each kept draw (S is even, so
    the flip is an exact invariant move that mixes the two ordered phases)."""
    kernel = HMC(step_size=0.2, n_leapfrog=8)
    state = kernel.init(torch.randn(n_chains, target.dim, dtype=torch.float64), target)
    for _ in range(n_burn):
        state, info = kernel.step(state, target)
        kernel = kernel.adapted(info)
    draws = []
    for _ in range(n_keep):
        for _ in range(thin):
            state, _ = kernel.step(state, target)
        sign = torch.where(torch.rand(n_chains, 1, dtype=torch.float64) < 0.5, -1.0, 1.0)
        state = kernel.init(state.x * sign, target)
        draws.append(state.x)
    return torch.stack(draws)


def phi4_observables(x: Tensor, log_w: Tensor | None, target: Phi4) -> dict[str, float]:
    """<|m|>, action per site, chi = V (<m^2> - <|m|>^2), U = 1 - <m^4> / (3 <m^2>^2), as
    (self-normalised) weighted averages over x `[n, V]`."""
    m = x.mean(-1)
    w = torch.ones_like(m) if log_w is None else (
        estimators.normalised_weights(log_w).to(m.dtype) * len(m))
    avg = lambda f: float((w * f).mean())  # noqa: E731
    m1, m2, m4 = avg(m.abs()), avg(m**2), avg(m**4)
    return {"abs_m": m1, "action": avg(target.action(x)) / target.dim,
            "chi": target.dim * (m2 - m1**2), "binder": 1 - m4 / (3 * m2**2)}


def bootstrap(groups: Tensor, log_w: Tensor | None, target: Phi4, n_boot: int = 200
              ) -> dict[str, tuple[float, float]]:
    """Observables and bootstrap SEs, resampling the leading axis of groups `[G, ..., V]`
    (independent chains, or single i.i.d. flow draws with their log weights `[G]`)."""
    flat = lambda g: g.reshape(-1, target.dim)  # noqa: E731
    est = phi4_observables(flat(groups), None if log_w is None else log_w.flatten(), target)
    reps = []
    for _ in range(n_boot):
        idx = torch.randint(len(groups), (len(groups),))
        lw = None if log_w is None else log_w[idx].flatten()
        reps.append(phi4_observables(flat(groups[idx]), lw, target))
    return {k: (v, float(torch.tensor([r[k] for r in reps]).std())) for k, v in est.items()}


PHI4_PROBLEM = {"parameter": "kappa", "c0": 0.25, "c_min": 0.22, "c_max": 0.32}


def phi4_setup(settings: tx.Settings, shared: dict[str, Any]) -> tuple:
    """The boundary data: the HMC draws at kappa = 0.25 and 0.29 (shared)."""
    refs, target = shared["refs"], Phi4(8, 0.02, 0.25)
    xs = torch.cat([refs[k].reshape(-1, target.dim) for k in (0.25, 0.29)])
    cs = torch.tensor([0.25, 0.29]).repeat_interleave(len(xs) // 2)
    return Family(target), trade.Data(xs.float(), cs.float()), PHI4_PROBLEM, 0


def phi4_score(method: str, flow: ConditionalFlow, record: dict[str, Any],
               settings: tx.Settings, shared: dict[str, Any]) -> tuple[list[dict], None]:
    target = Phi4(8, 0.02, 0.25)
    return [{"method": method, "kappa": kappa, "train_s": record["seconds"],
             **_phi4_flow_row(flow, target, kappa, settings.n_eval)}
            for kappa in PHI4_KAPPAS], None


def phi4_experiment(out_dir: Path, overrides: list[str], callback: Callback,
                    executor: Executor | None = None, device: str = "cpu") -> dict[str, Any]:
    """One flow over kappa in [0.22, 0.32] from HMC data at kappa = 0.25 and 0.29; the HMC
    references are drawn first, then the methods are tasks on `executor` (default serial),
    trained on `device`."""
    items = list(overrides) + ([] if any(o.startswith("methods=") for o in overrides)
                               else ["methods=trade-grid-fit,trade-free-fit,nll_data"])
    out_dir, settings, record = tx.begin_run(out_dir, items, "trade-phi4")
    t0, quick = time.perf_counter(), settings.n_steps < 100
    target = Phi4(8, 0.02, 0.25)
    n_chains, n_burn, n_keep, thin = (16, 20, 4, 2) if quick else (256, 300, 40, 5)
    refs = {}
    for kappa in PHI4_KAPPAS:
        callback("log", message=f"HMC reference at kappa = {kappa}")
        refs[kappa] = phi4_mcmc(target.uncounted().with_kappa(kappa), n_chains, n_burn, n_keep,
                                thin).transpose(0, 1)  # [chains, keep, V]
    done, tally = tx.run_methods("trade-phi4", settings, items, out_dir, {"refs": refs},
                                 callback, executor, device)
    rows = []
    for i, kappa in enumerate(PHI4_KAPPAS):
        mc = bootstrap(refs[kappa], None, target.with_kappa(kappa))
        rows.append({"method": "hmc", "kappa": kappa, **{k: v[0] for k, v in mc.items()},
                     **{f"{k}_se": v[1] for k, v in mc.items()}})
        rows += [value["rows"][i] for value in done.values()]
    write_tables(out_dir, rows, ("ess_fraction", *PHI4_OBSERVABLES, "abs_m_raw"), "kappa",
                    "trade-phi4: flow (reweighted; abs_m_raw unweighted) vs HMC",
                    f"HMC: {n_chains} chains x {n_keep} draws per kappa, bootstrap over chains "
                    f"in results.csv (*_se); flows: {settings.n_steps} steps.")
    if settings.figures:
        phi4_figure(out_dir / "observables.png", rows)
    headline = {"mean_ess_fraction": tx.means_by_method(
        [r for r in rows if r["method"] != "hmc"], "ess_fraction"), **tally}
    return tx.finish_run(out_dir, record, t0, headline)


PHI4_LABELS = {"abs_m": "<|m|>", "action": "action per site", "chi": "susceptibility",
               "binder": "Binder cumulant", "ess_fraction": "IS ESS / N"}


def phi4_figure(path: Path, rows: list[dict[str, Any]]) -> Path:
    """ESS/N and each observable against kappa, one curve per method (HMC the reference; its
    and the flows' bootstrap errors are the *_se columns of results.csv)."""
    from boltzkit.app import plots

    grid: dict[str, dict[str, dict[str, Any]]] = {}
    for key, label in PHI4_LABELS.items():
        curves: dict[str, Any] = {}
        for method in dict.fromkeys(r["method"] for r in rows):  # NaN: no value (HMC ESS),
            pts = [(r["kappa"], r.get(key, math.nan)) for r in rows if r["method"] == method]
            curves[method] = tuple(zip(*pts, strict=True))  # so colours match across panels
        grid[label] = {"phi4 8x8, lam = 0.02": curves}
    return plots.curve_grid(grid, path, xlabel="kappa")


@torch.no_grad()
def _phi4_flow_row(flow: ConditionalFlow, target: Phi4, kappa: float, n: int) -> dict[str, Any]:
    at = target.uncounted().with_kappa(kappa)
    x, log_q = flow.sample_and_log_prob(n, kappa)
    log_w, _ = flow_objectives.guarded_log_w(at.log_prob(x.double()), log_q)
    x = x.double()
    obs = bootstrap(x[:, None], log_w[:, None], target.with_kappa(kappa), n_boot=50)
    return {"ess_fraction": estimators.ess_fraction(log_w),
            **{k: v[0] for k, v in obs.items()}, **{f"{k}_se": v[1] for k, v in obs.items()},
            "abs_m_raw": float(x.mean(-1).abs().mean())}


# ---- two moons ----------------------------------------------------------------------------
def moons_reference(target: TwoMoonsPosterior, y: Tensor, beta: float, n: int
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """`grid_reference` draws from p_beta(theta | y), h = 0.0015 over the prior's +-4.5 std box
    (the posterior's arcs have width ~ 0.01 / sqrt(beta))."""
    post = target.uncounted().with_context(y).with_beta(beta)
    half = 4.5 * target.prior_std
    box = torch.full((2,), half, dtype=torch.float64)
    return tx.grid_reference(post.log_prob, -box, box, 0.0015, n)


@torch.no_grad()
def calibration(flow: ConditionalFlow, ref: tuple[Tensor, Tensor, Tensor], beta: float,
                y: Tensor, levels: Tensor) -> Tensor:
    """Coverage of the flow's HPD regions: for each level a, the p-probability that a posterior
    draw lies in the flow's a-HPD region {q >= (1 - a) quantile of q over flow draws}. A
    calibrated flow gives coverage = a."""
    dt = dtype_of(flow)
    theta, _, log_w = ref
    _, log_q_flow = flow.sample_and_log_prob(len(theta), beta, y.to(dt))
    log_q_ref = flow.log_prob(theta.to(dt), beta, y.to(dt))
    rank = (log_q_flow[None, :] > log_q_ref[:, None]).double().mean(1)  # HPD level of each draw
    w = estimators.normalised_weights(log_w)
    return ((rank[None, :] <= levels[:, None]).double() * w).sum(1)


MOONS_PROBLEM = {"parameter": "beta", "c0": 1.0, "c_min": 0.4, "c_max": 2.1}


def moons_setup(settings: tx.Settings, shared: dict[str, Any]) -> tuple:
    """Joint simulator draws at beta = 1, amortised over y."""
    target = TwoMoonsPosterior()
    theta, y = target.sample_joint(settings.n_data)
    return Family(target), trade.Data(theta.float(), 1.0, y.float()), MOONS_PROBLEM, 2


def moons_score(method: str, flow: ConditionalFlow, record: dict[str, Any],
                settings: tx.Settings, shared: dict[str, Any]
                ) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Rows per beta and the coverage curves (extra: beta -> coverage)."""
    rows, curves = [], {}
    for beta in MOONS_BETAS:
        scores = _moons_scores(flow, TwoMoonsPosterior(), shared["refs"][beta],
                               shared["observations"], beta, shared["levels"], settings.n_eval)
        curves[str(beta)] = scores.pop("coverage")
        rows.append({"method": method, "beta": beta, **scores})
    return rows, curves


def two_moons_experiment(out_dir: Path, overrides: list[str], callback: Callback,
                         executor: Executor | None = None, device: str = "cpu"
                         ) -> dict[str, Any]:
    """TRADE vs the beta = 1 flow (latent scaling) on tempered two-moons posteriors; the
    observations and grid references are drawn first (seed + 1), then the methods are tasks on
    `executor` (default serial), trained on `device`."""
    items = list(overrides) + ([] if any(o.startswith("methods=") for o in overrides)
                               else ["methods=trade-free,latent_nll"])
    out_dir, settings, record = tx.begin_run(out_dir, items, "trade-two-moons")
    t0 = time.perf_counter()
    target = TwoMoonsPosterior()
    n_obs = 3 if settings.n_steps < 100 else 10
    torch.manual_seed(settings.seed + 1)
    _, observations = target.sample_joint(n_obs)
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    refs = {beta: [moons_reference(target, y_j, beta, min(settings.n_eval, 4000))
                   for y_j in observations] for beta in MOONS_BETAS}
    shared = {"refs": refs, "observations": observations, "levels": levels}
    done, tally = tx.run_methods("trade-two-moons", settings, items, out_dir, shared, callback,
                                 executor, device)
    rows = sorted((r for v in done.values() for r in v["rows"]),
                  key=lambda r: MOONS_BETAS.index(r["beta"]))
    curves = {(m, beta): v["extra"][str(beta)] for m, v in done.items() for beta in MOONS_BETAS}
    write_tables(out_dir, rows, ("kl", "calibration_error", "ess_fraction"), "beta",
                    "trade-two-moons: KL(p || q), max |coverage - level| and ESS/N, mean over "
                    f"{n_obs} observations", f"data at beta = 1 only; {settings.n_steps} steps.")
    if settings.figures:
        calibration_figure(out_dir / "calibration.png", levels, curves)
    headline = {m: {r["beta"]: r["kl"] for r in rows if r["method"] == m} for m in done}
    return tx.finish_run(out_dir, record, t0, {**headline, **tally})


def calibration_figure(path: Path, levels: Tensor,
                       curves: dict[tuple[str, float], list[float]]) -> Path:
    """Posterior calibration curves (coverage of the flow's HPD regions against their level,
    mean over observations), one panel per beta; the diagonal is perfect calibration."""
    from boltzkit.app import plots

    panels: dict[str, dict[str, Any]] = {}
    for (method, beta), coverage in curves.items():
        panel = panels.setdefault(f"beta = {beta:g}", {"ideal": (levels, levels)})
        panel[method] = (levels, coverage)
    return plots.curve_grid({"coverage": panels}, path, xlabel="HPD level")


def _moons_scores(flow: ConditionalFlow, target: TwoMoonsPosterior, refs: list, ys: Tensor,
                  beta: float, levels: Tensor, n_eval: int) -> dict[str, float]:
    kls, cal, ess, coverage = [], [], [], []
    dt = dtype_of(flow)
    for ref, y in zip(refs, ys, strict=True):
        with torch.no_grad():
            log_q = flow.log_prob(ref[0].to(dt), beta, y.to(dt)).double()
        kls.append(float(estimators.snis(ref[2], ref[1] - log_q).mean))
        cover = calibration(flow, ref, beta, y, levels)
        coverage.append(cover)
        cal.append(float((cover - levels).abs().max()))
        post = target.uncounted().with_context(y).with_beta(beta)
        ev = trade.evaluate(flow, Family(post, "beta"), beta, min(n_eval, 4000), y.to(dt))
        ess.append(ev["ess_fraction"])
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"kl": mean(kls), "calibration_error": mean(cal), "ess_fraction": mean(ess),
            "kl_max": max(kls), "coverage": torch.stack(coverage).mean(0).tolist()}
