"""Flow-assisted parallel tempering ("flow-pt"): PT explores, a flow learns from what it found,
then PT runs again with the flow as an independence move at every rung.

Four phases, one energy budget B:
1. explore: plain PT (`boltzkit.samplers.mcmc`) with `train_fraction` * B evaluations; its
   T = 1 samples (at most `n_data`) are the training data;
2. learn: a flow trained by maximum likelihood on them (`boltzkit.samplers.flow.train`,
   objective "forward": no energy evaluation), standardised by the data, with a latent
   temperature (base N(0, T I) at rung T, Dibak et al. 2022) when `latent_scaling`;
3. trial: `trial_fraction` * B of PT with the flow's moves (below), from the explore phase's
   last configurations; its samples are discarded. When the move's acceptance stays below
   `min_accept` at every rung, the flow is dropped and phase 4 is plain PT (each move costs
   an energy evaluation, which then buys nothing);
4. sample: PT started where the trial ended, every step an independence Metropolis-Hastings
   move x' ~ q(. | T) accepted with min(1, pi_T(x') q(x | T) / (pi_T(x) q(x' | T)))
   (Tierney 1994), then the local kernel, for the rest of B. The flow is frozen here, so the
   chain is exact for any flow; the flow's quality only sets the move's acceptance
   (`diagnostics["flow_acceptance"]`).

With `flow_from` (the run directory of a `flow` or `trade` run on the same target), that run's
trained flow is the proposal and phases 1 and 2 are skipped: a TRADE flow q(x | c) proposes at
each rung at its own temperature (c = T), a one-temperature flow at c = 1 everywhere.

Training on the sampler's own chains follows Gabrie, Rotskoff and Vanden-Eijnden (PNAS 119,
e2109420119, 2022), who train concurrently; freezing the flow before sampling keeps the
kept samples exact. For particle systems the flow lives on the centre-of-mass-free subspace
(an orthonormal basis of it), where the chains move, so its density there is exact.

This module composes samplers (mcmc, flow, and trade for `flow_from`); none of them imports
it (a contract of pyproject.toml).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from boltzkit.core.config import check_ranges, override
from boltzkit.core.errors import UsageError
from boltzkit.models.flow_objectives import FlowProposal
from boltzkit.models.flows import FlowArchitecture, make_flow
from boltzkit.samplers import Callback, SampleResult, flow, mcmc, null_callback, trade
from boltzkit.samplers.run import CHECKPOINT, Run
from boltzkit.targets.base import Target


@dataclass(frozen=True)
class Config(mcmc.PTConfig, FlowArchitecture):
    """PT settings (`mcmc.PTConfig`, used by both PT phases), the flow's architecture
    (`FlowArchitecture`), and:

    train_fraction: share of the budget for the explore phase.
    n_data: most explore-phase samples the flow is trained on.
    flow_steps, flow_batch_size, flow_lr: maximum-likelihood training (no energy cost).
    latent_scaling: propose at rung T from the base N(0, T I) (else the T = 1 flow everywhere).
    trial_fraction, min_accept: the trial phase's share of the budget, and the acceptance the
        flow's move must reach at one rung at least to be kept.
    flow_from: a `flow` or `trade` run directory whose flow proposes (no explore, no learning).
    """

    train_fraction: float = 0.3
    n_data: int = 4096
    flow_steps: int = 1000
    flow_batch_size: int = 256
    flow_lr: float = 2e-3
    flow_dtype: str = "float32"
    latent_scaling: bool = True
    trial_fraction: float = 0.05
    min_accept: float = 0.01
    flow_from: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        FlowArchitecture.__post_init__(self)
        check_ranges(self, positive=("n_data", "flow_steps", "flow_batch_size", "flow_lr"))
        for name in ("train_fraction", "trial_fraction", "min_accept"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.train_fraction + self.trial_fraction >= 1:
            raise UsageError("train_fraction + trial_fraction must be below 1, got "
                             f"{self.train_fraction} + {self.trial_fraction}")
        if self.flow_dtype not in ("float32", "float64"):
            raise UsageError(f"flow_dtype must be float32 or float64, got {self.flow_dtype!r}")


def preset_names() -> list[str]:
    """The MCMC presets (`boltzkit/presets/mcmc.toml`): flow-pt runs PT with their settings."""
    return mcmc.preset_names()


def preset(name: str) -> Config:
    """`Config()` with the PT settings of the MCMC preset `name`."""
    values = dataclasses.asdict(mcmc.preset(name, sampler="pt"))
    return override(Config(), values)


def pt_config(config: Config) -> mcmc.PTConfig:
    """The PT settings of a flow-pt config."""
    names = [f.name for f in dataclasses.fields(mcmc.PTConfig)]
    return mcmc.PTConfig(**{k: getattr(config, k) for k in names})


def subspace_basis(target: Target, dtype: torch.dtype = torch.float64) -> Tensor | None:
    """Orthonormal columns B `[dim, k]` spanning the range of `target.remove_com` (None when it
    is the identity): the flow's coordinates are z = x B."""
    eye = torch.eye(target.dim, dtype=torch.float64)
    projection = target.remove_com(eye)
    if torch.allclose(projection, eye):
        return None
    values, vectors = torch.linalg.eigh(projection)
    return vectors[:, values > 0.5].to(dtype)


def sample(
    target: Target, config: Config, *, n_samples: int, budget: int | None = None,
    callback: Callback = null_callback, run_dir: Path | None = None, resume: bool = False,
) -> SampleResult:
    """n_samples equally weighted T = 1 samples of the last phase (see the module docstring)."""
    started = time.perf_counter()
    pt = pt_config(config)
    whole = Run(target, budget=budget)
    sub = (lambda name: None) if run_dir is None else (lambda name: Path(run_dir) / name)
    if config.flow_from:
        proposal, source = proposal_from_run(Path(config.flow_from), target)
        callback("log", message=f"flow-pt: proposing from {source}")
        return _sample_with(target, config, proposal, None, whole, started, n_samples, budget,
                            callback, sub, resume, {"flow_from": str(config.flow_from)})
    explore_budget = None if budget is None else int(config.train_fraction * budget)
    n_data = config.n_data
    if explore_budget is not None:
        n_data = min(n_data, mcmc.affordable_samples(pt, explore_budget))
        if n_data < config.n_chains:
            raise UsageError(
                f"budget {budget:,} leaves the explore phase ({config.train_fraction} of it) "
                f"{n_data} samples, fewer than one per chain ({config.n_chains}); give a larger "
                "--budget or a larger train_fraction")
    callback("log", message=f"flow-pt: exploring with PT for {n_data} training samples")
    explored = mcmc.sample(target, pt, n_samples=n_data, budget=explore_budget,
                           callback=callback, run_dir=sub("explore"), resume=resume)
    basis = subspace_basis(target)
    data = explored.samples.double()
    data = (data if basis is None else data @ basis).to(getattr(torch, config.flow_dtype))
    architecture = config.flow_config(data.shape[-1], conditional=False,
                                      latent_power=1.0 if config.latent_scaling else 0.0)
    with torch.device(config.device):
        model = make_flow(architecture, data).to(data.dtype)
    fit = flow.Config(objective="forward", n_steps=config.flow_steps,
                      batch_size=config.flow_batch_size, lr=config.flow_lr,
                      dtype=config.flow_dtype, device=config.device,
                      **{f.name: getattr(config, f.name)
                         for f in dataclasses.fields(FlowArchitecture)})
    record = flow.train(model, target, fit, data, callback=callback, run_dir=sub("flow"),
                        resume=resume)
    model.eval()
    proposal = FlowProposal(model, c=None if config.latent_scaling else 1.0, basis=basis)
    extra = {"explore": {k: explored.diagnostics[k] for k in
                         ("n_steps", "acceptance", "swap_rates", "temperatures", "n_nonfinite")},
             "explore_n_energy": explored.counts["n_energy"],
             "n_train_samples": int(data.shape[0]), "flow_history": record["history"],
             "flow_train_steps": record["n_steps"]}
    return _sample_with(target, config, proposal, _last(explored.samples, config.n_chains), whole,
                        started, n_samples, budget, callback, sub, resume, extra)


def _sample_with(target: Target, config: Config, proposal: FlowProposal, x0: Tensor | None,
                 whole: Run, started: float, n_samples: int, budget: int | None,
                 callback: Callback, sub: Callable[[str], Path | None], resume: bool,
                 extra: dict[str, Any]) -> SampleResult:
    """Phases 3 and 4 (the trial and the sampling) with `proposal`, from x0 (None: PT's own
    start). Chains continued from x0 are not relaxed again (`init_relax_steps` = 0)."""
    fresh = pt_config(config)
    pt = dataclasses.replace(fresh, init_relax_steps=0)
    trial_budget = None if budget is None else int(config.trial_fraction * budget)
    n_trial = config.n_chains * max(1, config.n_data // (10 * config.n_chains))
    first = fresh if x0 is None else pt
    if trial_budget is not None:
        n_trial = min(n_trial, mcmc.affordable_samples(first, trial_budget, proposal) // 2)
    trial = mcmc.sample(target, first, n_samples=max(n_trial, 1), budget=trial_budget,
                        callback=callback, run_dir=sub("trial"), resume=resume,
                        x0=x0, proposal=proposal)
    stages = trial.diagnostics["acceptance_per_stage"]
    trial_accept = stages[0] if stages else [0.0]
    keep = max(trial_accept) >= config.min_accept
    callback("log", message=f"flow-pt: the flow's move accepts {max(trial_accept):.3g} at best "
             f"over the ladder in the trial: {'kept' if keep else 'dropped'}")
    remaining = None if budget is None else budget - whole.spent["n_energy"]
    final = mcmc.sample(target, pt, n_samples=n_samples, budget=remaining, callback=callback,
                        run_dir=sub("sample"), resume=resume,
                        x0=_last(trial.samples, config.n_chains),
                        proposal=proposal if keep else None)
    stages = final.diagnostics["acceptance_per_stage"]
    diagnostics = {
        **final.diagnostics, "sampler": "flow-pt", "flow_move": "kept" if keep else "dropped",
        "flow_trial_acceptance_per_temperature": trial_accept,
        "flow_acceptance": stages[0][0] if stages else math.nan,
        "flow_acceptance_per_temperature": stages[0] if stages else [],
        **extra, "wall_s": time.perf_counter() - started}
    return SampleResult(final.samples, None, None, diagnostics, whole.spent)


def proposal_from_run(run_dir: Path, target: Target) -> tuple[FlowProposal, str]:
    """The trained flow of a `flow` or `trade` run directory as a proposal for `target`, and a
    line saying where it came from."""
    files = [run_dir / name for name in ("run.json", "config.json", CHECKPOINT)]
    if not all(f.exists() for f in files):
        raise UsageError(f"flow_from={run_dir} is not a finished flow or trade run directory "
                         "(it needs run.json, config.json and checkpoint.pt)")
    record = json.loads(files[0].read_text())
    values = {k: tuple(v) if isinstance(v, list) else v
              for k, v in json.loads(files[1].read_text()).items()}
    sampler = record.get("sampler")
    if sampler not in ("flow", "trade"):
        raise UsageError(f"flow_from={run_dir} is a {sampler!r} run; valid: flow, trade")
    if subspace_basis(target) is not None:
        raise UsageError("flow_from needs a target that is not a particle system: a flow "
                         "trained in Cartesian space has no exact density on the centre-of-"
                         "mass-free subspace the chains move in")
    if sampler == "flow":
        fit = override(flow.Config(), values)
        model = make_flow(fit.flow_config(target.dim, conditional=False))
        model = model.to(getattr(torch, fit.dtype))
    else:
        model = trade.build_flow(override(trade.Config(), values), target.dim)
    try:
        model.load_state_dict(torch.load(files[2], weights_only=False)["flow"])
    except (RuntimeError, KeyError) as err:
        raise UsageError(f"flow_from={run_dir}: its flow does not fit {target.name!r} "
                         f"(dim {target.dim}): {str(err).splitlines()[0]}") from None
    model.eval()
    c = None if sampler == "trade" else 1.0  # TRADE: c = T at every rung
    return FlowProposal(model, c=c), f"the {sampler} run {run_dir} (target {record['target']})"


def _last(samples: Tensor, n_chains: int) -> Tensor:
    """The last n_chains rows of time-major samples (cycled when fewer): chains' last states."""
    x = samples[-n_chains:]
    return x if x.shape[0] == n_chains else x[torch.arange(n_chains) % x.shape[0]]


__all__ = ["Config", "pt_config", "preset", "preset_names", "sample", "subspace_basis"]
