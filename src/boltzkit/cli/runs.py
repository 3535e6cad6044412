"""`boltzkit sample` and `boltzkit evaluate`: one sampler run and its run directory."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from boltzkit.app import assess, launch, runner, tracking
from boltzkit.app.progress import LogFile, RichProgress
from boltzkit.app.resume import last_checkpoint, resume_run
from boltzkit.cli.common import (
    DEFAULT_N_SAMPLES,
    Position,
    SetOpt,
    Terminated,
    app,
    clean_errors,
    command_line,
    console,
    count,
    err_console,
    fail,
    metrics_table,
    print_warnings,
    sigterm_as_exception,
    with_device,
)
from boltzkit.core import config as configs


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
    with clean_errors():  # torchrun: rank 0 runs as usual, the other ranks follow it
        world = launch.join(sampler, set_ or [], resume is not None)
        if world.rank > 0:
            launch.follow(target_name=target, sampler=sampler, budget=budget, seed=seed or 0,
                          sets=set_ or [], preset=preset, params=target_param or [],
                          n_samples=DEFAULT_N_SAMPLES if n_samples is None else n_samples)
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
    if world.size > 1:
        runner.rundir.update_record(outcome.run_dir, **launch.describe(world))
    record = runner.rundir.read_record(outcome.run_dir)
    title = f"{record['target']} / {record['sampler']}: {int(outcome.metrics['n_samples'])} " \
            f"samples, budget {record['budget']:,} energy evals, {outcome.wall_s:.1f} s"
    console.print(metrics_table(outcome.metrics, title))
    console.print(f"reference: {outcome.reference.source}"
                  + (f" ({outcome.reference.path})" if outcome.reference.path else ""))
    print_warnings(record.get("warnings") or [])
    console.print(f"run directory: [bold]{outcome.run_dir}[/] (summary.md)")


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
    runner.build_target(target, params)
    module = runner.sampler_module(sampler)
    if preset is None:
        preset = runner.default_preset(module, target)
    runner.sampler_config(module, sets, preset, sampler)


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
        metrics = assess.evaluate_run(run_dir, reference_path=reference, figures=figures)
    console.print(metrics_table(metrics, f"metrics of {run_dir}"))
    print_warnings(runner.rundir.read_record(run_dir).get("warnings") or [])
    console.print(f"written: {run_dir / runner.rundir.METRICS_FILE}")
