"""The TRADE experiments: grid references and scores against closed forms, tables, settings, and
the experiments end to end on their quick preset (multi-well in the default suite, the others
marked slow)."""

import csv
import json
import math

import pytest
import torch
from torch import nn

from boltzkit.experiments import trade_exps as tx
from boltzkit.experiments import trade_extra as tx_extra
from boltzkit.experiments.tables import write_tables
from boltzkit.experiments.trade_extra import calibration

# Second moment of N(0, diag(1, 4)): E|x|^2 = 5.
LOG_P = lambda x: -0.5 * (x[..., 0] ** 2 + x[..., 1] ** 2 / 4)  # noqa: E731
LOG_Z = math.log(2 * math.pi * 2.0)


class GaussianFlow(nn.Module):
    """N(0, scale^2 diag(1, 4)) whatever the condition and context."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float64))

    def log_prob(self, x, c, context=None):
        return LOG_P(x / self.scale) - LOG_Z - 2 * torch.log(self.scale)

    def sample_and_log_prob(self, n, c, context=None):
        x = torch.randn(n, 2, dtype=torch.float64) * torch.tensor([1.0, 2.0]) * self.scale
        return x, self.log_prob(x, c)


def _reference(n=20_000, log_Z=None):
    box = torch.tensor([9.0, 17.0], dtype=torch.float64)
    return tx.grid_reference(LOG_P, -box, box, 0.1, n, log_Z)


def test_grid_reference_is_unbiased_and_normalised():
    torch.manual_seed(0)
    x, log_p, log_w = _reference()
    torch.testing.assert_close(log_p, LOG_P(x) - LOG_Z, atol=1e-8, rtol=0)
    est = tx.estimators.snis(log_w, (x**2).sum(-1))
    assert abs(est.mean - 5.0) < 5 * est.se
    assert tx.estimators.ess_fraction(log_w) > 0.99


def test_gmm_kl_is_zero_for_the_exact_density_and_shifts_with_log_q():
    torch.manual_seed(0)
    ref = _reference(2000, LOG_Z)
    assert tx.gmm_kl(GaussianFlow(1.0), ref, 1.0)[0] == pytest.approx(0.0, abs=1e-10)
    kl, se = tx.gmm_kl(GaussianFlow(1.5), ref, 1.0)
    exact = 2 * (1 / (2 * 1.5**2) - 0.5 + math.log(1.5))  # per-axis Gaussian KL, two axes
    assert abs(kl - exact) < 5 * se + 1e-3


def test_calibration_of_exact_flow_is_diagonal_and_too_narrow_flow_is_not():
    torch.manual_seed(0)
    ref = _reference(4000, LOG_Z)
    levels = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    y = torch.zeros(2)
    exact = calibration(GaussianFlow(1.0), ref, 1.0, y, levels)
    se = torch.sqrt(levels * (1 - levels) / 4000)
    assert ((exact - levels).abs() < 5 * se + 0.01).all()
    narrow = calibration(GaussianFlow(0.6), ref, 1.0, y, levels)
    assert ((levels - narrow) > 0.1).any()


def test_tables_and_settings(tmp_path):
    rows = [{"method": m, "T": t, "kl": 0.1 * i, "ess_fraction": 0.5}
            for i, (m, t) in enumerate([("a", 0.5), ("a", 1.0), ("b", 0.5), ("b", 1.0)])]
    write_tables(tmp_path, rows, ("kl",), "T", "title")
    md = (tmp_path / "results.md").read_text()
    assert "| method | T=0.5 | T=1 |" in md and "| b | 0.2 | 0.3 |" in md
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 4
    assert tx.settings_from(["preset=quick", "n_steps=7"]).n_steps == 7
    with pytest.raises(KeyError, match="valid keys"):
        tx.settings_from(["n_stpes=7"])
    with pytest.raises(KeyError, match="trade-grid"):
        tx.trade_config(tx.Settings(), "no-such-method")
    assert tx.trade_config(tx.Settings(trade_set=("rho=mse",)), "trade-ema").rho == "mse"


def test_multi_well_end_to_end(tmp_path):
    torch.manual_seed(0)
    out = tx.run_multi_well(tmp_path, ["preset=quick", "methods=trade-free,latent_nll"],
                            lambda *a, **k: None)
    assert set(out["kl_T0.5"]) == {"trade-free", "latent_nll"}
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 2 * 3 and all(math.isfinite(float(r["kl"])) for r in rows)
    assert json.loads((tmp_path / "settings.json").read_text())["settings"]["seed"] == 0
    assert "## kl" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "run", [tx.run_gmm, tx_extra.phi4_experiment, tx_extra.two_moons_experiment])
def test_experiments_end_to_end_quick(tmp_path, run):
    out = run(tmp_path, ["preset=quick", "figures=true"], lambda *a, **k: None)
    assert out and (tmp_path / "results.md").exists() and (tmp_path / "results.csv").exists()


def test_phi4_and_calibration_figures_are_written(tmp_path):
    from boltzkit.experiments import trade_extra as te

    rows = [{"method": m, "kappa": k, "ess_fraction": 0.5, "abs_m": k, "action": -k,
             "chi": 1.0, "binder": 0.3} for m in ("hmc", "trade-grid-fit") for k in (0.22, 0.3)]
    rows = [{k: v for k, v in r.items() if not (r["method"] == "hmc" and k == "ess_fraction")}
            for r in rows]  # HMC has no ESS: its curve is left out of that panel
    path = te.phi4_figure(tmp_path / "obs.png", rows)
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    cal = te.calibration_figure(tmp_path / "cal.png", levels,
                                {("latent_nll", 1.0): levels.tolist(),
                                 ("trade-free", 0.5): (levels ** 2).tolist()})
    for p in (path, cal):
        assert p.exists() and p.stat().st_size > 5000
