"""`boltzkit targets`, `presets`, `experiments`: what can be run."""

from __future__ import annotations

import inspect
import typing
from typing import Annotated

import typer
from rich.table import Table

from boltzkit import targets
from boltzkit.app import references
from boltzkit.cli.common import (
    app,
    console,
    fail,
)
from boltzkit.core.errors import UsageError


@app.command("targets")
def targets_command(
    name: Annotated[str | None, typer.Argument(help="Show one target's parameters.")] = None,
) -> None:
    """List the registered targets and what is known about each (or one target's parameters)."""
    if name is not None:
        try:
            table, doc = target_params_table(name)
        except UsageError as err:
            raise fail(str(err)) from None
        console.print(table)
        console.print(doc, highlight=False)
        return
    table = Table(title="boltzkit targets", header_style="bold", caption=(
        "reference: exact = drawn by the exact sampler; cached = made by `boltzkit reference`; "
        "published = ../shared/data; none yet = run `boltzkit reference NAME`"))
    table.add_column("name", no_wrap=True)
    for col in ("dim", "particles", "exact samples?", "log Z known?", "reference available?"):
        table.add_column(col)
    for name in targets.names():
        table.add_row(*target_row(name))
    console.print(table)


def target_params_table(name: str) -> tuple[Table, str]:
    """`boltzkit targets NAME`: the target's parameters, types and defaults, and its
    description (the factory's docstring)."""
    make = targets.factory(name)
    doc = (inspect.getdoc(make) or "").strip()
    table = Table(title=f"target {name}: parameters (--target-param key=value)",
                  header_style="bold")
    for col in ("parameter", "type", "default"):
        table.add_column(col)
    hints = typing.get_type_hints(make)
    for key, default in targets.params(name).items():
        tp = hints.get(key, type(default))
        table.add_row(key, getattr(tp, "__name__", str(tp)), repr(default))
    if not targets.params(name):
        table.add_row("(none)", "", "")
    return table, doc


def target_row(name: str) -> list[str]:
    """One row of `boltzkit targets`; targets are built with default parameters (cheap)."""
    t = targets.get(name)
    particles = f"{t.n_particles} x {t.spatial_dim}-D" if t.is_particle_system else "-"
    exact = "yes" if t.has_exact_samples else "no"
    log_z = "yes" if t.log_Z is not None else "no"
    ref = references.resolve_reference_source(t, name)
    return [name, str(t.dim), particles, exact, log_z, ref]




@app.command("presets")
def presets_command(
    sampler: Annotated[str | None, typer.Argument(help="Only this sampler's presets.")] = None,
) -> None:
    """List the named presets of each sampler (`--preset NAME`); the one named after the target
    is used by default."""
    from boltzkit import samplers
    from boltzkit.core import presets as preset_files

    try:
        names = [sampler] if sampler is not None else samplers.names()
        modules = {name: samplers.module(name) for name in names}
    except UsageError as err:
        raise fail(str(err)) from None
    table = Table(title="boltzkit presets", header_style="bold", caption=(
        "`boltzkit sample TARGET --sampler S` uses S's preset named TARGET when there is one; "
        "`--preset none` for the defaults, `--dry-run` to see the resolved config"))
    for col in ("sampler", "preset", "about"):
        table.add_column(col)
    for name, module in modules.items():
        listed = getattr(module, "preset_names", lambda: [])()
        file = getattr(module, "PRESET_FILE", None)
        for preset in listed:
            about = preset_files.about(preset_files.load(file), preset) if file else ""
            table.add_row(name, preset, about)
        if not listed:
            table.add_row(name, "(none)", "")
    console.print(table)


@app.command("experiments")
def experiments_command() -> None:
    """List the named experiments (`boltzkit experiment NAME --out DIR`)."""
    from boltzkit import experiments

    table = Table(title="boltzkit experiments", header_style="bold")
    table.add_column("name", no_wrap=True)
    table.add_column("what it does")
    for name in experiments.names():
        doc = (inspect.getdoc(experiments.get(name)) or "").splitlines()
        table.add_row(name, doc[0] if doc else "")
    console.print(table)
