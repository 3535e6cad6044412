"""TRADE: one conditional flow q_theta(x | c) for a whole range of an external parameter c.

With gamma(x | c) = exp(-S(x; c)) and A(x; c) = dS/dc, the exact conditional law obeys
    d/dc log p(x | c) = E_{p(.|c)}[A] - A(x; c).
TRADE fits the boundary p(. | c0) (NLL on samples, or reverse KL without data) and propagates it by
    L = L_boundary + lambda * E_c E_x rho(d/dc log q_theta(x | c) - (E_c[A] - A(x; c))),
rho Huber or MSE, d/dc log q_theta by autograd with create_graph, A by autograd through the
target's parametrised energy (`family.at(c)` with c a tensor), and E_c[A] by self-normalised
importance sampling: flow samples at c, flow samples at c0 reweighted by gamma(x|c)/q(x|c0), or a
per-grid-point EMA refreshed every K steps; or (constant="fitted") not estimated at all but fitted
per condition as the location of d/dc log q + A that minimises rho (mean for MSE, Huber M-estimate
for Huber): E_q[d/dc log q] = 0 for a normalised q, so a residual constant in x forces that
constant to be E_c[A]; the fitted loss has the same solutions and needs no importance weights
(whose ESS collapses on phi4, 64 sites). Conditions come from a curriculum widening from c0 or
from a log grid with causality weights w_k = exp(-eps * sum of the losses between c0 and c_k).
Baselines in the same loop: NLL at c0 with latent temperature scaling only, reverse KL over the
range, NLL + reverse KL, and NLL on c0 data reweighted to c.

Conditions and the E_c[A] estimators live in `boltzkit.samplers.trade.conditions` (re-exported).

Reference: Wahl, Rousselot, Draxler, Schopmans, Koethe, TRADE, arXiv 2410.19492. Causality
weights: Wang, Sankaran, Perdikaris, arXiv 2203.07404.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from boltzkit.core.errors import UsageError
from boltzkit.mc import estimators
from boltzkit.models import flow_objectives
from boltzkit.models.flows import ConditionalFlow, dtype_of, make_flow
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.samplers import run as skeleton
from boltzkit.samplers.trade.conditions import (
    GridEMA,
    causality_weights,
    curriculum_conditions,
    fitted_constant,
    log_grid,
    snis,
)
from boltzkit.samplers.trade.config import Config, Data
from boltzkit.targets.family import Family, action_derivative, surrogate_family


def rho(r: Tensor, config: Config) -> Tensor:
    """The residual penalty, elementwise."""
    if config.rho == "mse":
        return r.square()
    return F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=config.huber_delta)


def flow_derivative(flow: ConditionalFlow, x: Tensor, c: Tensor,
                    context: Tensor | None = None) -> Tensor:
    """d/dc log q_theta(x | c) `[n]` by autograd, differentiable in theta (create_graph)."""
    with torch.enable_grad():
        c = c.detach().to(dtype_of(flow)).requires_grad_(True)
        log_q = flow.log_prob(x.detach(), c, context)
        (grad,) = torch.autograd.grad(log_q.sum(), c, create_graph=True)
    return grad


def propagation_loss(
    flow: ConditionalFlow, family: Family, c: Tensor, config: Config,
    context: Tensor | None = None, expectation: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Per-condition TRADE residual losses `[G]` for conditions c `[G]`, m samples each.

    The residual points x come from the flow at c (at c0 for expectation "flow_c0"), which are
    also the SNIS proposal for E_c[A] unless `expectation` `[G]` (the EMA) is given.
    """
    g, m = len(c), config.n_per_condition
    c_rep = c.to(dtype_of(flow)).repeat_interleave(m)
    ctx = None if context is None else context.repeat_interleave(m, 0)
    c_prop = torch.full_like(c_rep, config.c0) if config.expectation == "flow_c0" else c_rep
    with torch.no_grad():
        x, log_q = flow.sample_and_log_prob(g * m, c_prop, ctx)
    log_gamma, a = action_derivative(family, x, c_rep, ctx)
    valid = torch.isfinite(log_gamma) & torch.isfinite(a) & torch.isfinite(log_q)
    a = torch.where(valid, a, torch.zeros_like(a))
    log_w = torch.where(valid, log_gamma.double() - log_q.double(), -math.inf).view(g, m)
    mean_a, ess = snis(log_w, a.view(g, m))
    if expectation is not None:
        mean_a = expectation.double()
    dlog_q = flow_derivative(flow, x, c_rep, ctx)
    if config.constant == "fitted":
        mean_a = fitted_constant(dlog_q.detach().double() + a, valid, c_rep.double(), g, config)
    residual = dlog_q - (mean_a.repeat_interleave(m) - a)
    if config.residual_in_log_c:
        residual = residual * c_rep
    if config.residual_scale == "spread":
        residual = residual / _spread(a * (c_rep if config.residual_in_log_c else 1.0), valid, g, m)
    per_x = torch.where(valid, rho(residual, config), torch.zeros_like(residual)).view(g, m)
    n_ok = valid.view(g, m).sum(-1).clamp_min(1)
    info = {"ess_fraction": (ess / m).tolist(), "n_nonfinite": int((~valid).sum())}
    return per_x.sum(-1) / n_ok, info


def _spread(v: Tensor, valid: Tensor, g: int, m: int) -> Tensor:
    """Per condition max(1, 1.4826 * MAD of v over the valid points), repeated to `[g * m]`."""
    v = torch.where(valid, v.double(), math.nan).view(g, m)
    med = torch.nanmedian(v, -1, keepdim=True).values
    mad = torch.nanmedian((v - med).abs(), -1).values.nan_to_num(0.0)
    return (1.4826 * mad).clamp_min(1.0).repeat_interleave(m).detach()


def reverse_kl_range_loss(flow: ConditionalFlow, family: Family, config: Config,
                          context: Tensor | None) -> tuple[Tensor, int]:
    """Reverse KL averaged over conditions drawn log-uniformly over [c_min, c_max]."""
    n = config.batch_size
    c = curriculum_conditions(config, n, 1.0).to(dtype_of(flow))
    return flow_objectives.reverse_kl_loss(flow, family.at(c, context), n, c, context)


def reweight_loss(flow: ConditionalFlow, family: Family, data: Data, config: Config) -> Tensor:
    """NLL at conditions c_g on c0 data reweighted by gamma(x|c_g)/gamma(x|c0) (SNIS per c_g)."""
    g, m = config.n_conditions, config.n_per_condition
    c = curriculum_conditions(config, g, 1.0).to(dtype_of(flow)).repeat_interleave(m)
    x, c_data, ctx = data.batch(m)
    x, ctx = x.repeat(g, 1), None if ctx is None else ctx.repeat(g, 1)
    with torch.no_grad():
        log_w = family.at(c, ctx).log_prob(x) - family.at(c_data.repeat(g), ctx).log_prob(x)
        w = estimators.normalised_weights(log_w.view(g, m)).flatten()
    return -(w.to(x.dtype) * flow.log_prob(x, c, ctx)).sum() / g


# ---- training ---------------------------------------------------------------------------
def _propagation_term(flow: ConditionalFlow, family: Family, config: Config, data: Data | None,
                      ema: GridEMA | None, progress: float, record: dict[str, Any]) -> Tensor:
    if config.conditions == "grid":
        c = log_grid(config)
    else:
        c = curriculum_conditions(config, config.n_conditions, progress)
    context = None if data is None or data.context is None else data.batch(len(c))[2]
    expectation = None if ema is None else ema(c)
    losses, info = propagation_loss(flow, family, c, config, context, expectation)
    record["n_nonfinite"] += info["n_nonfinite"]
    record["last_ess_fraction"] = info["ess_fraction"]
    # the points of that list are conditions, not steps: figures plot it against them
    record["last_ess_fraction_x"] = c.tolist()
    record["last_ess_fraction_xlabel"] = f"condition c ({config.parameter})"
    if config.conditions == "grid":
        w = causality_weights(c, losses, config.c0, config.causality_eps)
        record["last_causality_weights"] = w.tolist()
        return (w.to(losses.dtype) * losses).mean()
    return losses.mean()


def _boundary_term(flow: ConditionalFlow, family: Family, config: Config,
                   data: Data | None, record: dict[str, Any]) -> Tensor:
    if config.boundary == "nll":
        x, c, ctx = data.batch(config.batch_size)
        return -flow.log_prob(x, c, ctx).mean()
    ctx = None if data is None or data.context is None else data.batch(config.batch_size)[2]
    loss, n_bad = flow_objectives.reverse_kl_loss(
        flow, family.at(config.c0, ctx), config.batch_size, config.c0, ctx)
    record["n_nonfinite"] += n_bad
    return loss


def step_loss(flow: ConditionalFlow, family: Family, config: Config, data: Data | None,
              ema: GridEMA | None, step: int, record: dict[str, Any]) -> Tensor:
    """The loss of `config.method` at training step `step`."""
    if config.method == "reverse_kl":
        ctx = None if data is None or data.context is None else data.batch(config.batch_size)[2]
        loss, n_bad = reverse_kl_range_loss(flow, family, config, ctx)
        record["n_nonfinite"] += n_bad
        return loss
    loss = _boundary_term(flow, family, config, data, record)
    if step < config.warmup_steps or config.method == "latent_nll":
        return loss
    if config.method == "nll_reverse_kl":
        ctx = None if data is None or data.context is None else data.batch(config.batch_size)[2]
        rkl, n_bad = reverse_kl_range_loss(flow, family, config, ctx)
        record["n_nonfinite"] += n_bad
        return loss + config.weight * rkl
    if config.method == "reweight":
        return loss + config.weight * reweight_loss(flow, family, data, config)
    progress = (step - config.warmup_steps) / max(
        1.0, config.curriculum_fraction * (config.n_steps - config.warmup_steps))
    prop_family = surrogate_family(flow, family, config.c0) if config.energy_free else family
    if ema is not None and (step - config.warmup_steps) % config.ema_every == 0:
        ema.refresh(flow, prop_family)
    return loss + config.weight * _propagation_term(
        flow, prop_family, config, data, ema, progress, record)


def step_cost(config: Config, step: int) -> int:
    """An upper bound on the target energy evaluations of training step `step` (0-based), so
    that a budget is never overshot by a step whose cost differs from the previous one (the
    first propagation step after the warm-up, an EMA refresh)."""
    rkl_boundary = config.boundary == "reverse_kl"
    if config.method == "reverse_kl":
        return config.batch_size
    cost = config.batch_size if rkl_boundary else 0
    if step < config.warmup_steps or config.method == "latent_nll":
        return cost
    if config.method == "nll_reverse_kl":
        return cost + config.batch_size
    if config.method == "reweight":
        return cost + 2 * config.n_conditions * config.n_per_condition
    if config.energy_free:
        return cost
    n_c = config.n_grid if config.conditions == "grid" else config.n_conditions
    cost += n_c * config.n_per_condition
    if config.expectation == "ema" and (step - config.warmup_steps) % config.ema_every == 0:
        cost += config.n_grid * config.n_ema_samples
    return cost


def train(
    flow: ConditionalFlow, family: Family, config: Config, data: Data | None = None, *,
    budget: int | None = None, reserve: int = 0, callback: Callback = null_callback,
    run_dir: Path | None = None, resume: bool = False, validation: Data | None = None,
) -> dict[str, Any]:
    """Trains `flow` with `config.method`; stops after n_steps or when the target evaluations
    would exceed `budget - reserve`. Returns the record (history, n_nonfinite, last SNIS ESS/N,
    stopped_by_budget, seconds). The check before each step uses the larger of the previous
    step's cost and `step_cost`. Checkpoints (`boltzkit.samplers.run`) every
    `checkpoint_every` steps and at the end; a resumed run continues bit for bit.

    With `validation` (held-apart boundary samples), their NLL is measured every
    `validate_every` steps from the end of the warm-up on (the whole objective in force) and
    the flow ends with the parameters of the lowest one: model selection on held-apart data,
    which stops an NLL fit from ending overfitted (record: "validation" history, best_step,
    best_validation_nll)."""
    if config.uses_data and data is None:
        raise UsageError(f"method {config.method!r} with boundary 'nll' needs data")
    if config.expectation == "ema" and data is not None and data.context is not None:
        raise UsageError("the grid EMA of E_c[A] cannot be amortised over contexts")
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr)
    ema = GridEMA(config) if config.method == "trade" and config.expectation == "ema" else None
    record: dict[str, Any] = {"history": [], "n_nonfinite": 0, "stopped_by_budget": False,
                              "seconds": 0.0}
    run = skeleton.Run(family.target, budget=budget, reserve=reserve, run_dir=run_dir,
                       checkpoint_every=config.checkpoint_every, callback=callback)
    step, ckpt, best = 0, run.load(resume), None
    if ckpt is not None:
        flow.load_state_dict(ckpt["flow"])
        opt.load_state_dict(ckpt["opt"])
        step, record, best = ckpt["step"], ckpt["record"], ckpt.get("best")
        if ema is not None and ckpt.get("ema") is not None:
            ema.values, ema.ess_fraction, ema.started = ckpt["ema"], ckpt["ema_ess"], True
    run.start(total=config.n_steps, unit="step", description=f"TRADE ({config.method})")
    last_cost, t0, clock = 0, time.perf_counter(), time.perf_counter
    with run.deferred_interrupts():
        while step < config.n_steps and not run.stop_before(
                max(last_cost, step_cost(config, step))):
            before = run.spent["n_energy"]
            loss = step_loss(flow, family, config, data, ema, step, record)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
            opt.step()
            step, last_cost = step + 1, run.spent["n_energy"] - before
            if step % config.log_every == 0 or step == config.n_steps:
                record["history"].append({"step": step, "loss": loss.item(),
                                          "n_energy": run.spent["n_energy"],
                                          "seconds": clock() - t0})
            run.advance(1, loss=loss.item())
            if validation is not None and step >= config.warmup_steps and (
                    step % config.validate_every == 0 or step == config.n_steps):
                best = _select(flow, validation, step, record, best)
            if run.due(step):
                run.save(_state(flow, opt, ema, step, record, best))
            if run.interrupted is not None:
                run.stop_for_interrupt(_state(flow, opt, ema, step, record, best))
    record["n_steps"], record["seconds"] = step, record["seconds"] + clock() - t0
    record["stopped_by_budget"] = run.stopped_by_budget
    run.save(_state(flow, opt, ema, step, record, best))
    if best is not None:
        flow.load_state_dict(best)
    run.end()
    return record


@torch.no_grad()
def validation_nll(flow: ConditionalFlow, data: Data, chunk: int = 4096) -> float:
    """-mean log q(x | c) of `data` (nats per sample)."""
    total = 0.0
    for i in range(0, len(data.x), chunk):
        ctx = None if data.context is None else data.context[i:i + chunk]
        total += float(-flow.log_prob(data.x[i:i + chunk], data.c[i:i + chunk], ctx).double()
                       .sum())
    return total / len(data.x)


def _select(flow: ConditionalFlow, validation: Data, step: int, record: dict[str, Any],
            best: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Records the validation NLL at `step`; returns a copy of the parameters when it is the
    lowest so far, else `best`."""
    nll = validation_nll(flow, validation)
    record.setdefault("validation", []).append({"step": step, "nll": nll})
    if best is not None and not nll < record["best_validation_nll"]:
        return best
    record.update(best_step=step, best_validation_nll=nll)
    return {k: v.detach().clone() for k, v in flow.state_dict().items()}


def _state(flow: ConditionalFlow, opt: torch.optim.Optimizer, ema: GridEMA | None, step: int,
           record: dict[str, Any], best: dict[str, Tensor] | None = None) -> dict[str, Any]:
    return {"flow": flow.state_dict(), "opt": opt.state_dict(), "step": step, "record": record,
            "ema": None if ema is None else ema.values,
            "ema_ess": None if ema is None else ema.ess_fraction, "best": best}


def build_flow(config: Config, dim: int, data: Tensor | None = None,
               context_dim: int = 0) -> ConditionalFlow:
    """The conditional flow of `config` (the latent-NLL baseline sees c only through the base)."""
    arch = config.flow_config(dim, conditional=config.method != "latent_nll",
                              latent_power=config.latent_power(), context_dim=context_dim)
    with torch.device(config.device):  # parameters initialised where they will live
        return make_flow(arch, data).to(getattr(torch, config.dtype))


@torch.no_grad()
def evaluate(flow: ConditionalFlow, family: Family, c: float, n: int,
             context: Tensor | None = None) -> dict[str, float]:
    """IS diagnostics of the flow at c: ESS, log Z estimate, and where log Z(c) is known the
    reverse KL(q || p) = mean(log q - log gamma) + log Z (over finite samples)."""
    target = family.at(c, context)
    x, log_w, n_bad = flow_objectives.reweight(flow, target, n, c, context)
    out = {"c": c, **flow_objectives.summarise_weights(log_w), "n_nonfinite": n_bad}
    if target.log_Z is not None:
        finite = log_w[torch.isfinite(log_w)]
        out["log_Z_true"] = target.log_Z
        out["reverse_kl"] = float(-finite.mean() + target.log_Z)
    return out


def sample(
    target: Any, config: Config, *, n_samples: int, budget: int | None,
    callback: Callback = null_callback, run_dir: Path | None = None, resume: bool = False,
) -> SampleResult:
    """Trains TRADE (or a baseline) on `target` over [c_min, c_max] and returns n_samples flow
    samples at c_sample (default c0) with IS log weights. NLL boundaries draw `n_data` exact
    samples at c0 (an error where the target has none: call `train` with data instead)."""
    skeleton.require_weights(budget, n_samples)
    family = Family(target, config.parameter)
    dtype = getattr(torch, config.dtype)
    data = None
    if config.method != "reverse_kl" and config.boundary == "nll":
        at_c0 = family.at(config.c0)
        if not at_c0.has_exact_samples:
            raise UsageError(f"{target.name!r} has no exact samples at c0 = {config.c0}; "
                             "call trade.train with data (e.g. from boltzkit.mc.mcmc)")
        data = Data(at_c0.sample(config.n_data).to(dtype=dtype, device=config.device), config.c0)
    flow = build_flow(config, target.dim, None if data is None else data.x)
    whole = skeleton.Run(target, budget=budget)  # counts of training and weighting together
    record = train(flow, family, config, data, budget=budget, reserve=n_samples,
                   callback=callback, run_dir=run_dir, resume=resume)
    c_s = config.c0 if config.c_sample is None else config.c_sample
    x, log_w, n_bad = flow_objectives.reweight(flow, family.at(c_s), n_samples, c_s)
    summary = flow_objectives.summarise_weights(log_w)
    diagnostics = {**record, **summary, "c": c_s, "n_nonfinite_weights": n_bad,
                   "ess_convention": "Kish, exp(2 LSE(log w) - LSE(2 log w))"}
    return SampleResult(x, log_w, summary["log_Z"], diagnostics, whole.spent)
