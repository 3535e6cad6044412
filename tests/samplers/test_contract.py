"""The sampler contract, run over every name in the sampler registry on a tiny 2-D Gaussian.

Every sampler returns a `SampleResult` of detached tensors (samples `[n, dim]`, log_w `[n]` in
float64 or None) with JSON-serialisable diagnostics; its `counts` are the change of the target's
`EvalCounter` and the configurations the target really evaluated (`Tally` counts them behind the
counter's back, so an evaluation through an uncounted copy shows); a budget is never exceeded
and `stopped_by_budget` says when it bound; returned log-weights are unnormalised,
LSE(log_w) - log n = log Z-hat; a sampler that checkpoints continues a killed run to the same
counts and, where it promises it, bit for bit the same result.

A newly registered sampler gets these checks by adding its tiny configuration to `TINY`; the
deliberately broken samplers at the end (one evaluation hidden from the counter, a budget
ignored, normalised weights) must fail them.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pytest
import torch

from boltzkit import samplers
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.targets.base import EvalCounter, Target

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
STD = torch.tensor([0.7, 1.3], dtype=torch.float64)


class Tally(Target):
    """N(mu, diag(std^2)) unnormalised, with exact samples and log Z; `evaluated[0]` counts every
    configuration whose energy is computed, through any copy (tempered or `uncounted()` copies
    share the list), independently of the `EvalCounter`."""

    name = "tally-gaussian"
    exact_sampler = True

    def __init__(self) -> None:
        super().__init__(2)
        self.evaluated = [0]

    def _log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.evaluated[0] += x.numel() // self.dim
        z = (x - MU.to(x)) / STD.to(x)
        return -0.5 * z.square().sum(-1)

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return MU + STD * torch.randn(n, 2, dtype=torch.float64, generator=generator)

    def _log_Z(self) -> float:
        return float(torch.log(math.sqrt(2 * math.pi) * STD).sum())


class Tiny(NamedTuple):
    """A sampler's tiny run: config overrides, n_samples, and what a resume promises
    ("bitwise": the killed-and-resumed run equals the uninterrupted one; "counts": only its
    counts do; None: the sampler does not checkpoint)."""

    overrides: dict[str, Any]
    n_samples: int
    resume: Literal["bitwise", "counts"] | None


_CHAINS = {"n_chains": 8, "burn_in": 0.2, "checkpoint_every": 1}
_FLOW = {"kind": "affine", "n_layers": 2, "hidden": 8, "depth": 1, "checkpoint_every": 1,
         "log_every": 1, "lr": 5e-3}
TINY: dict[str, Tiny] = {
    "mala": Tiny({**_CHAINS, "step_size": 0.3}, 64, "bitwise"),
    "rwmh": Tiny({**_CHAINS, "step_size": 0.8}, 64, "bitwise"),
    "hmc": Tiny({**_CHAINS, "step_size": 0.3, "n_leapfrog": 3}, 64, "bitwise"),
    "pt": Tiny({**_CHAINS, "n_chains": 4, "n_temps": 2, "T_max": 4.0, "step_size": 0.3}, 32,
               "bitwise"),
    "flow-pt": Tiny({**_CHAINS, "n_chains": 4, "n_temps": 2, "T_max": 4.0, "step_size": 0.3,
                     "kind": "affine", "n_layers": 2, "hidden": 8, "depth": 1, "flow_steps": 8,
                     "flow_batch_size": 16, "n_data": 64, "trial_fraction": 0.25}, 32,
                    "bitwise"),
    "smc": Tiny({"n_mcmc_steps": 2, "step_size": 0.3, "reference_scale": 2.0}, 64, None),
    "idem": Tiny({"hidden": 8, "n_layers": 1, "n_outer": 4, "n_inner": 2, "batch_size": 8,
                  "n_mc": 4, "n_generate": 8, "n_sde_steps": 5, "buffer_size": 20, "n_init": 8,
                  "sigma_min": 0.01, "sigma_max": 2.0, "checkpoint_every": 1}, 16, "bitwise"),
    "flow": Tiny({**_FLOW, "objective": "reverse", "n_steps": 8, "batch_size": 16}, 64,
                 "bitwise"),
    "trade": Tiny({**_FLOW, "boundary": "reverse_kl", "n_steps": 6, "warmup_steps": 2,
                   "batch_size": 16, "n_conditions": 2, "n_per_condition": 8, "rho": "mse"},
                  64, "bitwise"),
}
NAMES = samplers.names()


# ---- running a registered sampler ------------------------------------------------------------
def tiny(name: str) -> Tiny:
    if name not in TINY:
        pytest.fail(f"sampler {name!r} is registered but has no tiny configuration: add one to "
                    "TINY in tests/samplers/test_contract.py")
    return TINY[name]


def config_of(name: str) -> Any:
    """The module's default config for `name` (Config(sampler=name) where the module serves
    several names) with the tiny overrides."""
    module = samplers.module(name)
    takes_name = "sampler" in inspect.signature(module.Config).parameters
    base = module.Config(sampler=name) if takes_name else module.Config()
    return dataclasses.replace(base, **tiny(name).overrides)


def run(name: str, target: Target, *, budget: int | None = None, callback: Callback = null_callback,
        run_dir: Path | None = None, resume: bool = False, n_samples: int | None = None
        ) -> SampleResult:
    n = tiny(name).n_samples if n_samples is None else n_samples
    return samplers.module(name).sample(target, config_of(name), n_samples=n, budget=budget,
                                        callback=callback, run_dir=run_dir, resume=resume)


def n_budgeted(name: str) -> int:
    """Samples asked for under a binding budget (3/4 of a free run's spend): half the free
    run's, which the MCMC samplers size their runs to exactly (asking for more samples than a
    budget buys is an error)."""
    return tiny(name).n_samples // 2


class Snapshot(NamedTuple):
    counter: dict[str, int]
    evaluated: int


def snapshot(target: Tally) -> Snapshot:
    return Snapshot(target.counter.as_dict(), target.evaluated[0])


# ---- the checks ------------------------------------------------------------------------------
def check_result(res: Any, n_samples: int, dim: int) -> None:
    """Types, shapes, detached tensors, serialisable diagnostics."""
    assert isinstance(res, SampleResult), f"a sampler returns SampleResult, got {type(res)}"
    assert res.samples.ndim == 2 and res.samples.shape[1] == dim, tuple(res.samples.shape)
    assert 0 < res.samples.shape[0] <= n_samples and res.samples.is_floating_point()
    assert not res.samples.requires_grad and res.samples.grad_fn is None, "samples not detached"
    if res.log_w is not None:
        assert res.log_w.shape == (res.samples.shape[0],), tuple(res.log_w.shape)
        assert res.log_w.dtype == torch.float64, "weights are accumulated in float64"
        assert not res.log_w.requires_grad and res.log_w.grad_fn is None, "log_w not detached"
    assert res.log_Z is None or isinstance(res.log_Z, float)
    assert isinstance(res.diagnostics, dict) and isinstance(res.diagnostics["stopped_by_budget"],
                                                            bool)
    json.dumps(res.diagnostics)


def check_counts(res: SampleResult, target: Tally, before: Snapshot) -> None:
    """counts == the change of the target's counter == the configurations really evaluated."""
    now = snapshot(target)
    assert set(res.counts) == set(EvalCounter().as_dict()), sorted(res.counts)
    change = {k: v - before.counter[k] for k, v in now.counter.items()}
    assert res.counts == change, f"counts {res.counts} but the counter changed by {change}"
    evaluated = now.evaluated - before.evaluated
    assert res.counts["n_energy"] == evaluated, (
        f"{evaluated} configurations evaluated but {res.counts['n_energy']} counted: an "
        "evaluation went past the counter (e.g. through target.uncounted())")


def check_budget(res: SampleResult, budget: int) -> None:
    """The budget holds and `stopped_by_budget` says it bound."""
    assert res.counts["n_energy"] <= budget, f"spent {res.counts['n_energy']} of {budget}"
    assert res.diagnostics["stopped_by_budget"] is True, "the budget bound but was not reported"


def check_weights(res: SampleResult) -> None:
    """Unnormalised importance weights: LSE(log_w) - log n = log Z-hat."""
    if res.log_w is None:
        return
    assert res.log_Z is not None and math.isfinite(res.log_Z)
    lse = float(torch.logsumexp(res.log_w, 0)) - math.log(len(res.log_w))
    assert lse == pytest.approx(res.log_Z, abs=1e-9, rel=1e-9), (
        f"LSE(log_w) - log n = {lse} but log_Z = {res.log_Z}: log_w must be unnormalised")


# ---- the contract, per registered sampler ----------------------------------------------------
def test_every_registered_sampler_has_a_tiny_run():
    assert set(TINY) == set(NAMES), (
        f"TINY must hold exactly the registered samplers {NAMES}; missing "
        f"{sorted(set(NAMES) - set(TINY))}, stale {sorted(set(TINY) - set(NAMES))}")


def free_run(name: str) -> tuple[SampleResult, Tally, Snapshot]:
    torch.manual_seed(0)
    target = Tally()
    before = snapshot(target)
    return run(name, target), target, before


@pytest.mark.parametrize("name", NAMES)
def test_result_counts_and_weights(name):
    res, target, before = free_run(name)
    check_result(res, tiny(name).n_samples, target.dim)
    check_counts(res, target, before)
    check_weights(res)
    assert res.counts["n_energy"] > 0
    assert res.diagnostics["stopped_by_budget"] is False, "no budget, yet stopped by one"


@pytest.mark.parametrize("name", NAMES)
def test_budget_is_never_exceeded_and_binds(name):
    free, _, _ = free_run(name)
    budget = 3 * free.counts["n_energy"] // 4
    torch.manual_seed(0)
    target = Tally()
    before = snapshot(target)
    res = run(name, target, budget=budget, n_samples=n_budgeted(name))
    check_result(res, n_budgeted(name), target.dim)
    check_counts(res, target, before)
    check_budget(res, budget)
    check_weights(res)


class Killed(Exception):
    """Raised by the progress callback to stand for a kill of the process."""


def kill_at_advance(k: int) -> Callback:
    seen = [0]

    def callback(event: str, **info: Any) -> None:
        if event == "advance":
            seen[0] += 1
            if seen[0] >= k:
                raise Killed

    return callback


@pytest.mark.parametrize("name", NAMES)
def test_killed_run_resumes_to_the_same_result(name, tmp_path):
    """Killed at its second progress event, resumed under another seed: the checkpoint's RNG
    state, counts and budget carry the run on to what the uninterrupted one gives."""
    promise = tiny(name).resume
    if promise is None:
        pytest.skip(f"{name} does not checkpoint")
    free, _, _ = free_run(name)
    budget = 3 * free.counts["n_energy"] // 4
    torch.manual_seed(0)
    n = n_budgeted(name)
    straight = run(name, Tally(), budget=budget, n_samples=n)
    torch.manual_seed(0)
    killed = Tally()
    with pytest.raises(Killed):
        run(name, killed, budget=budget, callback=kill_at_advance(2), run_dir=tmp_path,
            n_samples=n)
    assert any(tmp_path.iterdir()), "no checkpoint written before the kill"
    assert killed.counter.n_energy < straight.counts["n_energy"], "killed after the end"
    torch.manual_seed(1)
    target = Tally()
    before = snapshot(target)
    resumed = run(name, target, budget=budget, run_dir=tmp_path, resume=True, n_samples=n)
    check_result(resumed, n, target.dim)
    change = {k: v - before.counter[k] for k, v in target.counter.as_dict().items()}
    assert resumed.counts == straight.counts == change
    assert resumed.diagnostics["stopped_by_budget"] == straight.diagnostics["stopped_by_budget"]
    if promise == "bitwise":
        assert torch.equal(resumed.samples, straight.samples)
        assert (resumed.log_w is None) == (straight.log_w is None)
        if straight.log_w is not None:
            assert torch.equal(resumed.log_w, straight.log_w)
        assert resumed.log_Z == straight.log_Z


# ---- deliberately broken samplers must fail the checks ---------------------------------------
def hiding_sample(target: Target, config: Any, **kwargs: Any) -> SampleResult:
    """MALA that evaluates its target once more through an uncounted copy (a forgotten count)."""
    res = samplers.module("mala").sample(target, config, **kwargs)
    target.uncounted().log_prob(res.samples[:1])
    return res


def overspending_sample(target: Target, config: Any, *, budget: int | None,
                        **kwargs: Any) -> SampleResult:
    """MALA that never hands its budget on."""
    return samplers.module("mala").sample(target, config, budget=None, **kwargs)


def test_a_sampler_hiding_an_evaluation_fails_the_count_check():
    torch.manual_seed(0)
    target = Tally()
    before = snapshot(target)
    res = hiding_sample(target, config_of("mala"), n_samples=64, budget=None)
    check_result(res, 64, 2)
    with pytest.raises(AssertionError, match="went past the counter"):
        check_counts(res, target, before)


def test_a_sampler_ignoring_its_budget_fails_the_budget_check():
    torch.manual_seed(0)
    res = overspending_sample(Tally(), config_of("mala"), n_samples=64, budget=40)
    with pytest.raises(AssertionError, match="spent"):
        check_budget(res, 40)


def test_normalised_weights_fail_the_weight_check():
    res, _, _ = free_run("flow")
    normalised = res._replace(log_w=res.log_w - torch.logsumexp(res.log_w, 0))
    with pytest.raises(AssertionError, match="unnormalised"):
        check_weights(normalised)


def test_a_registered_sampler_without_a_tiny_run_is_a_clear_failure():
    with pytest.raises(pytest.fail.Exception, match="no tiny configuration: add one to TINY"):
        tiny("a-new-sampler")
