"""The `boltzkit` command line (typer + rich).

    boltzkit targets
    boltzkit sample TARGET --sampler NAME --budget N_ENERGY_EVALS --seed S --out DIR
                    [--set key=value ...] [--preset NAME] [--n-samples N]
                    [--target-param key=value ...] [--reference PATH] [--tensorboard DIR]
    boltzkit sample --resume RUN_DIR [--budget N]
    boltzkit evaluate RUN_DIR [--reference PATH]
    boltzkit reference TARGET [--n-samples N] [--temperature T] [--set key=value ...]
    boltzkit experiment NAME [--set key=value ...] --out DIR [--executor serial|local|ray]
                        [--workers N] [--address HOST:PORT]
    boltzkit report RUN_DIR... [--out report.html]
    boltzkit bench [--quick] [--target T ...] [--sampler S ...] [--budget N] [--out DIR]
                   [--executor serial|local|ray] [--workers N]
    boltzkit demo

Bad names, keys and values exit with code 2 and a message listing the valid ones; a file or
file system that fails (corrupt run files, a full disk, a read-only file system) exits with code 1
and one line naming the path and the cause; no traceback. Ctrl-C (SIGINT) and SIGTERM stop a run
cleanly, say where it stopped and how to resume it, and exit with 130 and 143.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import signal
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from boltzkit import targets
from boltzkit.app import runner, tracking
from boltzkit.app.progress import LogFile, RichProgress
from boltzkit.app.resume import last_checkpoint, resume_run
from boltzkit.core import config as configs
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
        parser=count, metavar="N",
        help="Target energy evaluations (configurations) the sampler may spend (200000, 2e5)."
    )] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed for torch/numpy/random (recorded; default 0).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Run directory to create (default runs/TARGET-SAMPLER-TIME).")] = None,
    set_: SetOpt = None,
    preset: Annotated[str | None, typer.Option(help="Named sampler preset.")] = None,
    n_samples: Annotated[int | None, typer.Option(
        parser=count, metavar="N", help="Samples to return (default 1000).")] = None,
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
    dry_run: Annotated[bool, typer.Option(
        help="Print the resolved target, preset and config, and exit without running.")
    ] = False,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda or cuda:N: where the target and the sampler work (--set device=...).")
    ] = None,
) -> None:
    """Sample TARGET with a sampler at a budget of energy evaluations; write a run directory."""
    set_ = with_device(device, set_)
    if resume is None and (target is None or sampler is None or budget is None):
        missing = [n for n, v in (("TARGET", target), ("--sampler", sampler),
                                  ("--budget", budget)) if v is None]
        raise fail(f"missing {', '.join(missing)} (or pass --resume RUN_DIR)")
    if dry_run:
        with clean_errors():
            _print_resolved(target, sampler, set_ or [], preset, target_param or [], resume)
        return
    if out is None and resume is None:
        out = Path("runs") / f"{target}-{sampler}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = resume if resume is not None else out
    assert run_dir is not None
    with clean_errors():
        # Check names before creating anything on disk.
        if resume is None:
            _precheck(target, sampler, set_ or [], preset, target_param or [])
            runner.rundir.prepare(run_dir)
        else:
            runner.rundir.prepare(run_dir, resume=True)
        # What --resume must agree with (None: not given).
        expect = {"target": target, "sampler": sampler, "preset": preset, "seed": seed,
                  "sets": set_, "target_params": target_param, "n_samples": n_samples}
        outcome = _run_logged(ctx, run_dir, resume, quiet, expect, dict(
            target_name=target, sampler=sampler, budget=budget, seed=seed or 0, out=out,
            sets=set_ or [], preset=preset,
            n_samples=DEFAULT_N_SAMPLES if n_samples is None else n_samples,
            params=target_param or [],
            reference_path=reference, figures=figures), tensorboard)
    if tensorboard is not None:
        tracking.write_summary(tensorboard, outcome.metrics)
    record = runner.rundir.read_record(outcome.run_dir)
    title = f"{record['target']} / {record['sampler']}: {int(outcome.metrics['n_samples'])} " \
            f"samples, budget {record['budget']:,} energy evals, {outcome.wall_s:.1f} s"
    console.print(metrics_table(outcome.metrics, title))
    console.print(f"reference: {outcome.reference.source}"
                  + (f" ({outcome.reference.path})" if outcome.reference.path else ""))
    print_warnings(record.get("warnings") or [])
    console.print(f"run directory: [bold]{outcome.run_dir}[/] (summary.md)")


def with_device(device: str | None, sets: list[str] | None) -> list[str] | None:
    """`--set` assignments with `device=DEVICE` appended; exit 2 naming the devices this machine
    has when it lacks DEVICE."""
    if device is None:
        return sets
    try:
        runner.check_device(device)
    except UsageError as err:
        raise fail(f"--device: {err}") from None
    return [*(sets or []), f"device={device}"]


def print_warnings(warnings: list[str]) -> None:
    """The sanity check's warnings, one line each, after the metrics table."""
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False)


def _run_logged(ctx: typer.Context, run_dir: Path, resume: Path | None, quiet: bool,
                expect: dict[str, Any], kwargs: dict[str, Any],
                tensorboard: Path | None = None) -> runner.RunOutcome:
    """The run (fresh or resumed) with its log, progress bars, metrics.jsonl stream (and
    TensorBoard scalars); SIGINT / SIGTERM stop it cleanly with exit code 130 / 143 and say how
    to resume."""
    with LogFile(run_dir / "log.txt") as log, RichProgress(
            err_console, log=log.write, enabled=not quiet) as progress, tracking.track(
            progress, run_dir, tensorboard) as tracked:
        position = Position(tracked)
        try:
            with sigterm_as_exception():
                if resume is not None:
                    return resume_run(resume, budget=kwargs["budget"], callback=position,
                                      log=log.write, command=command_line(ctx),
                                      figures=kwargs["figures"], expect=expect)
                return runner.run_sampler(callback=position, log=log.write,
                                          command=command_line(ctx), **kwargs)
        except (runner.UsageError, runner.EnvironmentProblem, OSError) as err:
            with contextlib.suppress(OSError):
                log.write(f"error: {err}")
            raise
        except (KeyboardInterrupt, Terminated) as err:
            name, code = ("SIGINT", 130) if isinstance(err, KeyboardInterrupt) else ("SIGTERM",
                                                                                      143)
            message = _interrupted(run_dir, name, position)
            with contextlib.suppress(OSError):
                log.write(message)
            raise fail(message, code=code) from None


def _interrupted(run_dir: Path, signal_name: str, position: Position) -> str:
    step = None
    with contextlib.suppress(runner.EnvironmentProblem):
        step, _ = last_checkpoint(run_dir)
    where = (f"the last checkpoint is at step {step}" if step is not None
             else "no checkpoint was written yet")
    return (f"interrupted by {signal_name} after {position.describe()}; {where}; resume with: "
            f"boltzkit sample --resume {run_dir}")


def _precheck(target: str | None, sampler: str | None, sets: list[str], preset: str | None,
              params: list[str]) -> None:
    assert target is not None and sampler is not None
    built = runner.build_target(target, params)
    _refuse_constrained_mcmc(built, target, sampler)
    module = runner.sampler_module(sampler)
    if preset is None:
        preset = runner.default_preset(module, target)
    runner.sampler_config(module, sets, preset, sampler)


CARTESIAN_MCMC = ("rwmh", "mala", "hmc", "pt")


def _refuse_constrained_mcmc(built: Any, target: str, sampler: str) -> None:
    """Cartesian MCMC on a target with distance constraints (aldp's H-bonds, which carry no
    energy term) would let the constrained bonds drift: a usage error naming what to use."""
    constraints = getattr(getattr(built, "molecule", None), "constraints", ())
    if constraints and sampler in CARTESIAN_MCMC:
        raise UsageError(
            f"target {target!r} has {len(constraints)} H-bond constraints and no energy term for "
            f"those bonds: {sampler} moves every Cartesian coordinate and would let them drift. "
            f"Use aldp-fab (no constraints) for MCMC baselines, or `boltzkit reference {target}` "
            "(constrained MD) for samples of this target")


def _print_resolved(target: str | None, sampler: str | None, sets: list[str],
                    preset: str | None, params: list[str], resume: Path | None) -> None:
    """`--dry-run`: what a run would use, resolved (presets, defaults, overrides)."""
    if resume is not None:
        record = runner.rundir.read_record(resume)
        target, sampler, preset = record["target"], record["sampler"], record.get("preset")
        params = [f"{k}={v}" for k, v in (record.get("target_params") or {}).items()]
    assert target is not None and sampler is not None
    built = runner.build_target(target, params)
    module = runner.sampler_module(sampler)
    chosen = runner.default_preset(module, target) if preset is None else preset
    config = (runner.config_from_dict(module, runner.rundir.read_config(resume), sampler)
              if resume is not None else runner.sampler_config(module, sets, chosen, sampler))
    shown = {"target": target, **{f"target.{k}": v for k, v in built.describe().items()},
             "sampler": sampler,
             "preset": "none (defaults)" if chosen in (None, runner.NO_PRESET) else chosen,
             **{f"config.{k}": v for k, v in configs.to_dict(config).items()}}
    console.print(metrics_table(shown, "resolved settings (--dry-run: nothing was run)"))


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `boltzkit sample`.")],
    reference: Annotated[Path | None, typer.Option(
        help="Reference samples (.npy/.npz); default: the one the run used.")] = None,
    figures: Annotated[bool, typer.Option(help="Redraw the figures.")] = True,
) -> None:
    """Recompute metrics.json (and figures) of a finished run."""
    with clean_errors():
        metrics = runner.evaluate_run(run_dir, reference_path=reference, figures=figures)
    console.print(metrics_table(metrics, f"metrics of {run_dir}"))
    print_warnings(runner.rundir.read_record(run_dir).get("warnings") or [])
    console.print(f"written: {run_dir / runner.rundir.METRICS_FILE}")


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
) -> None:
    """Run a named experiment (tables and figures go to --out)."""
    from boltzkit import experiments

    try:
        configs.parse_assignments(set_ or [])
        run = experiments.get(name)
        extra = _experiment_executor(name, run, executor, workers, address)
    except UsageError as err:
        raise fail(str(err)) from None
    with clean_errors():
        runner.rundir.make_dir(out)
        runner.seed_everything(seed)
        runner.rundir.write_json(out / "experiment.json", {
            "experiment": name, "overrides": set_ or [], "seed": seed,
            "executor": executor,
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

    with clean_errors():
        demo.main(console=console, err_console=err_console, budget=budget, out=out, seed=seed,
                  n_samples=n_samples, figures=figures, quiet=quiet)


if __name__ == "__main__":
    app()
