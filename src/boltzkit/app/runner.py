"""One sampler run, from names to a finished run directory: resolve the target, sampler and
config, seed the global RNGs, sample under a budget, evaluate against a reference, write
everything (layout in `boltzkit.app.rundir`). The CLI and the demo call these; nothing here prints.

Names are checked before anything runs, and every bad name or key raises `UsageError` with the
valid choices, which the CLI turns into a clean message and exit code 2. A file or file system
that fails (corrupt run files, a truncated checkpoint, a full disk, a read-only file system)
raises `EnvironmentProblem` naming the path and the cause (exit code 1); no temporary file is
left behind and the previous checkpoint stays intact.

Resuming a run lives in `boltzkit.app.resume`.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from boltzkit import samplers, targets
from boltzkit.app import failures, rundir, summary
from boltzkit.core import config as configs
from boltzkit.core.errors import EnvironmentProblem, UsageError
from boltzkit.evaluate import sanity
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.targets import Target

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
    with failures.no_empty_parameter_list(name):
        return targets.build(name, params)


def target_params(name: str, params: Sequence[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """The explicitly given target parameters, typed (as recorded in run.json)."""
    with failures.no_empty_parameter_list(name):
        return targets.typed_params(name, params)


def sampler_module(name: str) -> ModuleType:
    try:
        return samplers.module(name)
    except ImportError as err:
        raise UsageError(f"sampler {name!r} is not available in this build ({err})") from None


NO_PRESET = "none"


def default_preset(module: ModuleType, target_name: str | None) -> str | None:
    """The preset a run uses when none is named: the sampler's preset named after the target,
    if it has one (safe settings beat silent garbage), else None."""
    names = getattr(module, "preset_names", lambda: [])()
    return target_name if target_name in names else None


def sampler_config(module: ModuleType, sets: Sequence[str] = (), preset: str | None = None,
                   sampler: str | None = None) -> Any:
    """module.Config() (or module.preset(preset)) with `--set key=value` overrides applied.

    `preset` None or "none" means the sampler's defaults. Modules serving several sampler names
    (mcmc: mala, rwmh, hmc, pt) take the name as `Config(sampler)` / `preset(name, sampler)`.
    """
    if preset is not None and preset != NO_PRESET:
        make = getattr(module, "preset", None)
        if make is None:
            raise UsageError(f"sampler {sampler!r} has no presets (use --preset none)")
        base = _call_with_sampler(make, sampler, preset)
    else:
        base = _call_with_sampler(module.Config, sampler)
    return apply_overrides(base, sets)


def apply_overrides(config: Any, sets: Sequence[str]) -> Any:
    """`config` with overrides applied; bad keys or values raise UsageError."""
    return configs.override(config, sets)


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


# ---- devices ------------------------------------------------------------------------------
def available_devices() -> list[str]:
    """The devices this machine offers: cpu, and cuda, cuda:0, ... where CUDA is present."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else [])


def check_device(device: str) -> str:
    """`device` if this machine has it (cpu, cuda, cuda:N), else a `UsageError` naming those it
    has."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if dev is not None and (dev.type == "cpu" or (dev.type == "cuda" and n_cuda
                                                  and (dev.index or 0) < n_cuda)):
        return device
    raise UsageError(f"device {device!r} is not available here; available: "
                     f"{', '.join(available_devices())}")


def on_config_device(target: Target, config: Any) -> Target:
    """The target moved to the sampler config's `device` (unchanged for configs without one)."""
    device = getattr(config, "device", None)
    if device is None:
        return target
    check_device(device)
    return target if target.device == torch.device(device) else target.to(device)


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
    check_sizes(budget, n_samples)
    target = build_target(target_name, params)
    module = sampler_module(sampler)
    if preset is None:
        preset = default_preset(module, target_name)
        if preset is not None and log:
            log(f"using preset {preset!r} of sampler {sampler!r} for target {target_name!r} "
                "(--preset none for the sampler's defaults)")
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
        return execute(run_dir, target, module, config, record, reference, callback=callback,
                        log=log, resume=False, figures=figures)
    except UsageError:
        # Refused before it sampled (e.g. more samples than the budget buys): leave no record,
        # so that the same --out can be used again.
        for name in (rundir.RUN_FILE, rundir.CONFIG_FILE):
            (run_dir / name).unlink(missing_ok=True)
        raise


def execute(run_dir: Path, target: Target, module: ModuleType, config: Any,
             record: Mapping[str, Any], reference: Reference, *, callback: Callback,
             log: Callable[[str], None] | None, resume: bool, figures: bool) -> RunOutcome:
    seed_everything(int(record["seed"]))
    target = on_config_device(target, config)
    start = time.perf_counter()
    try:
        result = module.sample(target, config, n_samples=int(record["n_samples"]),
                               budget=int(record["budget"]), callback=callback, run_dir=run_dir,
                               resume=resume)
    except UsageError as err:
        # e.g. a budget too small for one step; any other exception is a bug and propagates
        # with its traceback (the CLI writes it to the run's log)
        rundir.remove_temporaries(run_dir)
        raise UsageError(f"sampler {record['sampler']!r}: {err}") from None
    except EnvironmentProblem:
        rundir.remove_temporaries(run_dir)
        raise
    except (OSError, RuntimeError) as err:
        problem = failures.write_failure(run_dir, err)
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
    if log:
        for warning in rundir.read_record(run_dir).get("warnings") or []:
            log(f"warning: {warning}")
    return RunOutcome(run_dir, result, metrics, reference, wall_s)


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


def check_sizes(budget: int, n_samples: int) -> None:
    if budget < 1:
        raise UsageError(f"--budget must be a positive number of energy evaluations, got {budget}")
    if n_samples < 1:
        raise UsageError(f"--n-samples must be positive, got {n_samples}")


def recorded_reference(target: Target, record: Mapping[str, Any],
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
        reference = recorded_reference(target, record, reference_path)
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
    finite = x[torch.isfinite(x).all(dim=1)]
    energies, ref_energies = _energies(target, finite, reference.samples)
    warnings = sanity.warnings_for(written, energies, ref_energies, target.typical_energy_max)
    rundir.update_record(run_dir, warnings=warnings)
    if figures:
        draw_figures(run_dir, finite, target, reference.samples, energies, ref_energies)
    summary.write(run_dir, {**record, "warnings": warnings}, written, _read_diagnostics(run_dir),
                  warnings)
    return written


def _energies(target: Target, x: Tensor, reference: Tensor | None
              ) -> tuple[Tensor, Tensor | None]:
    with torch.no_grad():
        energies = target.energy(x.to(torch.float64))
        ref = None if reference is None else target.energy(reference.to(torch.float64))
    return energies, ref


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


def draw_figures(run_dir: Path, x: Tensor, target: Target, reference: Tensor | None,
                 energies: Tensor, reference_energies: Tensor | None) -> None:
    from boltzkit.app import plots  # matplotlib only when figures are asked for

    plots.run_figures(run_dir, x, energies, reference=reference,
                      reference_energies=reference_energies, n_particles=target.n_particles,
                      spatial_dim=target.spatial_dim, diagnostics=_read_diagnostics(run_dir),
                      molecule=bool(getattr(target, "is_molecule", False)))


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
            size = value.numel() if isinstance(value, Tensor) else value.size
            value = value.reshape(-1)[0].item() if size == 1 else f"array {tuple(value.shape)}"
        if isinstance(value, Mapping) or hasattr(value, "_asdict"):
            flat.update(summary_dict(value, name))
        elif isinstance(value, list | tuple) and len(value) > 6:
            flat[name] = f"[{len(value)} values]"
        else:
            flat[name] = value
    return flat
