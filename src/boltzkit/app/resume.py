"""Resuming a run: `resume_run` continues the run in a directory from its sampler's last
checkpoint, with the recorded target, sampler, config and seed.

It first checks that the run is the one asked for (target, sampler, preset, parameters,
overrides, seed and n_samples, where given, equal the recorded ones), that a new budget is above
what was already spent, and that the checkpoints load (a truncated one is an
`EnvironmentProblem`); it logs "resumed from checkpoint at step N", and records the resume in
run.json only once it has succeeded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from boltzkit.app import references, rundir, runner
from boltzkit.core import config as configs
from boltzkit.core.errors import UsageError
from boltzkit.samplers import null_callback


def resume_run(run_dir: str | Path, *, budget: int | None = None,
               callback: runner.Callback = null_callback, log: Callable[[str], None] | None = None,
               command: Sequence[str] | None = None, figures: bool = True,
               expect: Mapping[str, Any] | None = None) -> runner.RunOutcome:
    """Continues the run in `run_dir` from its sampler's last checkpoint, with the recorded
    target, sampler, config and seed; `budget` (if given) replaces the recorded total budget and
    must exceed what was spent. `expect` holds what the user gave besides --resume (keys target,
    sampler, preset, target_params, sets, seed, n_samples; None or empty = not given): each must
    match the record."""
    try:
        run_dir = rundir.prepare(run_dir, resume=True)
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None
    record = rundir.read_record(run_dir, require=rundir.RECORD_KEYS)
    module = runner.sampler_module(record["sampler"])
    config = runner.config_from_dict(module, rundir.read_config(run_dir), record["sampler"])
    _check_same_run(run_dir, record, config, expect or {})
    step, spent = last_checkpoint(run_dir)
    spent = max(spent or 0, int((record.get("counts") or {}).get("n_energy", 0)))
    if budget is not None:
        runner.check_sizes(budget, int(record["n_samples"]))
        if budget <= spent:
            raise UsageError(f"--budget {budget:,} is not above the {spent:,} energy evaluations "
                             f"{run_dir} already spent; give a larger budget")
        record["budget"] = budget
    target = runner.build_target(record["target"], record.get("target_params") or {})
    reference = references.recorded_reference(target.uncounted(), record)
    if log:
        log(f"resumed from checkpoint at step {step} ({spent:,} energy evaluations spent)"
            if step is not None else f"no checkpoint in {run_dir}: the run starts from the "
            "beginning")
    outcome = runner.execute(run_dir, target, module, config, record, reference,
                             callback=callback, log=log, resume=True, figures=figures)
    rundir.update_record(run_dir, budget=record["budget"],
                         resumed=(record.get("resumed") or [])
                         + [list(command) if command is not None else rundir.command_line()])
    return outcome


def _check_same_run(run_dir: Path, record: Mapping[str, Any], config: Any,
                    expect: Mapping[str, Any]) -> None:
    """UsageError when what the user gave with --resume differs from the recorded run."""
    given = {k: v for k, v in expect.items() if v not in (None, [], (), {})}
    wrong = _differences(record, given)
    if "sets" in given and _changes(config, given["sets"]):
        wrong.append(f"--set {' '.join(given['sets'])} (the checkpoint was made with the "
                     "recorded config.json)")
    if wrong:
        raise UsageError(f"--resume {run_dir} is a {record['target']} / {record['sampler']} run; "
                         f"it cannot continue with {'; '.join(wrong)}. Omit them or give the "
                         "recorded ones")


def _differences(record: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    recorded = {"target": record["target"], "sampler": record["sampler"],
                "preset": record.get("preset"), "seed": record.get("seed"),
                "n_samples": record.get("n_samples"),
                "target_params": record.get("target_params") or {}}
    given = dict(given)
    if "target_params" in given:
        name = str(given.get("target", record["target"]))
        given["target_params"] = runner.target_params(name, given["target_params"])
    return [f"{k} {given[k]!r} (recorded: {recorded[k]!r})" for k in recorded
            if k in given and given[k] != recorded[k]]


def _changes(config: Any, sets: Sequence[str]) -> bool:
    return configs.to_dict(runner.apply_overrides(config, sets)) != configs.to_dict(config)


def last_checkpoint(run_dir: Path) -> tuple[int | None, int | None]:
    """(step, energy evaluations spent) of the checkpoints in run_dir, each loaded once to
    check that it is not truncated (`EnvironmentProblem` otherwise)."""
    step = spent = None
    for path in rundir.checkpoint_files(run_dir):
        s, n = rundir.checkpoint_progress(rundir.read_checkpoint(path))
        step = s if s is not None else step
        spent = n if n is not None else spent
    return step, spent
