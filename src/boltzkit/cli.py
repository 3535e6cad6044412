"""The `boltzkit` command line (typer + rich).

    boltzkit targets
    boltzkit sample TARGET --sampler NAME --budget N_ENERGY_EVALS --seed S --out DIR
                    [--set key=value ...] [--preset NAME] [--n-samples N]
                    [--target-param key=value ...] [--reference PATH] [--tensorboard DIR]
    boltzkit sample --resume RUN_DIR [--budget N]
    boltzkit evaluate RUN_DIR [--reference PATH]
    boltzkit reference TARGET [--n N] [--set key=value ...]
    boltzkit experiment NAME [--set key=value ...] --out DIR [--executor serial|local|ray]
                        [--workers N] [--address HOST:PORT]
    boltzkit report RUN_DIR... [--out report.html]
    boltzkit bench [--quick] [--target T ...] [--sampler S ...] [--budget N] [--out DIR]
                   [--executor serial|local|ray] [--workers N]
    boltzkit demo

Bad names and keys exit with code 2 and a message listing the valid ones; no traceback.
"""

from __future__ import annotations

import inspect
import math
import time
import typing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from boltzkit import targets
from boltzkit.app import runner, tracking
from boltzkit.app.progress import LogFile, RichProgress
from boltzkit.core import config as configs
from boltzkit.core.errors import UsageError

app = typer.Typer(
    name="boltzkit", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Samplers for unnormalised Boltzmann densities, compared at equal energy budget.")
console = Console()
err_console = Console(stderr=True, log_path=False)

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Config override key=value (typed by the config field); repeatable.")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Prints a clean error (no traceback) and returns the Exit to raise."""
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits; None and non-finite values as 'n/a'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}"


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
    ref = runner.resolve_reference_source(t, name)
    return [name, str(t.dim), particles, exact, log_z, ref]


@app.command("sample")
def sample_command(
    ctx: typer.Context,
    target: Annotated[str | None, typer.Argument(help="Target name (see `boltzkit targets`).")
                      ] = None,
    sampler: Annotated[str | None, typer.Option(help="Sampler name.")] = None,
    budget: Annotated[int | None, typer.Option(
        help="Target energy evaluations (configurations) the sampler may spend.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for torch/numpy/random (recorded).")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Run directory to create (default runs/TARGET-SAMPLER-TIME).")] = None,
    set_: SetOpt = None,
    preset: Annotated[str | None, typer.Option(help="Named sampler preset.")] = None,
    n_samples: Annotated[int, typer.Option(help="Samples to return.")] = 1000,
    target_param: Annotated[list[str] | None, typer.Option(
        help="Target parameter key=value; repeatable.")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the run in this directory from its last checkpoint.")] = None,
    reference: Annotated[Path | None, typer.Option(
        help="Reference samples (.npy or .npz, an n x dim array) to evaluate against.")] = None,
    figures: Annotated[bool, typer.Option(help="Draw the PNG figures.")] = True,
    tensorboard: Annotated[Path | None, typer.Option(
        help="Also write TensorBoard scalars here (needs the tensorboard package).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Sample TARGET with a sampler at a budget of energy evaluations; write a run directory."""
    if resume is None and (target is None or sampler is None or budget is None):
        missing = [n for n, v in (("TARGET", target), ("--sampler", sampler),
                                  ("--budget", budget)) if v is None]
        raise fail(f"missing {', '.join(missing)} (or pass --resume RUN_DIR)")
    if out is None and resume is None:
        out = Path("runs") / f"{target}-{sampler}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = resume if resume is not None else out
    assert run_dir is not None
    try:
        # Check names before creating anything on disk.
        if resume is None:
            _precheck(target, sampler, set_ or [], preset, target_param or [])
        run_dir.mkdir(parents=True, exist_ok=True)
        with LogFile(run_dir / "log.txt") as log, RichProgress(
                err_console, log=log.write, enabled=not quiet) as progress, tracking.track(
                progress, run_dir, tensorboard) as callback:
            if resume is not None:
                outcome = runner.resume_run(resume, budget=budget, callback=callback,
                                            log=log.write, command=command_line(ctx),
                                            figures=figures)
            else:
                assert target is not None and sampler is not None and budget is not None
                outcome = runner.run_sampler(
                    target_name=target, sampler=sampler, budget=budget, seed=seed, out=out,
                    sets=set_ or [], preset=preset, n_samples=n_samples,
                    params=target_param or [], reference_path=reference, callback=callback,
                    log=log.write, command=command_line(ctx), figures=figures)
    except UsageError as err:
        raise fail(str(err)) from None
    if tensorboard is not None:
        tracking.write_summary(tensorboard, outcome.metrics)
    record = runner.rundir.read_record(outcome.run_dir)
    title = f"{record['target']} / {record['sampler']}: {int(outcome.metrics['n_samples'])} " \
            f"samples, budget {record['budget']:,} energy evals, {outcome.wall_s:.1f} s"
    console.print(metrics_table(outcome.metrics, title))
    console.print(f"reference: {outcome.reference.source}"
                  + (f" ({outcome.reference.path})" if outcome.reference.path else ""))
    console.print(f"run directory: [bold]{outcome.run_dir}[/]")


def _precheck(target: str | None, sampler: str | None, sets: list[str], preset: str | None,
              params: list[str]) -> None:
    assert target is not None and sampler is not None
    runner.build_target(target, params)
    module = runner.sampler_module(sampler)
    runner.sampler_config(module, sets, preset, sampler)


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `boltzkit sample`.")],
    reference: Annotated[Path | None, typer.Option(
        help="Reference samples (.npy/.npz); default: the one the run used.")] = None,
    figures: Annotated[bool, typer.Option(help="Redraw the figures.")] = True,
) -> None:
    """Recompute metrics.json (and figures) of a finished run."""
    try:
        metrics = runner.evaluate_run(run_dir, reference_path=reference, figures=figures)
    except UsageError as err:
        raise fail(str(err)) from None
    console.print(metrics_table(metrics, f"metrics of {run_dir}"))
    console.print(f"written: {run_dir / runner.rundir.METRICS_FILE}")


@app.command("reference")
def reference_command(
    target: Annotated[str, typer.Argument(help="Target without an exact sampler, e.g. dw4.")],
    n: Annotated[int | None, typer.Option(help="Number of samples (default 10,000).")] = None,
    set_: SetOpt = None,
    target_param: Annotated[list[str] | None, typer.Option(
        help="Target parameter key=value; repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (recorded).")] = 0,
    refresh: Annotated[bool, typer.Option(help="Regenerate even if cached.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Generate (or find in the cache) a reference sample set by parallel tempering."""
    from boltzkit.app import reference as project_reference

    try:
        built = runner.build_target(target, target_param or [])
        if built.has_exact_samples:
            raise UsageError(f"target {target!r} has an exact sampler: `boltzkit sample` "
                                    "draws its reference directly")
        config = project_reference.reference_config(built.name)
        runner.apply_overrides(config, set_ or [])
        with RichProgress(err_console, enabled=not quiet) as callback:
            made = project_reference.make_reference(
                built, n, sets=set_ or [], seed=seed, callback=callback, refresh=refresh)
    except UsageError as err:
        raise fail(str(err)) from None
    meta = made.metadata
    shown = {"n_samples": len(made.samples), "seed": meta.get("seed"),
             **runner.summary_dict(meta.get("counts") or {}, "counts"),
             "wall_s": meta.get("wall_s"),
             **runner.summary_dict(meta.get("checks") or {})}
    console.print(metrics_table(shown, f"reference for {target}"))
    console.print(f"written: [bold]{meta.get('path')}[/]")


@app.command("experiment")
def experiment_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    out: Annotated[Path, typer.Option(help="Directory for the experiment's outputs.")],
    set_: SetOpt = None,
    seed: Annotated[int, typer.Option(help="Seed for torch/numpy/random (recorded).")] = 0,
    executor: Annotated[str | None, typer.Option(
        help="Run the experiment's independent runs with serial | local | ray.")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Processes (local) or CPUs of the local Ray instance (default: all cores).")
                       ] = None,
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join (HOST:PORT or auto); with --executor ray.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run a named experiment (tables and figures go to --out)."""
    from boltzkit import experiments

    try:
        configs.parse_assignments(set_ or [])
        run = experiments.get(name)
        extra = _experiment_executor(name, run, executor, workers, address)
    except UsageError as err:
        raise fail(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    runner.seed_everything(seed)
    runner.rundir.write_json(out / "experiment.json", {
        "experiment": name, "overrides": set_ or [], "seed": seed, "executor": executor,
        "command": command_line(ctx), "environment": runner.rundir.environment()})
    try:
        with LogFile(out / "log.txt") as log, RichProgress(
                err_console, log=log.write, enabled=not quiet) as progress, tracking.track(
                progress, out) as callback:
            headline = run(out, set_ or [], callback, **extra)
    except UsageError as err:
        raise fail(str(err)) from None
    runner.rundir.write_json(out / "headline.json", headline)
    if headline.get("n_failed"):
        err_console.print(f"[bold yellow]Warning:[/] {headline['n_failed']} run(s) failed; "
                          f"see {out / 'log.txt'} and {out / 'runs'}/*.failed.json")
    console.print(metrics_table(runner.summary_dict(headline), f"experiment {name}"))
    console.print(f"outputs: [bold]{out}[/]")


def _experiment_executor(name: str, run: Any, executor: str | None, workers: int | None,
                         address: str | None) -> dict[str, Any]:
    """{"executor": ...} for experiments whose `run` takes one; a clear error when the options
    are given to an experiment that runs serially only."""
    from boltzkit.app import executors

    if executor is None and workers is None and address is None:
        return {}
    if "executor" not in inspect.signature(run).parameters:
        from boltzkit import experiments

        able = [n for n in experiments.names()
                if "executor" in inspect.signature(experiments.get(n)).parameters]
        raise UsageError(f"experiment {name!r} runs its runs serially and takes no --executor, "
                         f"--workers or --address (experiments that do: {', '.join(able)})")
    return {"executor": executors.make(executor or "local", workers, address)}


@app.command("report")
def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="Run directories (of sample, experiment or bench).")],
    out: Annotated[Path, typer.Option(
        help="HTML file to write (its markdown twin goes next to it, .md).")] = Path(
            "report.html"),
) -> None:
    """Build one self-contained HTML page (and a markdown twin) from run directories."""
    from boltzkit.app import report

    try:
        html_path, md_path = report.write(out, run_dirs)
    except UsageError as err:
        raise fail(str(err)) from None
    console.print(f"written: [bold]{html_path}[/] and [bold]{md_path}[/]")


@app.command("bench")
def bench_command(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        help="Directory of the bench (default runs/bench-TIME).")] = None,
    quick: Annotated[bool, typer.Option(
        help="The smoke test: 2 targets x 2 samplers at tiny budgets.")] = False,
    target: Annotated[list[str] | None, typer.Option(
        help="Only these targets (repeatable).")] = None,
    sampler: Annotated[list[str] | None, typer.Option(
        help="Only these samplers (repeatable).")] = None,
    budget: Annotated[int | None, typer.Option(
        help="Energy evaluations per run, for every target (default: the bench's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every run (recorded).")] = 0,
    executor: Annotated[str, typer.Option(help="serial | local | ray.")] = "serial",
    workers: Annotated[int | None, typer.Option(help="Processes or Ray CPUs.")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster to join.")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Leaderboard of samplers x targets at stated budgets; writes report.html and report.md."""
    from boltzkit.app import bench, executors

    out = out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        plan = bench.plan(quick, target, sampler, budget, seed)
        run_on = executors.make(executor, workers, address)
        with RichProgress(err_console, enabled=not quiet) as callback:
            summary = bench.run(out, plan, run_on, callback, command_line(ctx))
    except UsageError as err:
        raise fail(str(err)) from None
    console.print(metrics_table(summary, f"bench {out}"))
    if summary["n_failed"]:
        err_console.print(f"[bold yellow]Warning:[/] {summary['n_failed']} cell(s) failed; "
                          f"see {out / 'runs'}/*.failed.json")


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


@app.command("demo")
def demo_command(
    budget: Annotated[int | None, typer.Option(
        help="Energy evaluations per sampler (default: the demo's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/demo-TIME).")
                   ] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    n_samples: Annotated[int, typer.Option(help="Samples per sampler.")] = 1000,
    figures: Annotated[bool, typer.Option(help="Draw the PNG figures.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """DW-4: parallel tempering vs MALA at the same energy budget (what `make run` shows)."""
    from boltzkit.app import demo

    try:
        demo.main(console=console, err_console=err_console, budget=budget, out=out, seed=seed,
                  n_samples=n_samples, figures=figures, quiet=quiet)
    except UsageError as err:
        raise fail(str(err)) from None


if __name__ == "__main__":
    app()
