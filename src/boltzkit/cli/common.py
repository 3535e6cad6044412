"""What every command shares: the typer app, the consoles, error handling (one clean line
and an exit code), signals, tables."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from boltzkit.app import runner
from boltzkit.app.summary import fmt
from boltzkit.core.errors import UsageError
from boltzkit.core.files import describe_os_error

app = typer.Typer(
    name="boltzkit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Samplers for unnormalised Boltzmann densities, compared at equal energy budget.")
console = Console()
err_console = Console(stderr=True, log_path=False)

DEFAULT_N_SAMPLES = 1000
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Config override key=value (typed by the config field); repeatable.")]


def count(text: str) -> int:
    """A whole number given as 200000, 2e5 or 200_000 (a usage error otherwise)."""
    try:
        value = float(str(text).replace("_", ""))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number (e.g. 200000 or 2e5)") from None
    if not value.is_integer():
        raise typer.BadParameter(f"{text!r} is not a whole number")
    return int(value)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints a clean error (no traceback) and returns the Exit to raise."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt for SIGINT."""


@contextlib.contextmanager
def clean_errors() -> Iterator[None]:
    """Bad usage -> one line, exit 2; a failing file or file system -> one line naming the path
    and the cause, exit 1. Anything else keeps its traceback (a bug)."""
    try:
        yield
    except (runner.UsageError, runner.rundir.RunDirError) as err:
        raise fail(str(err)) from None
    except runner.EnvironmentProblem as err:
        raise fail(str(err), code=1) from None
    except OSError as err:
        raise fail(describe_os_error(err), code=1) from None


@contextlib.contextmanager
def sigterm_as_exception() -> Iterator[None]:
    """Turns SIGTERM into `Terminated` for the duration (the main thread only)."""
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. inside a test runner's worker thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Position:
    """Wraps a progress callback and remembers where the run is (for an interrupted run)."""

    def __init__(self, callback: Callable[..., None]) -> None:
        self.callback, self.done, self.total, self.unit = callback, 0.0, None, ""

    def __call__(self, event: str, **info: Any) -> None:
        if event == "start":
            self.done, self.total, self.unit = 0.0, info.get("total"), str(info.get("unit", ""))
        elif event == "advance":
            self.done += float(info.get("n", 1))
        self.callback(event, **info)

    def describe(self) -> str:
        """e.g. '3,906 of 390,624 steps'."""
        total = f" of {int(self.total):,}" if self.total else ""
        unit = self.unit if self.unit.endswith("s") or not self.unit else self.unit + "s"
        return f"{int(self.done):,}{total} {unit}".strip()




def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """metric | value | noise floor (mean ± std of `<key>_floor`, `<key>_floor_std` if any)."""
    has_floor = any(k.endswith("_floor") for k in metrics)
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    if has_floor:
        table.add_column("noise floor", justify="right")
    for key, value in metrics.items():
        if key == "nonfinite_keys" or key.endswith(("_floor", "_floor_std")):
            continue
        row = [key, fmt(value)]
        if has_floor:
            floor, std = metrics.get(f"{key}_floor"), metrics.get(f"{key}_floor_std")
            row.append("" if floor is None else f"{fmt(floor)} ± {fmt(std)}")
        table.add_row(*row)
    return table


def command_line(ctx: typer.Context) -> list[str]:
    """The invocation rebuilt from the parsed parameters (defaults included), e.g.
    ["boltzkit", "sample", "gmm40", "--sampler", "mala", ...]: the record of what ran."""
    words = ["boltzkit", str(ctx.info_name)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == [] or param.name == "quiet":
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        flag = max(param.opts, key=len)
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
            continue
        for item in value if isinstance(value, list | tuple) else [value]:
            words += [flag, str(item)]
    return words


# ---- commands -----------------------------------------------------------------------------


def checked_device(device: str) -> str:
    """`--device DEVICE` if this machine has it; else exit 2 with one line naming the devices
    it has (cpu, and cuda, cuda:0, ... where CUDA is present)."""
    try:
        return runner.check_device(device)
    except UsageError as err:
        raise fail(f"--device: {err}") from None


def with_device(device: str | None, sets: list[str] | None) -> list[str] | None:
    """`--set` assignments with `device=DEVICE` appended (DEVICE checked by `checked_device`)."""
    if device is None:
        return sets
    return [*(sets or []), f"device={checked_device(device)}"]


def print_warnings(warnings: list[str]) -> None:
    """The sanity check's warnings, one line each, after the metrics table."""
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)
