"""Every numeric field of the flow, TRADE and iDEM configs is range-checked when the config is
built (the MCMC and SMC ones are in test_errors.py): a bad value is a UsageError naming the
field, and the CLI turns it into one line with exit 2."""

from __future__ import annotations

import dataclasses
import math

import pytest

from boltzkit.core.errors import UsageError
from boltzkit.samplers import flow, idem, trade

CASES = [
    (flow.Config, ["n_steps", "batch_size", "lr", "grad_clip", "n_data", "log_every",
                   "n_shards", "n_layers", "hidden", "depth", "bins", "bound"],
     ["forward_weight", "checkpoint_every"]),
    (trade.Config, ["c0", "n_conditions", "n_per_condition", "n_grid", "ema_every",
                    "n_ema_samples", "huber_delta", "n_steps", "batch_size", "lr", "grad_clip"],
     ["causality_eps", "weight", "warmup_steps", "checkpoint_every"]),
    (idem.Config, ["hidden", "n_layers", "n_mc", "buffer_size", "n_outer", "n_inner",
                   "batch_size", "n_generate", "n_sde_steps", "lr", "n_init", "scale",
                   "ode_tolerance"],
     ["loss_weight_eps", "noise_scale", "checkpoint_every"]),
]


@pytest.mark.parametrize(("make", "positive", "nonnegative"), CASES,
                         ids=["flow", "trade", "idem"])
def test_bad_numbers_are_refused_at_construction(make, positive, nonnegative) -> None:
    base = make()
    for name in positive:
        for bad in (0, -1, math.nan):
            with pytest.raises(UsageError, match=name):
                dataclasses.replace(base, **{name: bad})
    for name in nonnegative:
        with pytest.raises(UsageError, match=name):
            dataclasses.replace(base, **{name: -1})
        dataclasses.replace(base, **{name: 0})  # zero is valid


def test_orderings_and_fractions() -> None:
    with pytest.raises(UsageError, match="c_min <= c0 <= c_max"):
        trade.Config(c0=3.0, c_max=2.0)
    with pytest.raises(UsageError, match="sigma_min < sigma_max"):
        idem.Config(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(UsageError, match="ema_decay"):
        idem.Config(ema_decay=1.5)
    assert idem.Config(ema_decay=None).ema_decay is None  # optional fields may be None


def test_the_cli_prints_one_line(bk, tmp_path) -> None:
    result = bk.cli("sample", "gmm40", "--sampler", "flow", "--budget", 10_000, "--set",
                    "lr=-1", "--out", tmp_path / "r", "--quiet")
    bk.error(result, 2, "lr must be > 0")
