"""Bad input through the real CLI: one line, exit 2 for bad usage (naming what is valid), exit 1
for a file or file system that fails (naming the path and the cause); never a traceback
(issue 11, finding 4). Every numeric config field is range-checked when the config is built."""

from __future__ import annotations

import dataclasses
import errno
import math
import shutil
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from boltzkit.core.errors import UsageError
from boltzkit.mc import mcmc as kernels
from boltzkit.mc import smc as engine
from boltzkit.samplers import mcmc, smc

SAMPLE = ("sample", "gmm40", "--budget", 20_000, "--quiet", "--no-figures")


# ---- bad usage: exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "override", "needle"), [
    ("hmc", "n_leapfrog=0", "n_leapfrog must be >= 1, got 0"),
    ("smc", "resampler=foo", "unknown resampler 'foo'; valid resamplers: multinomial"),
    ("mala", "step_size=-1", "step_size must be > 0 and finite, got -1.0"),
    ("smc", "ess_threshold=2", "ess_threshold must lie in [0.0, 1.0], got 2.0"),
    ("pt", "T_max=0.5", "T_max must be >= 1"),
    ("mala", "burn_in=1", "burn_in must be a fraction in [0, 1)"),
])
def test_out_of_range_config_values_are_one_line_errors(bk: Any, tmp_path: Path, sampler: str,
                                                        override: str, needle: str) -> None:
    result = bk.cli(*SAMPLE, "--sampler", sampler, "--set", override, "--out", tmp_path / "r")
    bk.error(result, 2, needle)
    assert not (tmp_path / "r").exists()  # checked before anything is written


def test_unknown_parameter_of_a_target_without_parameters(bk: Any, tmp_path: Path) -> None:
    result = bk.cli("sample", "dw4", "--sampler", "mala", "--budget", 1000, "--target-param",
                 "foo=1", "--out", tmp_path / "r", "--quiet")
    bk.error(result, 2, "unknown target parameter 'foo'",
                          "target 'dw4' takes no parameters")
    assert "valid keys: \n" not in result.output


def test_reference_with_no_samples_is_refused(bk: Any) -> None:
    bk.error(bk.cli("reference", "dw4", "--n", 0), 2, "--n-samples must be a positive")


def test_out_on_an_existing_file_or_below_one(bk: Any, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "run"):
        bk.error(bk.cli(*SAMPLE, "--sampler", "mala", "--out", out), 2,
                              "existing file")
    assert afile.read_text() == "x"


def test_out_on_a_read_only_file_system(bk: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = bk.cli(*SAMPLE, "--sampler", "mala", "--out", tmp_path / "ro" / "run")
    bk.error(result, 1, "ro/run", "Read-only file system")


def test_garbage_reference_file_says_so(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "ref.npy"
    garbage.write_bytes(b"not an array at all")
    result = bk.cli("evaluate", mala_run, "--reference", garbage, "--no-figures")
    bk.error(result, 2, "ref.npy", "not a NumPy array file")
    assert "pickle" not in result.output


def test_reference_with_a_nan_row_is_refused(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    ref = np.random.default_rng(0).normal(size=(50, 2))
    ref[7, 1] = np.nan
    np.save(tmp_path / "nan.npy", ref)
    result = bk.cli("evaluate", mala_run, "--reference", tmp_path / "nan.npy", "--no-figures")
    bk.error(result, 2, "1 of 50 reference rows hold NaN or inf (first: row 7)")


# ---- damaged run files: exit 1 -------------------------------------------------------------
def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def test_corrupt_run_json_on_evaluate_and_resume(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    (run / "run.json").write_text('{"target": "gmm')
    for args in (("evaluate", run, "--no-figures"), ("sample", "--resume", run, "--quiet")):
        bk.error(bk.cli(*args), 1, "run.json: corrupt JSON")


def test_run_json_without_its_keys(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    (run / "run.json").write_text('{"target": "gmm40"}')
    bk.error(bk.cli("evaluate", run, "--no-figures"), 1,
                          "run.json: corrupt run file (missing sampler")


def test_truncated_checkpoint_on_resume(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    ckpt = run / "mcmc_checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:300])
    before = bk.json(run / "run.json")
    result = bk.cli("sample", "--resume", run, "--budget", 40_000, "--quiet", "--no-figures")
    bk.error(result, 1, "mcmc_checkpoint.pt: truncated or corrupt checkpoint")
    assert bk.json(run / "run.json") == before  # a failed resume is not recorded


def test_garbage_samples_npz(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    (run / "samples.npz").write_bytes(b"garbage")
    result = bk.cli("evaluate", run, "--no-figures")
    bk.error(result, 1, "samples.npz: corrupt or truncated .npz file")
    assert "pickle" not in result.output


# ---- every numeric field is range-checked when the config is built -------------------------
CONFIGS = [mcmc.RWMHConfig(), mcmc.MALAConfig(), mcmc.HMCConfig(), mcmc.PTConfig(),
           smc.Config()]


def _numeric_fields(config: object) -> list[tuple[str, type]]:
    hints = typing.get_type_hints(type(config))
    out = []
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        numeric = kinds & {int, float}
        if numeric and bool not in kinds:
            out.append((f.name, float if float in numeric else int))
    return out


CASES = [(c, name, bad) for c in CONFIGS for name, kind in _numeric_fields(c)
         for bad in ((-1, math.nan) if kind is float else (-1,))]


@pytest.mark.parametrize(("config", "field", "bad"), CASES,
                         ids=[f"{type(c).__name__}.{n}={b}" for c, n, b in CASES])
def test_every_numeric_config_field_is_range_checked(config: object, field: str,
                                                     bad: float) -> None:
    with pytest.raises(UsageError, match=field):
        dataclasses.replace(config, **{field: bad})  # type: ignore[type-var]


def test_the_range_checks_cover_the_fields_they_should() -> None:
    assert len(CASES) >= 40
    assert ("n_leapfrog", int) in _numeric_fields(mcmc.HMCConfig())


def test_kernels_and_engine_configs_check_their_ranges() -> None:
    for make in (lambda: kernels.MALA(step_size=-1.0), lambda: kernels.HMC(n_leapfrog=0),
                 lambda: engine.Resampling(ess_threshold=2.0),
                 lambda: engine.AdaptiveSchedule(cess_fraction=1.5),
                 lambda: engine.MCMCMove(kernels.MALA(0.1), n_steps=0)):
        with pytest.raises(UsageError):
            make()
    with pytest.raises(KeyError, match="valid resamplers"):
        engine.Resampling("foo")


def test_experiment_out_on_an_existing_file(bk: Any, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    bk.error(bk.cli("experiment", "amc-gmm", "--out", afile, "--quiet"), 2, "existing file")
    assert afile.read_text() == "x"
