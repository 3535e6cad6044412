"""Figures that cannot mislead: robust energy axes, ESS against what its points are."""

from __future__ import annotations

import numpy as np

from boltzkit.app import plots


def test_energy_bins_without_reference_ignore_a_few_huge_energies() -> None:
    rng = np.random.default_rng(0)
    energies = np.concatenate([rng.normal(-200.0, 10.0, 990), np.full(10, 1.7e16)])
    bins = plots._bins({"samples": energies}, 60, 0.005)
    assert -300 < bins[0] < bins[-1] < 0  # the 1 % at 1.7e16 sit in the edge bin, counted
    # broken variant: pooled [0.5 %, 99.5 %] quantiles (the old bins) run to 1e16
    assert np.quantile(energies, 0.995) > 1e15


def test_energy_bins_follow_the_reference_when_there_is_one() -> None:
    ref = np.linspace(-10.0, 10.0, 1001)
    bins = plots._bins({"samples": np.full(5, 1e9), plots._REFERENCE: ref}, 10, 0.0)
    assert bins[0] == -11.0 and bins[-1] == 11.0


def test_ess_at_conditions_gets_its_own_figure(tmp_path) -> None:
    diagnostics = {"ess_fraction": [1.0, 0.9, 0.8],
                   "last_ess_fraction": [0.5, 0.7], "last_ess_fraction_x": [2.0, 0.5],
                   "last_ess_fraction_xlabel": "condition c (temperature)"}
    paths = plots.run_figures(tmp_path, np.zeros((10, 2)), np.zeros(10),
                              diagnostics=diagnostics)
    names = {p.name for p in paths}
    assert {"ess.png", "last_ess_fraction.png"} <= names
