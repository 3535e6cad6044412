"""Experiment tables over seeds: each cell is the mean +- SE (std / sqrt(n)) of the seeds whose
value is finite; one seed gives the value alone."""

import csv
import math

from boltzkit.experiments.tables import seed_summary, write_tables


def _rows():
    return [{"method": "a", "T": 1.0, "seed": 0, "kl": 1.0},
            {"method": "a", "T": 1.0, "seed": 1, "kl": 3.0},
            {"method": "a", "T": 1.0, "seed": 2, "kl": math.nan},
            {"method": "b", "T": 1.0, "seed": 0, "kl": 0.5}]


def test_mean_and_standard_error_over_the_finite_seeds():
    cells = seed_summary(_rows(), "T", ("kl",))
    a, b = cells[("a", 1.0)], cells[("b", 1.0)]
    assert a["n_seeds"] == 3 and a["kl"] == 2.0
    assert math.isclose(a["kl_se"], math.sqrt(2.0) / math.sqrt(2))  # std of (1, 3) / sqrt(2)
    assert b["kl"] == 0.5 and "kl_se" not in b


def test_tables_give_mean_pm_se_and_a_summary_csv(tmp_path):
    write_tables(tmp_path, _rows(), ("kl",), "T", "title")
    md = (tmp_path / "results.md").read_text()
    assert "| a | 2 +- 1 |" in md and "| b | 0.5 |" in md
    summary = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert {r["method"]: float(r["kl"]) for r in summary} == {"a": 2.0, "b": 0.5}
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == 4
