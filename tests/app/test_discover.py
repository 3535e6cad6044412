"""What a newcomer can list: presets, experiments, a target's parameters."""

from __future__ import annotations

from typer.testing import CliRunner

from boltzkit.cli import app


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_presets_lists_every_sampler_and_its_presets() -> None:
    result = invoke("presets")
    assert result.exit_code == 0, result.output
    for needle in ("dw4-quick", "reference-lj13", "many-well-32", "trade", "(none)"):
        assert needle in result.output
    only = invoke("presets", "smc")
    assert "gmm40" in only.output and "dw4-quick" not in only.output
    bad = invoke("presets", "smcc")
    assert bad.exit_code == 2 and "valid samplers" in bad.output


def test_experiments_lists_each_with_its_summary() -> None:
    result = invoke("experiments")
    assert result.exit_code == 0
    assert "idem-verdict" in result.output and "iDEM against" in result.output


def test_one_targets_parameters_with_types_and_defaults() -> None:
    result = invoke("targets", "two-modes")
    assert result.exit_code == 0, result.output
    assert "variant" in result.output and "'isotropic'" in result.output
    assert "Grenioux" in result.output  # the description
    none = invoke("targets", "dw4")
    assert "(none)" in none.output
    bad = invoke("targets", "dw5")
    assert bad.exit_code == 2 and "valid targets" in bad.output and "Traceback" not in bad.output
