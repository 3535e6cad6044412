"""The idem-verdict experiment: the winner logic, and a tiny end-to-end run at equal budget."""

import json

import pytest

from boltzkit.experiments.idem_verdict import decide, run


def test_decide_counts_wins_lower_is_better_and_breaks_ties_by_first_metric():
    table = {"idem": {"a": 1.0, "b": 5.0}, "pt": {"a": 2.0, "b": 1.0}, "mala": {"a": 3.0, "b": 9.0}}
    v = decide(table, ["a", "b"])
    assert v["per_metric"] == {"a": "idem", "b": "pt"}
    assert v["winner"] == "idem" and v["wins"] == {"idem": 1, "pt": 1, "mala": 0}
    assert "verdict: idem wins 1 of 2" in v["text"]
    assert decide(table, ["b"])["winner"] == "pt"


def test_tiny_verdict_gives_every_baseline_the_idem_budget(tmp_path):
    pytest.importorskip("ot")
    overrides = ["target=gmm40", "preset=gmm40-quick", "n_samples=64", "max_ot=64",
                 "baselines=mala", "idem.hidden=8", "idem.ema_decay=none",
                 "idem.n_layers=1", "idem.n_outer=2", "idem.n_inner=2", "idem.batch_size=16",
                 "idem.n_mc=8", "idem.n_generate=32", "idem.n_sde_steps=10", "idem.n_init=32",
                 "mcmc.n_chains=8"]
    headline = run(tmp_path, overrides)
    record = json.loads((tmp_path / "verdict.json").read_text())
    spent = record["counts"]["idem"]["n_energy"]
    assert spent == 2 * 2 * 16 * 8 == headline["budget_n_energy"]  # outer x inner x B x K
    assert 0 < record["counts"]["mala"]["n_energy"] <= spent
    assert headline["winner"] in ("idem", "mala")
    assert "x_w2" in record["table"]["mala"] and "x_w2_floor" in record["table"]["mala"]
    assert (tmp_path / "verdict.md").read_text().count("| x_w2 |") == 1
    with pytest.raises(KeyError, match="valid"):
        run(tmp_path, ["no_such_key=1"])
    with pytest.raises(KeyError, match="n_temps"):
        run(tmp_path, ["baselines=mala", "mcmc.n_temps=2"])
