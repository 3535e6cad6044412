"""Helpers of the reliability suite, as fixtures (the tests run with --import-mode=importlib, so
they cannot import this file): the `bk` fixture's `cli` runs the real CLI (typer's CliRunner, in
process), its `error` checks that an error is one clean line with the right exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from boltzkit.cli import app

_runner = CliRunner()


def cli(*args: Any) -> Result:
    """`boltzkit ARGS` in process; the result's output holds stdout and stderr."""
    return _runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result: Result, code: int, *needles: str) -> None:
    """Exit `code`, no traceback (the CLI exited itself), one 'Error:' line holding `needles`."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in " ".join(result.output.split()), result.output


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


class Harness:
    """What a reliability test needs: `cli(*args)`, `error(result, code, *needles)`,
    `json(path)`."""

    cli = staticmethod(cli)
    error = staticmethod(assert_one_line_error)
    json = staticmethod(read_json)


@pytest.fixture
def bk() -> Harness:
    """The harness (see `Harness`)."""
    return Harness()


@pytest.fixture(scope="module")
def mala_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished MALA run on gmm40 with its checkpoint (copy it before damaging it)."""
    out = tmp_path_factory.mktemp("runs") / "mala"
    result = cli("sample", "gmm40", "--sampler", "mala", "--budget", 20_000, "--out", out,
                 "--quiet", "--no-figures", "--n-samples", 200)
    assert result.exit_code == 0, result.output
    return out
