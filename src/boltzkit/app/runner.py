"""One sampler run, from names to a finished run directory: resolve the target, sampler and
config, seed the global RNGs, sample under a budget, evaluate against a reference, write
everything (layout in `boltzkit.app.rundir`). The CLI and the demo call these; nothing here prints.

Names are checked before anything runs, and every bad name or key raises `UsageError` with the
valid choices, which the CLI turns into a clean message and exit code 2. A file or file system
that fails (corrupt run files, a truncated checkpoint, a full disk, a read-only file system)
raises `EnvironmentProblem` naming the path and the cause (exit code 1); no temporary file is
left behind and the previous checkpoint stays intact.

Resuming checks that the run is the one asked for (target, sampler, preset, parameters,
overrides, seed and n_samples, where given, equal the recorded ones), that a new budget is above
what was already spent, and that the checkpoints load; the resume is recorded in run.json only
once it has succeeded.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from boltzkit import samplers, targets
from boltzkit.app import rundir
from boltzkit.core import config as configs
from boltzkit.core.errors import EnvironmentProblem, UnknownName, UsageError
from boltzkit.core.files import describe_os_error
from boltzkit.samplers import SampleResult, null_callback
from boltzkit.targets import Target

Callback = Callable[..., None]

__all__ = ["EnvironmentProblem", "UsageError"]  # what the CLI catches, re-exported


class Reference(NamedTuple):
    """Reference samples `[n, dim]` (float64, COM-free for particle systems) and where they came
    from ("exact sampler", "published ../shared/data", "project reference", "file")."""

    samples: Tensor | None
    source: str
    path: str | None


class RunOutcome(NamedTuple):
    run_dir: Path
    result: SampleResult
    metrics: dict[str, Any]
    reference: Reference
    wall_s: float


# ---- resolution ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seeds torch, numpy and random: entry points only (library code never reseeds)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_target(name: str, params: Sequence[str] | Mapping[str, Any] = ()) -> Target:
    """`boltzkit.targets.build`: a target from its name and `key=value` parameters."""
    with _no_empty_parameter_list(name):
        return targets.build(name, params)


def target_params(name: str, params: Sequence[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """The explicitly given target parameters, typed (as recorded in run.json)."""
    with _no_empty_parameter_list(name):
        return targets.typed_params(name, params)


class _no_empty_parameter_list:  # noqa: N801 - used as a context manager
    """An unknown parameter of a target that takes none says so (not 'valid keys: ')."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: Any) -> None:
        if isinstance(exc, UnknownName) and exc.kind == "target parameter" and not exc.valid:
            raise UsageError(f"unknown target parameter {exc.name!r}: target {self.name!r} "
                             "takes no parameters") from None


def sampler_module(name: str) -> ModuleType:
    try:
        return samplers.module(name)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    except ImportError as err:
        raise UsageError(f"sampler {name!r} is not available in this build ({err})") from None


def sampler_config(module: ModuleType, sets: Sequence[str] = (), preset: str | None = None,
                   sampler: str | None = None) -> Any:
    """module.Config() (or module.preset(preset)) with `--set key=value` overrides applied.

    Modules serving several sampler names (mcmc_samplers: mala, rwmh, hmc, pt) may take the name
    as `Config(sampler=...)` or `preset(name, sampler=...)`; whichever their signatures accept.
    """
    if preset is not None:
        make = getattr(module, "preset", None)
        if make is None:
            raise UsageError(f"sampler {sampler!r} has no presets")
        try:
            base = _call_with_sampler(make, sampler, preset)
        except (KeyError, ValueError) as err:
            raise UsageError(str(err.args[0] if err.args else err)) from None
    else:
        base = _call_with_sampler(module.Config, sampler)
    return apply_overrides(base, sets)


def apply_overrides(config: Any, sets: Sequence[str]) -> Any:
    """`config` with overrides applied; bad keys or values raise UsageError."""
    try:
        return configs.override(config, sets)
    except KeyError as err:
        raise UsageError(err.args[0]) from None
    except ValueError as err:
        raise UsageError(str(err)) from None


def config_from_dict(module: ModuleType, values: Mapping[str, Any], sampler: str | None) -> Any:
    """Rebuilds a recorded config (config.json) onto module.Config()."""
    base = _call_with_sampler(module.Config, sampler)
    return _replace_nested(base, values)


def resolve_reference(target: Target, target_name: str, *, path: str | Path | None = None,
                      n: int = 1000, custom_params: bool = False, seed: int = 0) -> Reference:
    """Reference samples for evaluation, in order of preference: an explicit file; the target's
    exact sampler (n draws, generator seeded with `seed`); the project's own cached reference
    (boltzkit.app.reference); the published set in ../shared/data (default parameters only).
    For exact samplers `n` is the sample size to compare, and 2n reference samples are drawn."""
    dims = (target.dim, target.n_particles, target.spatial_dim)
    if path is not None:
        try:
            return Reference(rundir.load_reference(path, *dims), "file",
                             str(Path(path).resolve()))
        except rundir.RunDirError as err:
            raise UsageError(str(err)) from None
    if target.has_exact_samples:
        # Twice the sample size: evaluate compares against one half and takes the
        # reference-vs-reference noise floor from disjoint halves.
        n_ref = 2 * n
        x = target.sample(n_ref, generator=torch.Generator().manual_seed(seed))
        x = target.remove_com(x.to(torch.float64))
        return Reference(x, f"exact sampler (n={n_ref}, seed={seed})", None)
    own = _project_reference(target_name, target)
    if own is not None:
        return own
    published = None if custom_params else rundir.published_reference(target_name)
    if published is not None:
        return Reference(rundir.load_reference(published, *dims), "published ../shared/data",
                         str(published))
    return Reference(None, "none", None)


# ---- running ------------------------------------------------------------------------------
def run_sampler(
    *,
    target_name: str,
    sampler: str,
    budget: int,
    seed: int,
    out: str | Path,
    sets: Sequence[str] = (),
    preset: str | None = None,
    n_samples: int = 1000,
    params: Sequence[str] = (),
    reference_path: str | Path | None = None,
    callback: Callback = null_callback,
    log: Callable[[str], None] | None = None,
    command: Sequence[str] | None = None,
    figures: bool = True,
) -> RunOutcome:
    """Checks every name, then samples, writes the run directory, evaluates and draws figures."""
    _check_sizes(budget, n_samples)
    target = build_target(target_name, params)
    module = sampler_module(sampler)
    config = sampler_config(module, sets, preset, sampler)
    reference = resolve_reference(target.uncounted(), target_name, path=reference_path,
                                  n=n_samples, custom_params=bool(params), seed=seed + 1)
    try:
        run_dir = rundir.prepare(out)
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None
    record = {
        "target": target_name, "target_params": target_params(target_name, params),
        "target_facts": target.describe(), "sampler": sampler, "preset": preset,
        "seed": seed, "budget": budget, "n_samples": n_samples,
        "command": list(command) if command is not None else rundir.command_line(),
        "reference": {"source": reference.source, "path": reference.path},
    }
    rundir.write_record(run_dir, record, configs.to_dict(config))
    try:
        return _execute(run_dir, target, module, config, record, reference, callback=callback,
                        log=log, resume=False, figures=figures)
    except UsageError:
        # Refused before it sampled (e.g. more samples than the budget buys): leave no record,
        # so that the same --out can be used again.
        for name in (rundir.RUN_FILE, rundir.CONFIG_FILE):
            (run_dir / name).unlink(missing_ok=True)
        raise


def resume_run(run_dir: str | Path, *, budget: int | None = None,
               callback: Callback = null_callback, log: Callable[[str], None] | None = None,
               command: Sequence[str] | None = None, figures: bool = True,
               expect: Mapping[str, Any] | None = None) -> RunOutcome:
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
    module = sampler_module(record["sampler"])
    config = config_from_dict(module, rundir.read_config(run_dir), record["sampler"])
    _check_same_run(run_dir, record, module, config, expect or {})
    step, spent = _last_checkpoint(run_dir)
    spent = max(spent or 0, int((record.get("counts") or {}).get("n_energy", 0)))
    if budget is not None:
        _check_sizes(budget, int(record["n_samples"]))
        if budget <= spent:
            raise UsageError(f"--budget {budget:,} is not above the {spent:,} energy evaluations "
                             f"{run_dir} already spent; give a larger budget")
        record["budget"] = budget
    target = build_target(record["target"], record.get("target_params") or {})
    reference = _recorded_reference(target.uncounted(), record)
    if log:
        log(f"resumed from checkpoint at step {step} ({spent:,} energy evaluations spent)"
            if step is not None else f"no checkpoint in {run_dir}: the run starts from the "
            "beginning")
    outcome = _execute(run_dir, target, module, config, record, reference, callback=callback,
                       log=log, resume=True, figures=figures)
    rundir.update_record(run_dir, budget=record["budget"],
                         resumed=(record.get("resumed") or [])
                         + [list(command) if command is not None else rundir.command_line()])
    return outcome


def _check_same_run(run_dir: Path, record: Mapping[str, Any], module: ModuleType, config: Any,
                    expect: Mapping[str, Any]) -> None:
    """UsageError when what the user gave with --resume differs from the recorded run."""
    given = {k: v for k, v in expect.items() if v not in (None, [], (), {})}
    recorded = {"target": record["target"], "sampler": record["sampler"],
                "preset": record.get("preset"), "seed": record.get("seed"),
                "n_samples": record.get("n_samples"),
                "target_params": record.get("target_params") or {}}
    if "target_params" in given:
        given["target_params"] = target_params(str(given.get("target", record["target"])),
                                               given["target_params"])
    wrong = [f"{k} {given[k]!r} (recorded: {recorded[k]!r})" for k in recorded
             if k in given and given[k] != recorded[k]]
    if "sets" in given:
        changed = configs.to_dict(apply_overrides(config, given["sets"])) != configs.to_dict(
            config)
        if changed:
            wrong.append(f"--set {' '.join(given['sets'])} (the checkpoint was made with the "
                         "recorded config.json)")
    if wrong:
        raise UsageError(f"--resume {run_dir} is a {record['target']} / {record['sampler']} run; "
                         f"it cannot continue with {'; '.join(wrong)}. Omit them or give the "
                         "recorded ones")


def _last_checkpoint(run_dir: Path) -> tuple[int | None, int | None]:
    """(step, energy evaluations spent) of the checkpoints in run_dir, each loaded once to
    check that it is not truncated (`EnvironmentProblem` otherwise)."""
    step = spent = None
    for path in rundir.checkpoint_files(run_dir):
        s, n = rundir.checkpoint_progress(rundir.read_checkpoint(path))
        step = s if s is not None else step
        spent = n if n is not None else spent
    return step, spent


def _execute(run_dir: Path, target: Target, module: ModuleType, config: Any,
             record: Mapping[str, Any], reference: Reference, *, callback: Callback,
             log: Callable[[str], None] | None, resume: bool, figures: bool) -> RunOutcome:
    seed_everything(int(record["seed"]))
    start = time.perf_counter()
    try:
        result = module.sample(target, config, n_samples=int(record["n_samples"]),
                               budget=int(record["budget"]), callback=callback, run_dir=run_dir,
                               resume=resume)
    except (UsageError, EnvironmentProblem):
        rundir.remove_temporaries(run_dir)
        raise
    except ValueError as err:
        # Samplers validate their inputs with ValueError (e.g. a budget too small for one
        # step): a usage error, with the traceback kept in the log for the rare real bug.
        if log:
            log(traceback.format_exc())
        raise UsageError(f"sampler {record['sampler']!r}: {err}") from None
    except (OSError, RuntimeError) as err:
        problem = _write_failure(run_dir, err)
        if problem is None:
            raise
        raise problem from None
    except BaseException:  # Ctrl-C, SIGTERM: the last complete checkpoint is what remains
        rundir.remove_temporaries(run_dir)
        raise
    wall_s = time.perf_counter() - start
    rundir.write_samples(run_dir, result.samples, result.log_w, result.log_Z)
    rundir.write_json(run_dir / rundir.DIAGNOSTICS_FILE, diagnostics_file(result))
    rundir.update_record(run_dir, wall_s=wall_s, counts=result.counts)
    if log:
        log(f"sampled {tuple(result.samples.shape)} in {wall_s:.1f} s; counts {result.counts}")
    metrics = evaluate_run(run_dir, reference=reference, figures=figures)
    return RunOutcome(run_dir, result, metrics, reference, wall_s)


def _write_failure(run_dir: Path, err: BaseException) -> EnvironmentProblem | None:
    """The EnvironmentProblem behind a failed checkpoint write (an OSError, or torch's
    "enforce fail at inline_container.cc" for a file it could not finish), None for other
    errors; removes the temporary files either way (the previous checkpoint is untouched)."""
    removed = rundir.remove_temporaries(run_dir)
    if isinstance(err, OSError):
        return EnvironmentProblem(f"cannot write {describe_os_error(err, run_dir)}")
    text = str(err)
    if "inline_container" not in text and "PytorchStreamWriter" not in text:
        return None
    where = removed[0].with_suffix("") if removed else run_dir
    cause = "no space left on device" if _disk_full(run_dir) else text.splitlines()[0]
    return EnvironmentProblem(f"cannot write {where}: {cause}; the previous checkpoint is intact")


def _disk_full(path: Path, margin: int = 1 << 20) -> bool:
    import shutil

    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def diagnostics_file(result: SampleResult) -> dict[str, Any]:
    """diagnostics.json's content: the sampler's diagnostics and its evaluation counts. A
    diagnostic that shares a count's name but means something else (MCMC's `n_nonfinite`:
    proposals rejected for a non-finite energy or score, vs. the count of energy evaluations
    that came back NaN or inf) is written as `sampler_<name>`, so each name has one meaning."""
    diagnostics = {(f"sampler_{k}" if k in result.counts else k): v
                   for k, v in result.diagnostics.items()}
    return {"diagnostics": diagnostics, "counts": result.counts,
            "notes": {"counts.n_nonfinite": "target energy evaluations that returned NaN or inf",
                      "diagnostics.sampler_n_nonfinite": "the sampler's own count: MCMC, "
                      "proposals rejected for a non-finite energy or score; flow and TRADE, "
                      "non-finite log-weights"}}


def _check_sizes(budget: int, n_samples: int) -> None:
    if budget < 1:
        raise UsageError(f"--budget must be a positive number of energy evaluations, got {budget}")
    if n_samples < 1:
        raise UsageError(f"--n-samples must be positive, got {n_samples}")


def _recorded_reference(target: Target, record: Mapping[str, Any],
                        path: str | Path | None = None) -> Reference:
    recorded = (record.get("reference") or {})
    if path is None and recorded.get("source") == "file":
        path = recorded.get("path")
    return resolve_reference(target, record["target"], path=path, n=int(record["n_samples"]),
                             custom_params=bool(record.get("target_params")),
                             seed=int(record["seed"]) + 1)


def evaluate_run(run_dir: str | Path, *, reference: Reference | None = None,
                 reference_path: str | Path | None = None, figures: bool = True
                 ) -> dict[str, Any]:
    """(Re)computes metrics.json (and the figures) of a finished run directory.

    The global RNGs are seeded with the run's seed first, so evaluating a run twice gives the
    same numbers. Samples with non-finite coordinates are dropped and counted
    (`n_nonfinite_samples`).
    """
    run_dir = Path(run_dir)
    try:
        record = rundir.read_record(run_dir, require=rundir.RECORD_KEYS)
        x_np, log_w_np, log_Z = rundir.read_samples(run_dir)
    except rundir.RunDirError as err:
        raise UsageError(str(err)) from None
    target = build_target(record["target"], record.get("target_params", {})).uncounted()
    if reference is None:
        reference = _recorded_reference(target, record, reference_path)
    x = torch.as_tensor(x_np)
    if x.ndim != 2 or x.shape[1] != target.dim:
        raise UsageError(f"{run_dir}: samples have shape {tuple(x.shape)}, target "
                         f"{record['target']!r} needs [n, {target.dim}]")
    log_w = None if log_w_np is None else torch.as_tensor(log_w_np)
    seed_everything(int(record["seed"]))
    metrics = _evaluate(x, log_w, target, reference.samples, seed=int(record["seed"]))
    if log_Z is not None:
        metrics["sampler_log_Z"] = log_Z
        if target.log_Z is not None:
            metrics["sampler_log_Z_error"] = log_Z - float(target.log_Z)
    _use_sampler_log_Z_se(metrics, _read_diagnostics(run_dir))
    counts = record.get("counts") or {}
    metrics.update({f"count_{k}": v for k, v in counts.items()})
    metrics["reference_source"] = reference.source
    written = rundir.write_metrics(run_dir, metrics)
    if figures:
        draw_figures(run_dir, x[torch.isfinite(x).all(dim=1)], target, reference.samples)
    return written


def _read_diagnostics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / rundir.DIAGNOSTICS_FILE
    if not path.exists():
        return {}
    diagnostics = rundir.read_json_object(path)
    return diagnostics.get("diagnostics") or {}


def _use_sampler_log_Z_se(metrics: dict[str, Any], diagnostics: Mapping[str, Any]) -> None:
    """A sampler that reports its own log Z standard error (SMC: from independent replicas)
    overrides the delta-method one of its weights, which after resampling measures nothing;
    None when it has none (a single replica)."""
    if "log_Z_se" not in diagnostics:
        return
    metrics["sampler_log_Z_se"] = diagnostics["log_Z_se"]
    if "log_Z_se" in metrics:
        metrics["log_Z_se"] = diagnostics["log_Z_se"]


def draw_figures(run_dir: Path, x: Tensor, target: Target, reference: Tensor | None) -> None:
    from boltzkit.app import plots  # matplotlib only when figures are asked for

    diagnostics = _read_diagnostics(run_dir)
    with torch.no_grad():
        energies = target.energy(x.to(torch.float64))
        ref_energies = None if reference is None else target.energy(reference)
    plots.run_figures(run_dir, x, energies, reference=reference, reference_energies=ref_energies,
                      n_particles=target.n_particles, spatial_dim=target.spatial_dim,
                      diagnostics=diagnostics)


# ---- internals ----------------------------------------------------------------------------
def _evaluate(x: Tensor, log_w: Tensor | None, target: Target, reference: Tensor | None,
              seed: int) -> dict[str, Any]:
    """`boltzkit.evaluate.evaluation.evaluate` with a generator seeded from the run (reproducible
    subsets)."""
    from boltzkit.evaluate import evaluation

    return dict(evaluation.evaluate(x, target, reference=reference, log_w=log_w,
                                 generator=torch.Generator().manual_seed(seed)))


def project_reference_path(target_name: str, target: Target | None = None) -> Path | None:
    """The largest cached reference made by `boltzkit reference` for this target (matching
    `target`'s parameters when given), or None."""
    from boltzkit.app import reference as project_reference

    path = project_reference.cached_path(target_name, target)
    return Path(path) if path is not None and Path(path).exists() else None


def _project_reference(target_name: str, target: Target) -> Reference | None:
    path = project_reference_path(target_name, target)
    if path is None:
        return None
    samples = rundir.load_reference(path, target.dim, target.n_particles, target.spatial_dim)
    return Reference(samples, "project reference (boltzkit reference)", str(path))


def _as_dict(items: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    return dict(items) if isinstance(items, Mapping) else configs.parse_assignments(items)


def _call_with_sampler(make: Callable[..., Any], sampler: str | None, *args: Any) -> Any:
    try:
        accepts = "sampler" in inspect.signature(make).parameters
    except (TypeError, ValueError):
        accepts = False
    return make(*args, sampler=sampler) if accepts and sampler is not None else make(*args)


def _replace_nested(base: Any, values: Mapping[str, Any]) -> Any:
    changes = {}
    for f in dataclasses.fields(base):
        if f.name not in values:
            continue
        current, value = getattr(base, f.name), values[f.name]
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = _replace_nested(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        changes[f.name] = value
    return dataclasses.replace(base, **changes)


# ---- for the CLI's tables -----------------------------------------------------------------
def resolve_reference_source(target: Target, target_name: str) -> str:
    """Where `boltzkit sample` would take this target's reference from (nothing is loaded)."""
    if target.has_exact_samples:
        return "exact"
    if project_reference_path(target_name, target) is not None:
        return "cached"
    if rundir.published_reference(target_name) is not None:
        return "published"
    return "none yet"


def summary_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A flat {name: scalar or short text} view of a dict, NamedTuple or dataclass, for tables;
    long lists are summarised by their length."""
    if hasattr(obj, "_asdict"):
        obj = obj._asdict()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if not isinstance(obj, Mapping):
        return {prefix or "value": obj}
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Tensor | np.ndarray):
            value = value.tolist() if value.size == 1 or getattr(value, "ndim", 1) == 0 else (
                f"array {tuple(value.shape)}")
        if isinstance(value, Mapping) or hasattr(value, "_asdict"):
            flat.update(summary_dict(value, name))
        elif isinstance(value, list | tuple) and len(value) > 6:
            flat[name] = f"[{len(value)} values]"
        else:
            flat[name] = value
    return flat
