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


def test_dry_run_prints_the_resolved_config_and_creates_nothing(tmp_path) -> None:
    out = tmp_path / "never"
    result = invoke("sample", "dw4", "--sampler", "pt", "--budget", "2e5", "--out", str(out),
                    "--dry-run")
    assert result.exit_code == 0, result.output
    assert "config.n_temps" in result.output and "dw4" in result.output
    assert "nothing" in result.output and not out.exists()
    plain = invoke("sample", "dw4", "--sampler", "pt", "--budget", "1000", "--preset", "none",
                   "--dry-run")
    assert "none (defaults)" in plain.output


def test_counts_take_scientific_notation_and_reject_fractions(tmp_path) -> None:
    from boltzkit.cli import count

    assert count("2e5") == 200_000 and count("200_000") == 200_000
    bad = invoke("sample", "dw4", "--sampler", "pt", "--budget", "2.5", "--dry-run")
    assert bad.exit_code == 2 and "not a whole number" in bad.output
    assert invoke("reference", "dw4", "--n-samples", "0").exit_code == 2
