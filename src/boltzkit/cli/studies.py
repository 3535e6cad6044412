"""`boltzkit reference`, `experiment`, `report`, `bench`, `demo`: reference sets, named
experiments, leaderboards and reports."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from boltzkit import targets
from boltzkit.app import runner, tracking
from boltzkit.app.progress import LogFile, RichProgress
from boltzkit.cli.common import (
    SetOpt,
    app,
    checked_device,
    clean_errors,
    command_line,
    console,
    count,
    err_console,
    fail,
    metrics_table,
    with_device,
)
from boltzkit.core import config as configs
from boltzkit.core.errors import UsageError


@app.command("reference")
def reference_command(
    target: Annotated[str, typer.Argument(
        help="Target without an exact sampler, e.g. dw4 or aldp.")],
    n: Annotated[int | None, typer.Option(
        "--n-samples", "--n", parser=count, metavar="N",
        help="Number of samples (MD: frames; default 10,000).")] = None,
    temperature: Annotated[float | None, typer.Option(
        help="Temperature in kelvin of a target with a `temperature` parameter (aldp, "
             "aldp-fab); the same as --target-param temperature=T.")] = None,
    set_: SetOpt = None,
    target_param: Annotated[list[str] | None, typer.Option(
        help="Target parameter key=value; repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (recorded).")] = 0,
    refresh: Annotated[bool, typer.Option(help="Regenerate even if cached.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda or cuda:N: where parallel tempering runs (--set device=...).")] = None,
) -> None:
    """Generate (or find in the cache) a reference sample set: parallel tempering, or for
    molecules OpenMM Langevin MD (`--set n_replicas=4 --set temperature_max_K=600` for replica
    exchange; an interrupted MD reference resumes from its checkpoint when run again)."""
    set_ = with_device(device, set_)
    from boltzkit.app import reference as project_reference

    if n is not None and n < 1:
        raise fail(f"--n-samples must be a positive number of samples, got {n}")
    with clean_errors():
        params = _with_temperature(target, target_param or [], temperature)
        built = runner.build_target(target, params)
        if built.has_exact_samples:
            raise UsageError(f"target {target!r} has an exact sampler: `boltzkit sample` "
                                    "draws its reference directly")
        if not getattr(built, "is_molecule", False):  # MD settings are checked by MDConfig
            config = project_reference.reference_config(built.name)
            runner.apply_overrides(config, set_ or [])
        with RichProgress(err_console, enabled=not quiet) as callback:
            made = project_reference.make_reference(
                built, n, sets=set_ or [], seed=seed, callback=callback, refresh=refresh)
    meta = made.metadata
    md = meta.get("md") or {}
    shown = {"n_samples": len(made.samples), "seed": meta.get("seed"),
             **({"temperatures_K": md.get("temperatures_K"),
                 "exchange_rates": md.get("exchange_rates")} if md else {}),
             **runner.summary_dict(meta.get("counts") or {}, "counts"),
             "wall_s": meta.get("wall_s"),
             **runner.summary_dict(meta.get("checks") or {})}
    console.print(metrics_table(shown, f"reference for {target}"))
    console.print(f"written: [bold]{meta.get('path')}[/]")


def _with_temperature(target: str, params: list[str], temperature: float | None) -> list[str]:
    """`--temperature T` as the target parameter temperature=T (targets that have one)."""
    if temperature is None:
        return params
    if "temperature" not in targets.params(target):
        with_one = [n for n in targets.names() if "temperature" in targets.params(n)]
        raise UsageError(f"--temperature applies to targets with a temperature parameter "
                         f"({', '.join(with_one)}); {target!r} has none")
    if any(p.split("=", 1)[0].strip() == "temperature" for p in params):
        raise UsageError("give the temperature once: --temperature or --target-param "
                         "temperature=T, not both")
    return [*params, f"temperature={temperature}"]


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
    device: Annotated[str, typer.Option(
        help="cpu, cuda or cuda:N: where every run of the experiment works.")] = "cpu",
) -> None:
    """Run a named experiment (tables and figures go to --out)."""
    from boltzkit import experiments

    try:
        configs.parse_assignments(set_ or [])
        run = experiments.get(name)
        extra = _experiment_executor(name, run, executor, workers, address)
    except UsageError as err:
        raise fail(str(err)) from None
    extra.update(_experiment_device(name, run, checked_device(device)))
    with clean_errors():
        runner.rundir.make_dir(out)
        runner.seed_everything(seed)
        runner.rundir.write_json(out / "experiment.json", {
            "experiment": name, "overrides": set_ or [], "seed": seed,
            "executor": executor, "device": device,
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


def _experiment_device(name: str, run: Any, device: str) -> dict[str, Any]:
    """{"device": ...} for experiments whose `run` takes one (every registered experiment);
    one that does not runs on the CPU only, and another device is refused."""
    if "device" in inspect.signature(run).parameters:
        return {"device": device}
    if device != "cpu":
        raise fail(f"--device: experiment {name!r} runs on the CPU only")
    return {}


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
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N for every run.")] = "cpu",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Leaderboard of samplers x targets at stated budgets; writes report.html and report.md."""
    from boltzkit.app import bench, executors

    checked_device(device)
    out = out or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        plan = bench.plan(quick, target, sampler, budget, seed, device)
        run_on = executors.make(executor, workers, address)
        with RichProgress(err_console, enabled=not quiet) as callback:
            summary = bench.run(out, plan, run_on, callback, command_line(ctx))
    except UsageError as err:
        raise fail(str(err)) from None
    console.print(metrics_table(summary, f"bench {out}"))
    if summary["n_failed"]:
        err_console.print(f"[bold yellow]Warning:[/] {summary['n_failed']} cell(s) failed; "
                          f"see {out / 'runs'}/*.failed.json")




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

    with clean_errors():
        demo.main(console=console, err_console=err_console, budget=budget, out=out, seed=seed,
                  n_samples=n_samples, figures=figures, quiet=quiet)
