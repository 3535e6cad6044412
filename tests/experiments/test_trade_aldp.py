"""trade-aldp end to end on a tiny preset (fresh short MD into a temporary cache): every method x
temperature row, ESS/N in (0, 1] from real weights, the noise floors, the figures; the 300 K
flow only at 300 K; an unknown method is refused with the valid names."""

import csv

import pytest

pytest.importorskip("openmm")

from boltzkit.experiments import trade_aldp  # noqa: E402


def test_trade_aldp_quick_writes_every_row_and_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    methods = "methods=trade-free,reverse_kl,bg-300,pt-300,md-300"
    headline = trade_aldp.run(out, ["preset=quick", methods,
                                    "temperatures=300,600", "n_eval=64", "seeds=0,1",
                                    "quick_md_frames=24", "baseline_budget=12000"],
                              lambda *a, **k: None)
    rows = list(csv.DictReader(open(out / "results.csv")))
    cells = {(r["method"], float(r["temperature_K"]), int(r["seed"])) for r in rows}
    assert cells == {(m, t, s) for s in (0, 1) for m, t in [
        ("trade-free", 300.0), ("trade-free", 600.0), ("reverse_kl", 300.0),
        ("reverse_kl", 600.0), ("bg-300", 300.0), ("pt-300", 300.0), ("md-300", 300.0)]}
    for r in rows:
        if r["method"] in trade_aldp.BASELINES:  # equal budget, spent; no weights
            assert 0.9 * 12000 <= int(r["energy_evals"]) <= 12000 and r["ess_fraction"] == ""
        elif r["method"] == "reverse_kl":  # no MD data in its cost
            assert int(r["energy_evals"]) == int(r["train_energy_evals"]) + 64
        else:  # the MD data's force evaluations come first
            assert 0 < float(r["ess_fraction"]) <= 1
            assert int(r["energy_evals"]) > int(r["train_energy_evals"]) + 64
        assert float(r["rama_kl_floor"]) >= 0 and float(r["energy_w2_kT_floor"]) >= 0
    assert set(headline) == {"trade-free", "reverse_kl", "bg-300", "pt-300", "md-300"}
    assert "+-" in (out / "results.md").read_text()  # two seeds: mean +- SE
    assert (out / "ramachandran_grid.png").exists() and (out / "free_energy_phi_300K.png").exists()
    assert "## ess_fraction" in (out / "results.md").read_text()


def test_an_unknown_method_or_temperature_is_refused_with_the_valid_ones():
    from boltzkit.core.errors import UsageError

    with pytest.raises(UsageError, match="trade-free"):
        trade_aldp.settings_from(["methods=nope"])
    with pytest.raises(UsageError, match="450"):
        trade_aldp.settings_from(["temperatures=310"])


def test_energies_are_in_kt_of_the_evaluated_temperature():
    """The energy W2 and its floor share one unit: E / kT at the temperature evaluated."""
    import torch

    from boltzkit.targets.family import Family
    from boltzkit.targets.molecules import aldp
    from boltzkit.targets.molecules.constrained import ConstrainedInternalTarget

    space = ConstrainedInternalTarget(aldp(temperature=trade_aldp.T0))
    at_300 = Family(space, "temperature").at(300.0 / trade_aldp.T0)
    x = aldp().positions[None]
    reduced = -at_300.target.tempered(300.0 / trade_aldp.T0).uncounted().log_prob(x)
    torch.testing.assert_close(reduced, aldp(temperature=300.0).energy(x))
