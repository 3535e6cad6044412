"""Flow Boltzmann generator: a normalising flow trained by forward KL on samples, reverse KL on
the energy, or both, then importance-reweighted to the target.

Forward KL (maximum likelihood): L = -E_data[log q_theta(x)].
Reverse KL: L = E_{x~q_theta}[log q_theta(x) - log gamma(x)] = KL(q || p) - log Z.
Reweighting: log w = log gamma(x) - log q_theta(x), x ~ q_theta; ESS (Kish) and
log Z = LSE(log w) - log N with its delta-method SE, by `boltzkit.mc.estimators` (plain importance
sampling is the one-step configuration of `boltzkit.mc.smc`; with a single proposal step the
estimators are the whole computation).

Energies that overflow (NaN, +inf) for bad flow samples come back from the target as
log gamma = -inf (counted by the target); here they get zero weight, are left out of the reverse-KL
mean and are counted in `n_nonfinite` -- never a NaN weight.

Reference: Noe et al., Boltzmann generators, Science 365 (2019), arXiv 1812.01729.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from boltzkit.core.config import check_ranges
from boltzkit.core.errors import UsageError
from boltzkit.models.flow_objectives import (
    forward_kl_loss,
    reverse_kl_loss,
    reweight,
    summarise_weights,
)
from boltzkit.models.flows import (
    ConditionalFlow,
    FlowArchitecture,
    device_of,
    dtype_of,
    make_flow,
)
from boltzkit.samplers import Callback, SampleResult, distributed, null_callback
from boltzkit.samplers.run import Run, require_weights
from boltzkit.targets.base import Target


@dataclass(frozen=True)
class Config(FlowArchitecture):
    """Flow Boltzmann generator hyperparameters (flow architecture, objective, optimiser)."""

    objective: Literal["forward", "reverse", "both"] = "reverse"
    forward_weight: float = 1.0  # weight of the forward term when objective = "both"
    n_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    grad_clip: float = 10.0
    n_data: int = 10_000  # forward KL: exact samples drawn from the target when it has them
    checkpoint_every: int = 500
    log_every: int = 50
    dtype: Literal["float32", "float64"] = "float32"
    # >1: the batch as n_shards seeded shards, the same on any number of data-parallel ranks
    # (boltzkit.samplers.distributed); 1 and one rank: the plain batch
    n_shards: int = 1
    device: str = "cpu"  # where the flow lives; the target must be there (`Target.to`)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("n_steps", "batch_size", "lr", "grad_clip", "n_data",
                                     "log_every", "n_shards"),
                     nonnegative=("forward_weight", "checkpoint_every"))


# ---- training ----------------------------------------------------------------------------
def train(
    flow: ConditionalFlow, target: Target, config: Config, data: Tensor | None = None, *,
    budget: int | None = None, reserve: int = 0, callback: Callback = null_callback,
    run_dir: Path | None = None, resume: bool = False,
) -> dict[str, Any]:
    """Trains `flow` (at c = 1) by forward KL on `data`, reverse KL on `target`, or both.

    Stops after `config.n_steps` steps or before the evaluations spent in this call (plus those
    of a resumed checkpoint) would exceed `budget - reserve`. Checkpoints
    (`boltzkit.samplers.run`) every `checkpoint_every` steps and at the end; a resumed run
    continues bit for bit.
    Returns the training record: history (step, loss, n_energy), n_nonfinite, stopped_by_budget.

    Data-parallel when torch.distributed is initialised (`boltzkit.samplers.distributed`): each
    rank computes its shards of the global batch; gradients, losses and evaluation counts are
    summed over ranks, so `budget`, `reserve` and the recorded n_energy are global.
    """
    if config.objective != "reverse" and data is None:
        raise UsageError(f"objective {config.objective!r} needs samples (data)")
    w = distributed.world()
    sharded = config.n_shards > 1 or w.size > 1
    if sharded:
        _check_shards(config, w, resume)
        distributed.broadcast_parameters(flow, w)
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr)
    record: dict[str, Any] = {"history": [], "n_nonfinite": 0, "stopped_by_budget": False}
    run = Run(target, budget=budget, reserve=reserve, run_dir=run_dir if w.rank == 0 else None,
              checkpoint_every=config.checkpoint_every, callback=callback)
    seed = torch.initial_seed()
    step, ckpt = 0, run.load(resume)
    if ckpt is not None:
        flow.load_state_dict(ckpt["flow"])
        opt.load_state_dict(ckpt["opt"])
        step, record = ckpt["step"], ckpt["record"]
    run.start(total=config.n_steps, unit="step", description="flow BG")
    cost = config.batch_size if config.objective != "forward" else 0
    with run.deferred_interrupts():
        while step < config.n_steps and not run.stop_before(cost):
            before = target.counter.as_dict()
            if sharded:
                loss = _sharded_loss(flow, target, config, data, record, seed, step, w)
            else:
                loss = _step_loss(flow, target, config, data, record)
            opt.zero_grad()
            loss.backward()
            distributed.sum_gradients(flow.parameters(), w)
            distributed.share_counts(target, before, w)
            torch.nn.utils.clip_grad_norm_(flow.parameters(), config.grad_clip)
            opt.step()
            step += 1
            value = distributed.all_sum(loss.item(), w)
            if step % config.log_every == 0 or step == config.n_steps:
                record["history"].append(
                    {"step": step, "loss": value, "n_energy": run.spent["n_energy"]})
            run.advance(1, loss=value)
            if run.due(step):
                run.save(_state(flow, opt, step, record))
            if run.interrupted is not None:
                run.stop_for_interrupt(_state(flow, opt, step, record))
    record["n_steps"], record["stopped_by_budget"] = step, run.stopped_by_budget
    run.save(_state(flow, opt, step, record))
    run.end()
    return record


def _step_loss(flow: ConditionalFlow, target: Target, config: Config, data: Tensor | None,
               record: dict[str, Any], n: int | None = None) -> Tensor:
    """The training loss of one step (reverse KL on a fresh batch, forward KL on data) on
    n samples (default the batch size)."""
    n = config.batch_size if n is None else n
    loss = torch.zeros((), dtype=dtype_of(flow), device=device_of(flow))
    if config.objective in ("reverse", "both"):
        rkl, n_bad = reverse_kl_loss(flow, target, n)
        record["n_nonfinite"] += n_bad
        loss = loss + rkl
    if config.objective in ("forward", "both"):
        idx = torch.randint(len(data), (n,), device=data.device)
        weight = config.forward_weight if config.objective == "both" else 1.0
        loss = loss + weight * forward_kl_loss(flow, data[idx].to(dtype_of(flow)))
    return loss


def _sharded_loss(flow: ConditionalFlow, target: Target, config: Config, data: Tensor | None,
                  record: dict[str, Any], seed: int, step: int,
                  w: distributed.World) -> Tensor:
    """This rank's part (1/S) sum_{s of this rank} l_s of the global loss, shard s drawn under
    its own seed (the global RNG is restored after each)."""
    n = config.batch_size // config.n_shards
    parts = distributed.shard_map(lambda s: _step_loss(flow, target, config, data, record, n),
                                  config.n_shards, w, seed, step)
    return torch.stack(parts).sum() / config.n_shards


def _check_shards(config: Config, w: distributed.World, resume: bool) -> None:
    distributed.check_shards(config.n_shards, config.batch_size, w)
    if resume and w.size > 1:
        raise UsageError("resuming a data-parallel run is not supported yet")


def _state(flow: ConditionalFlow, opt: torch.optim.Optimizer, step: int,
           record: dict[str, Any]) -> dict[str, Any]:
    return {"flow": flow.state_dict(), "opt": opt.state_dict(), "step": step, "record": record}


def sample(
    target: Target, config: Config, *, n_samples: int, budget: int | None,
    callback: Callback = null_callback, run_dir: Path | None = None, resume: bool = False,
) -> SampleResult:
    """Trains a flow BG on `target` and returns n_samples flow samples with IS log weights.

    Forward KL draws `config.n_data` exact samples from the target (an error if it has none).
    """
    require_weights(budget, n_samples)
    dtype = getattr(torch, config.dtype)
    data = None
    if config.objective != "reverse":
        if not target.has_exact_samples:
            raise UsageError(f"objective {config.objective!r} needs exact samples, which "
                             f"{target.name!r} lacks; call `train` with data instead")
        data = target.sample(config.n_data).to(dtype=dtype, device=config.device)
    with torch.device(config.device):  # parameters initialised where they will live
        flow = make_flow(config.flow_config(target.dim, conditional=False), data).to(dtype)
    whole = Run(target, budget=budget)  # counts of training and weighting together
    record = train(flow, target, config, data, budget=budget, reserve=n_samples,
                   callback=callback, run_dir=run_dir, resume=resume)
    x, log_w, n_bad = reweight(flow, target, n_samples)
    summary = summarise_weights(log_w)
    diagnostics = {**record, **summary, "n_nonfinite_weights": n_bad,
                   "ess_convention": "Kish, exp(2 LSE(log w) - LSE(2 log w))"}
    return SampleResult(x, log_w, summary["log_Z"], diagnostics, whole.spent)
