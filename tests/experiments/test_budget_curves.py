"""budget-curves: every (target, method, budget) is a real run under that budget; the verdict
compares neural methods with PT beyond the noise."""

from __future__ import annotations

import csv
import json

import pytest

from boltzkit.core.errors import UnknownName
from boltzkit.experiments import budget_curves as bc


def test_quick_study_writes_tables_and_a_verdict_within_budgets(tmp_path) -> None:
    headline = bc.run(tmp_path, ["preset=quick"], lambda *a, **k: None)
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert {(r["method"], int(r["budget"])) for r in rows} == {
        (m, b) for m in ("pt", "idem-ode") for b in (30_000, 100_000)}
    for r in rows:
        assert not r["failed"], r["failed"]
        assert 0 < float(r["count_n_energy"]) <= int(r["budget"])  # training included
    assert "ess_fraction" in next(r for r in rows if r["method"] == "idem-ode")
    assert set(headline["gmm40"]) == {"energy_w2", "mode_weight_error_max_pp"}
    assert json.loads((tmp_path / "verdict.json").read_text()) == headline


def test_the_verdict_needs_a_margin_beyond_the_noise() -> None:
    rows = [{"target": "t", "method": "pt", "budget": 10, "m": 1.0, "m_floor_std": 0.2},
            {"target": "t", "method": "flow", "budget": 10, "m": 0.7},
            {"target": "t", "method": "pt", "budget": 100, "m": 1.0, "m_floor_std": 0.2},
            {"target": "t", "method": "flow", "budget": 100, "m": 0.5}]
    assert bc.verdict(rows, "t", "m") == "flow beats PT on m from 100 energy evaluations"
    assert "no neural method" in bc.verdict(rows[:2], "t", "m")  # 0.7 is within 2 x 0.2


def test_unknown_methods_and_presets_list_the_valid_ones() -> None:
    with pytest.raises(UnknownName, match="idem-ode"):
        bc.settings_from(["methods=nuts"])
    with pytest.raises(UnknownName, match="quick"):
        bc.settings_from(["preset=huge"])


def test_idem_smc_is_a_neural_method_run_as_energy_idem_with_the_smc_correction() -> None:
    sampler, sets = bc.METHODS["idem-smc"]
    assert sampler == "idem" and set(sets) == {"correction=smc", "parametrisation=energy",
                                               bc.IDEM_UNTIL_BUDGET}
    rows = [{"target": "t", "method": "pt", "budget": 10, "m": 1.0, "m_floor_std": 0.1},
            {"target": "t", "method": "idem-smc", "budget": 10, "m": 0.5}]
    assert bc.verdict(rows, "t", "m") == "idem-smc beats PT on m from 10 energy evaluations"


def test_seeds_are_averaged_and_the_verdict_uses_their_standard_errors() -> None:
    rows = [{"target": "t", "method": "pt", "budget": 10, "seed": s, "m": v, "m_floor_std": 0.0}
            for s, v in enumerate([1.0, 1.2, 0.8])]
    rows += [{"target": "t", "method": "flow-pt", "budget": 10, "seed": s, "m": v}
             for s, v in enumerate([0.7, 0.5, 0.6])]
    rows += [{"target": "t", "method": "flow", "budget": 10, "seed": 0, "failed": "too small"}]
    summary = {r["method"]: r for r in bc.aggregate(rows)}
    assert summary["pt"]["m"] == pytest.approx(1.0) and summary["pt"]["n_seeds"] == 3
    assert summary["pt"]["m_se"] == pytest.approx(0.2 / 3**0.5)
    assert summary["flow"] == {"target": "t", "method": "flow", "budget": 10, "n_seeds": 0,
                               "failed": "too small"}
    # 1.0 - 0.6 = 0.4 > 2 sqrt(0.115^2 + 0.058^2) = 0.26: beaten; PT seeds spread 3x: not
    assert "flow-pt beats PT" in bc.verdict(list(summary.values()), "t", "m")
    wide = [r | {"m": 1.0 + 3 * (r["m"] - 1.0)} if r["method"] == "pt" else r for r in rows]
    assert "no neural method" in bc.verdict(bc.aggregate(wide), "t", "m")
