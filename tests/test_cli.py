"""The command line end to end (typer's CliRunner): run directories, metrics, bad input.

A tiny fake sampler registered for the duration of a test keeps most of these fast and
independent of the real samplers; one test runs the real MALA on gmm40 at a small budget.
"""

from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from boltzkit import samplers, targets
from boltzkit.app import rundir
from boltzkit.cli import app
from boltzkit.core.errors import UnknownName
from boltzkit.samplers import SampleResult

runner = CliRunner()


# ---- a fake sampler following the convention of boltzkit.samplers ------------------------
@dataclass(frozen=True)
class FakeConfig:
    noise: float = 0.1
    batch: int = 100
    weighted: bool = False
    nan_rows: int = 0
    levels: tuple[int, ...] = (1, 2)


def fake_preset(name: str) -> FakeConfig:
    presets = {"wide": FakeConfig(noise=1.0)}
    if name not in presets:
        raise UnknownName("preset", name, presets)
    return presets[name]


def fake_sample(target, config, *, n_samples, budget, callback, run_dir=None, resume=False):
    """Exact samples plus Gaussian noise; spends the budget on log_prob calls in batches."""
    callback("start", total=budget, unit="evals", description="fake")
    spent = 0
    while spent < budget:
        n = min(config.batch, budget - spent)
        target.log_prob(torch.zeros(n, target.dim, dtype=torch.float64))
        spent += n
        callback("advance", n=n, spent=spent)
    callback("log", message="fake sampler done")
    callback("end")
    if run_dir is not None:
        (Path(run_dir) / "checkpoint.txt").write_text(f"resume={resume}\n")
    x = target.sample(n_samples).to(torch.float64)
    x = x + config.noise * torch.randn_like(x)
    x[: config.nan_rows] = float("nan")
    log_w = -0.5 * (x**2).sum(-1) if config.weighted else None
    return SampleResult(x, log_w, 0.1 if config.weighted else None,
                        {"ess_trace": [1.0, 0.8, 0.6], "resumed": resume},
                        target.counter.as_dict())


@pytest.fixture
def fake(monkeypatch):
    mod = types.ModuleType("boltzkit_test_fake_sampler")
    mod.Config, mod.preset, mod.sample = FakeConfig, fake_preset, fake_sample
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(samplers.REGISTRY._entries, "fake", mod.__name__)
    return mod


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def sample(out: Path, *extra: str, target: str = "gmm40", figures: bool = False):
    return invoke("sample", target, "--sampler", "fake", "--budget", "1000", "--seed", "3",
                  "--n-samples", "300", "--out", out, "--quiet",
                  "--figures" if figures else "--no-figures", *extra)


def assert_clean_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


# ---- happy paths --------------------------------------------------------------------------
def test_targets_lists_every_registered_target():
    result = invoke("targets")
    assert result.exit_code == 0, result.output
    for name in targets.names():
        assert name[:10] in result.output
    assert "exact" in result.output


def test_sample_writes_a_complete_run_directory(fake, tmp_path):
    out = tmp_path / "run"
    result = sample(out, "--set", "noise=0.05", "--set", "levels=3,4", figures=True)
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")
    for name in ("run.json", "config.json", "samples.npz", "diagnostics.json", "metrics.json",
                 "log.txt", "energy_hist.png", "projection.png", "ess.png"):
        assert (out / name).exists(), name
    record = rundir.read_record(out)
    assert record["seed"] == 3 and record["budget"] == 1000 and record["sampler"] == "fake"
    assert record["environment"]["boltzkit"]
    assert "sample" in record["command"]
    assert record["counts"]["n_energy"] == 1000
    assert json.loads((out / "config.json").read_text()) == {
        "noise": 0.05, "batch": 100, "weighted": False, "nan_rows": 0, "levels": [3, 4]}
    x, log_w, log_Z = rundir.read_samples(out)
    assert x.shape == (300, 2) and log_w is None and log_Z is None
    metrics = rundir.read_metrics(out)
    assert metrics["n_samples"] == 300 and metrics["count_n_energy"] == 1000
    assert "exact sampler" in metrics["reference_source"]
    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert len(numbers) >= 3 and all(math.isfinite(v) for v in numbers.values())
    assert "fake sampler done" in (out / "log.txt").read_text()


def test_preset_and_weights_are_recorded(fake, tmp_path):
    out = tmp_path / "run"
    result = sample(out, "--preset", "wide", "--set", "weighted=true")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["noise"] == 1.0
    _, log_w, log_Z = rundir.read_samples(out)
    assert log_w.shape == (300,) and log_Z == pytest.approx(0.1)
    metrics = rundir.read_metrics(out)
    assert 0 < metrics["ess_fraction"] <= 1 and metrics["sampler_log_Z"] == pytest.approx(0.1)


def test_evaluate_reproduces_metrics_json(fake, tmp_path):
    out = tmp_path / "run"
    assert sample(out).exit_code == 0
    before = rundir.read_metrics(out)
    result = invoke("evaluate", out, "--no-figures")
    assert result.exit_code == 0, result.output
    assert rundir.read_metrics(out) == before


def test_evaluate_against_an_explicit_reference_file(fake, tmp_path):
    out = tmp_path / "run"
    assert sample(out).exit_code == 0
    ref = tmp_path / "ref.npz"
    np.savez(ref, samples=targets.get("gmm40").sample(500).numpy())
    result = invoke("evaluate", out, "--reference", ref, "--no-figures")
    assert result.exit_code == 0, result.output
    metrics = rundir.read_metrics(out)
    assert metrics["reference_source"] == "file"


def test_nonfinite_samples_are_counted_not_propagated(fake, tmp_path):
    out = tmp_path / "run"
    result = sample(out, "--set", "nan_rows=7")
    assert result.exit_code == 0, result.output
    metrics = rundir.read_metrics(out)
    assert metrics["n_nonfinite_samples"] == 7 and metrics["n_samples"] == 300
    assert "nan" not in result.output.lower().replace("nan_rows", "")
    json.loads((out / "metrics.json").read_text(), parse_constant=_no_constants)


def _no_constants(name: str):
    raise AssertionError(f"metrics.json holds {name}")


def test_resume_continues_in_the_same_directory(fake, tmp_path):
    out = tmp_path / "run"
    assert sample(out).exit_code == 0
    result = invoke("sample", "--resume", out, "--budget", "2000", "--quiet", "--no-figures")
    assert result.exit_code == 0, result.output
    assert (out / "checkpoint.txt").read_text().strip() == "resume=True"
    record = rundir.read_record(out)
    assert record["budget"] == 2000 and record["counts"]["n_energy"] == 2000
    assert len(record["resumed"]) == 1


def test_real_mala_on_gmm40(tmp_path):
    out = tmp_path / "mala"
    result = invoke("sample", "gmm40", "--sampler", "mala", "--budget", "20000", "--seed", "0",
                    "--n-samples", "200", "--out", out, "--quiet", "--no-figures")
    assert result.exit_code == 0, result.output
    metrics = rundir.read_metrics(out)
    assert metrics["count_n_energy"] <= 20000
    assert metrics["n_samples"] == 200
    assert not metrics["nonfinite_keys"]


# ---- bad input ----------------------------------------------------------------------------
def test_unknown_target_lists_valid_ones(fake, tmp_path):
    assert_clean_error(sample(tmp_path / "r", target="gmm41"), "unknown target", "gmm40",
                       "many-well-32")
    assert not (tmp_path / "r").exists()


def test_unknown_sampler_lists_valid_ones(tmp_path):
    result = invoke("sample", "gmm40", "--sampler", "nuts", "--budget", "10", "--out",
                    tmp_path / "r")
    assert_clean_error(result, "unknown sampler", "mala", "pt")


def test_unknown_config_key_lists_valid_ones(fake, tmp_path):
    assert_clean_error(sample(tmp_path / "r", "--set", "nosie=1"), "nosie", "valid keys",
                       "noise=0.1")


def test_badly_typed_override_says_so(fake, tmp_path):
    assert_clean_error(sample(tmp_path / "r", "--set", "batch=many"), "batch", "int")
    assert_clean_error(sample(tmp_path / "r", "--set", "noise"), "key=value")


def test_unknown_preset_and_target_param(fake, tmp_path):
    assert_clean_error(sample(tmp_path / "r", "--preset", "narrow"), "narrow", "wide")
    assert_clean_error(sample(tmp_path / "r", "--target-param", "d=3"), "target parameter")
    bad_value = sample(tmp_path / "r", "--target-param", "variant=bogus", target="two-modes")
    assert_clean_error(bad_value, "two-modes", "isotropic")


def test_wrong_shape_reference_is_a_clear_error(fake, tmp_path):
    ref = tmp_path / "ref.npy"
    np.save(ref, np.zeros((10, 3)))
    assert_clean_error(sample(tmp_path / "r", "--reference", ref), "shape (10, 3)", "[n, 2]")
    assert_clean_error(sample(tmp_path / "r2", "--reference", tmp_path / "missing.npy"),
                       "does not exist")


def test_existing_run_directory_is_not_overwritten(fake, tmp_path):
    out = tmp_path / "run"
    assert sample(out).exit_code == 0
    assert_clean_error(sample(out), "already holds a run")


def test_evaluate_on_a_non_run_directory(tmp_path):
    assert_clean_error(invoke("evaluate", tmp_path), "not a run directory")


def test_unknown_experiment_lists_valid_ones(tmp_path):
    result = invoke("experiment", "nope", "--out", tmp_path / "e")
    assert_clean_error(result, "unknown experiment", "amc-gmm")


def test_budget_too_small_for_a_sampler_is_a_clean_error(tmp_path):
    result = invoke("sample", "gmm40", "--sampler", "pt", "--budget", "10", "--out",
                    tmp_path / "r", "--quiet")
    assert_clean_error(result, "sampler 'pt'", "budget")


def test_missing_required_options(tmp_path):
    assert_clean_error(invoke("sample", "gmm40", "--out", tmp_path / "r"), "--sampler",
                       "--budget")


def test_demo_compares_pt_and_mala_at_equal_budget(tmp_path, monkeypatch):
    pytest.importorskip("boltzkit.targets.particles")
    from boltzkit.app import demo

    # Plumbing only: any DW-4-shaped set stands in for the reference.
    ref = tmp_path / "ref.npy"
    np.save(ref, np.random.default_rng(0).normal(scale=2.0, size=(400, 8)))
    monkeypatch.setattr(demo, "reference_for_demo", lambda *a: (ref, "stand-in"))
    monkeypatch.setattr(demo, "SETS", ("init_relax_steps=0",))  # a budget of a few steps
    out = tmp_path / "demo"
    result = invoke("demo", "--budget", "20000", "--n-samples", "40", "--out", out, "--quiet",
                    "--no-figures")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    counts = [run["count_n_energy"] for run in summary["runs"].values()]
    assert list(summary["runs"]) == ["pt", "mala"] and max(counts) <= 20000
    assert min(counts) > 0.9 * 20000, "both samplers should spend (nearly) the whole budget"
    for name in ("pt", "mala"):
        assert (out / name / "samples.npz").exists() and (out / name / "metrics.json").exists()
    table = (out / "table.md").read_text()
    assert "noise floor" in table and "energy W2" in table and "distance TV" in table
    # the command that ran (here pytest's argv), with what it resolved to; not always make run
    assert "Command: `make run`" not in table and "--budget 20000" in table
    assert "nan" not in table.lower()


@dataclass(frozen=True)
class FakeExperimentConfig:
    n: int = 3


def fake_experiment(out_dir, overrides, callback):
    from boltzkit.core.config import override

    config = override(FakeExperimentConfig(), overrides)
    callback("log", message=f"n={config.n}")
    (out_dir / "table.md").write_text("| n |\n")
    return {"n": config.n, "value": float("nan"), "trace": list(range(10))}


@pytest.fixture
def fake_experiment_registered(monkeypatch):
    from boltzkit import experiments

    mod = types.ModuleType("boltzkit_test_fake_experiment")
    mod.run = fake_experiment
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(experiments.REGISTRY._entries, "fake-exp", f"{mod.__name__}:run")


def test_experiment_dispatch_records_and_summarises(fake_experiment_registered, tmp_path):
    out = tmp_path / "e"
    result = invoke("experiment", "fake-exp", "--set", "n=5", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "table.md").exists() and "n=5" in (out / "log.txt").read_text()
    headline = json.loads((out / "headline.json").read_text())
    assert headline["n"] == 5 and headline["value"] is None
    record = json.loads((out / "experiment.json").read_text())
    assert record["overrides"] == ["n=5"] and record["seed"] == 0
    assert "n/a" in result.output and "nan" not in result.output.lower()


def test_experiment_unknown_key_lists_valid_ones(fake_experiment_registered, tmp_path):
    result = invoke("experiment", "fake-exp", "--set", "m=5", "--out", tmp_path / "e")
    assert_clean_error(result, "unknown config key", "n=3")


def test_reference_command_caches_a_set_that_sample_then_uses(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    result = invoke("reference", "phi4", "--target-param", "L=3", "--n", "32",
                    "--set", "n_chains=8", "--set", "thinning=1", "--quiet")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "cache" / "references").glob("phi4-*.npz"))
    out = tmp_path / "run"
    fake_exact = lambda self, n, generator=None: torch.randn(n, self.dim)  # noqa: E731
    monkeypatch.setattr(type(targets.get("phi4")), "_sample", fake_exact, raising=False)
    result = invoke("sample", "phi4", "--target-param", "L=3", "--sampler", "fake",
                    "--budget", "100", "--n-samples", "20", "--out", out, "--quiet",
                    "--no-figures")
    assert result.exit_code == 0, result.output
    assert rundir.read_metrics(out)["reference_source"].startswith("project reference")


def test_reference_command_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    assert_clean_error(invoke("reference", "gmm40"), "exact sampler")
    assert_clean_error(invoke("reference", "phi4", "--set", "n_chain=8"), "valid keys",
                       "n_chains")
    assert_clean_error(invoke("reference", "nope"), "unknown target", "dw4")


def test_demo_generates_a_reference_when_none_is_cached_or_published(tmp_path, monkeypatch):
    pytest.importorskip("boltzkit.targets.particles")
    from rich.console import Console

    from boltzkit.app import demo, reference

    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rundir, "published_reference", lambda *a: None)
    monkeypatch.setattr(reference, "DEFAULT_N_SAMPLES", 64)
    from boltzkit.samplers.mcmc import PTConfig

    small = PTConfig(n_chains=16, n_temps=2, thinning=1)
    monkeypatch.setattr(reference, "reference_config", lambda name: small)
    lines: list[str] = []
    path, source = demo.reference_for_demo(tmp_path, lines.append, Console(quiet=True), True)
    assert path.exists() and path.parent == tmp_path / "cache" / "references"
    assert "generated now" in source and any("generating" in line for line in lines)
    assert demo.reference_for_demo(tmp_path, lines.append, Console(quiet=True), True)[1].startswith(
        "project reference, cached")
