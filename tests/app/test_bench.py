"""`boltzkit bench` (boltzkit.app.bench): the quick leaderboard end to end, skip-finished on a
re-run, and bad names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from boltzkit.app import bench, executors, tracking
from boltzkit.cli import app
from boltzkit.core.errors import UsageError


def test_the_quick_bench_writes_cells_leaderboard_and_report(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["failed"] == [] and len(record["cells"]) == 4
    for cell in record["cells"]:
        for name in ("run.json", "metrics.json", "samples.npz", "metrics.jsonl"):
            assert (tmp_path / cell / name).exists(), (cell, name)
        assert tracking.read_stream(tmp_path / cell)[0]["event"] == "start"
        metrics = json.loads((tmp_path / cell / "metrics.json").read_text())
        assert metrics["count_n_energy"] <= bench.QUICK.budgets["gmm40"]
    board = record["leaderboard"]
    assert board["columns"] == ["target", "mala", "rwmh"] and len(board["rows"]) == 2
    assert all("energy_w2" in c and "floor" in c for row in board["rows"] for c in row[1:])
    page = (tmp_path / "report.html").read_text()
    assert "<caption>Leaderboard" in page and page.count("<section>") == 4
    again = bench.run(tmp_path, bench.plan(quick=True), executors.Serial())
    assert again["n_skipped"] == 4 and again["n_finished"] == 4


def test_bad_names_and_budgets_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="valid targets"):
        bench.plan(target_names=["gmm41"])
    with pytest.raises(UsageError, match="sampler"):
        bench.plan(sampler_names=["nuts"])
    with pytest.raises(UsageError, match="positive"):
        bench.plan(budget=0)
    full = bench.plan()
    assert set(bench.TARGETS) <= set(full.targets) and full.budgets["dw4"] == bench.BUDGETS["dw4"]


def test_the_device_reaches_every_cell_and_an_absent_one_is_refused(tmp_path: Path) -> None:
    quick = bench.plan(quick=True, device="cpu")
    assert {t.kwargs["device"] for t in bench.tasks(quick, tmp_path)} == {"cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="available: cpu"):
            bench.plan(quick=True, device="cuda")
    cell = bench.run_cell("gmm40", "mala", 3000, 0, 50, str(tmp_path / "cell"), device="cpu")
    config = json.loads((tmp_path / "cell" / "config.json").read_text())
    assert config["device"] == "cpu" and cell["metrics"]["n_samples"] == 50
