"""Safe defaults: a sampler with a preset for the target uses it unless told `--preset none`,
and the run records which."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from boltzkit.cli import app


def run(tmp_path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    result = CliRunner().invoke(app, ["sample", "dw4", "--sampler", "mala", "--budget", "30000",
                                      "--n-samples", "64", "--out", str(out), "--quiet",
                                      "--no-figures", *extra])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "run.json").read_text())
    config = json.loads((out / "config.json").read_text())
    return {"record": record, "config": config, "log": (out / "log.txt").read_text(),
            "summary": (out / "summary.md").read_text()}


def test_the_targets_preset_is_used_by_default_and_recorded(tmp_path) -> None:
    default = run(tmp_path, "default")
    assert default["record"]["preset"] == "dw4"
    assert default["config"]["n_chains"] == 128 and default["config"]["init_relax_steps"] == 100
    assert "using preset 'dw4'" in default["log"]
    plain = run(tmp_path, "plain", "--preset", "none")
    assert plain["record"]["preset"] in (None, "none")
    assert plain["config"]["init_relax_steps"] == 0


def test_every_run_writes_a_summary_with_command_budget_and_metrics(tmp_path) -> None:
    summary = run(tmp_path, "s")["summary"]
    assert "boltzkit sample dw4 --sampler mala --budget 30000" in summary
    assert "of 30,000 energy evaluations" in summary and "## Warnings" in summary
    assert "| count_n_energy |" in summary
