"""Presets as data: every shipped preset applies to its sampler, unknown keys are errors."""

from __future__ import annotations

import pytest

from boltzkit import samplers
from boltzkit.core import presets
from boltzkit.core.errors import UnknownName, UsageError
from boltzkit.samplers import idem, mcmc, smc

MODULES = {"mcmc": (mcmc, ("rwmh", "mala", "hmc", "pt")), "smc": (smc, (None,)),
           "idem": (idem, (None,))}


@pytest.mark.parametrize("file", sorted(MODULES))
def test_every_shipped_preset_applies_to_every_sampler_it_serves(file: str) -> None:
    module, names = MODULES[file]
    assert module.preset_names() == presets.names(presets.load(file))
    for name in module.preset_names():
        for sampler in names:
            config = module.preset(name) if sampler is None else module.preset(name, sampler)
            values = presets.resolve(presets.load(file), name, sampler=sampler,
                                     samplers=names if sampler else ())
            assert values, f"{file}:{name} sets nothing"
            for key, value in values.items():
                assert getattr(config, key) == value, (file, name, sampler, key)


def test_sampler_subtables_apply_to_their_sampler_only() -> None:
    assert mcmc.preset("dw4", "pt").T_max == 10.0
    assert not hasattr(mcmc.preset("dw4", "mala"), "T_max")
    assert mcmc.preset("dw4", "mala").step_size == 0.01


def test_base_chain_then_own_keys() -> None:
    quick = idem.preset("lj13-quick")
    assert (quick.sigma_max, quick.noise_scale) == (2.0, 0.9)  # from "lj13"
    assert (quick.hidden, quick.n_outer) == (32, 15)  # its own


def test_an_unknown_key_is_an_error_not_dropped() -> None:
    table = {"typo": {"n_chain": 3}}
    with pytest.raises(UnknownName, match="n_chains=") as err:
        presets.apply(mcmc.Config("mala"), table, "typo")
    assert "n_chain" in str(err.value)


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(UnknownName) as err:
        idem.preset("dw5")
    assert "dw4-quick" in err.value.valid
    with pytest.raises(UsageError, match="itself"):
        presets.resolve({"a": {"base": "a"}}, "a")


def test_every_sampler_with_presets_lists_them() -> None:
    with_presets = [n for n in samplers.names() if hasattr(samplers.module(n), "preset_names")]
    assert set(with_presets) >= {"mala", "pt", "smc", "idem"}


def test_experiment_presets_are_blocks_and_includes() -> None:
    from boltzkit.experiments import amc_gmm

    table = presets.load(amc_gmm.PRESET_FILE)
    sweep = presets.blocks(table, "sweep")
    parts = [b for name in ("dims", "modes", "mcmc", "learned")
             for b in presets.blocks(table, name)]
    assert sweep == parts and len(sweep) == 5
    assert presets.blocks(table, "acceptance") == [{}]
    assert presets.blocks(table, "quick")[0]["dims"] == (2,)
    for name in presets.names(table):  # every block applies to the experiment's Config
        _, configs = amc_gmm.configs_from([f"preset={name}"])
        assert len(configs) == len(presets.blocks(table, name))
