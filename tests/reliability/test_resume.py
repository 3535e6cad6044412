"""Resume and interruption (issue 11, finding 5): a resume must be the recorded run with a
budget above what it spent, is recorded only once it succeeded and logs where it resumed;
SIGINT and SIGTERM stop a run cleanly with exit code 130 / 143 and say how to resume; each
`n_nonfinite` in diagnostics.json has one meaning."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import boltzkit


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


@pytest.mark.parametrize("given", [
    ("lj13", "--sampler", "mala"), ("gmm40", "--sampler", "pt"), ("--sampler", "hmc"),
    ("--seed", "7"), ("--preset", "quick"), ("--set", "n_chains=64"), ("--n-samples", "10"),
])
def test_resume_refuses_a_different_run(bk: Any, mala_run: Path, tmp_path: Path,
                                        given: tuple[str, ...]) -> None:
    run = _copy(mala_run, tmp_path)
    before = bk.json(run / "run.json")
    result = bk.cli("sample", *given, "--resume", run, "--budget", 40_000, "--quiet")
    bk.error(result, 2, f"--resume {run} is a gmm40 / mala run", "Omit them")
    assert bk.json(run / "run.json") == before


def test_resume_accepts_the_recorded_names(bk: Any, mala_run: Path, tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    result = bk.cli("sample", "gmm40", "--sampler", "mala", "--seed", "0", "--resume", run,
                    "--budget", 30_000, "--quiet", "--no-figures")
    assert result.exit_code == 0, result.output


def test_resume_with_a_budget_already_spent_is_refused(bk: Any, mala_run: Path,
                                                       tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    before = bk.json(run / "run.json")
    spent = before["counts"]["n_energy"]
    result = bk.cli("sample", "--resume", run, "--budget", 1000, "--quiet")
    bk.error(result, 2, f"--budget 1,000 is not above the {spent:,} energy evaluations")
    assert bk.json(run / "run.json") == before  # budget not rewritten, resume not recorded


def test_a_successful_resume_is_logged_and_recorded(bk: Any, mala_run: Path,
                                                    tmp_path: Path) -> None:
    run = _copy(mala_run, tmp_path)
    step = bk.json(run / "diagnostics.json")["diagnostics"]["n_steps"]
    result = bk.cli("sample", "--resume", run, "--budget", 30_000, "--quiet", "--no-figures")
    assert result.exit_code == 0, result.output
    assert f"resumed from checkpoint at step {step}" in (run / "log.txt").read_text()
    record = bk.json(run / "run.json")
    assert record["budget"] == 30_000 and len(record["resumed"]) == 1


def test_diagnostics_json_gives_each_count_one_name(mala_run: Path, bk: Any) -> None:
    written = bk.json(mala_run / "diagnostics.json")
    assert "n_nonfinite" in written["counts"]
    assert "n_nonfinite" not in written["diagnostics"]
    assert "sampler_n_nonfinite" in written["diagnostics"]
    assert set(written["notes"]) == {"counts.n_nonfinite", "diagnostics.sampler_n_nonfinite"}


# ---- signals: a real process ---------------------------------------------------------------
def _start(out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(boltzkit.__file__).parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", "boltzkit.cli", "sample", "dw4", "--sampler", "mala",
         "--budget", "100000000", "--out", str(out), "--quiet", "--no-figures"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_until_sampling(out: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    log, deadline = out / "log.txt", time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "start:" in log.read_text():
            time.sleep(0.5)
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the run did not start sampling: {proc.communicate()[0]}")


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                       (signal.SIGTERM, 143, "SIGTERM")])
def test_signal_stops_the_run_cleanly_and_says_how_to_resume(tmp_path: Path, signum: int,
                                                             code: int, name: str) -> None:
    out = tmp_path / "run"
    proc = _start(out)
    _wait_until_sampling(out, proc)
    proc.send_signal(signum)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    assert f"interrupted by {name} after" in flat and "steps" in flat
    assert f"resume with: boltzkit sample --resume {out}" in flat
    assert f"interrupted by {name}" in (out / "log.txt").read_text()
    assert not list(out.glob("*.tmp"))
