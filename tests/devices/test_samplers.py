"""The samplers mala, pt, smc, flow, trade and idem run where their config's `device` says, on a
target moved there by `Target.to`: every tensor of the result lives on that device, and none is
created on a default device along the way (see `strict`)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest
from tests.devices.guard import assert_on, strict

from boltzkit import samplers
from boltzkit.targets import get

_FLOW = {"kind": "affine", "n_layers": 2, "hidden": 8, "depth": 1, "log_every": 1, "lr": 5e-3,
         "checkpoint_every": 0}
TINY: dict[str, dict[str, Any]] = {
    "mala": {"n_chains": 8, "burn_in": 0.2, "step_size": 0.3},
    "pt": {"n_chains": 4, "n_temps": 3, "T_max": 4.0, "step_size": 0.3, "burn_in": 0.2},
    "smc": {"n_mcmc_steps": 2, "step_size": 0.3, "reference_scale": 2.0},
    "flow": {**_FLOW, "objective": "both", "n_steps": 4, "batch_size": 16, "n_data": 64},
    "trade": {**_FLOW, "boundary": "reverse_kl", "n_steps": 4, "warmup_steps": 2,
              "batch_size": 16, "n_conditions": 2, "n_per_condition": 8, "rho": "mse"},
    "idem": {"network": "mlp", "hidden": 8, "n_layers": 1, "n_outer": 2, "n_inner": 2,
             "batch_size": 8, "n_mc": 4, "n_generate": 8, "n_sde_steps": 3, "buffer_size": 20,
             "n_init": 8, "sigma_min": 0.01, "sigma_max": 2.0, "checkpoint_every": 0},
}


def config(name: str, device: str) -> Any:
    module = samplers.module(name)
    takes_name = "sampler" in inspect.signature(module.Config).parameters
    base = module.Config(sampler=name) if takes_name else module.Config()
    return dataclasses.replace(base, **TINY[name], device=device)


@pytest.mark.parametrize("name", sorted(TINY))
def test_sampler_runs_on_its_device(name: str, device: str) -> None:
    target = get("two-modes").to(device)
    with strict(device):
        res = samplers.module(name).sample(target, config(name, device), n_samples=32,
                                           budget=None, callback=samplers.null_callback)
    assert res.samples.shape[1] == target.dim
    assert_on((res.samples, res.log_w), device)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_config_has_a_device(name: str) -> None:
    module = samplers.module(name)
    takes_name = "sampler" in inspect.signature(module.Config).parameters
    base = module.Config(sampler=name) if takes_name else module.Config()
    assert base.device == "cpu"


def test_idem_on_a_particle_system_runs_on_its_device(device: str) -> None:
    """The COM-free noise, the EGNN (library path) and the reverse SDE follow the device."""
    target = get("dw4").to(device)
    cfg = dataclasses.replace(config("idem", device), network="egnn", fused_egnn=False)
    with strict(device):
        res = samplers.module("idem").sample(target, cfg, n_samples=16, budget=None,
                                             callback=samplers.null_callback)
    assert_on((res.samples,), device)
