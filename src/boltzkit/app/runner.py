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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from boltzkit import samplers, targets
from boltzkit.app import failures, rundir
from boltzkit.app.assess import evaluate_run
from boltzkit.app.references import (
    Reference,
    resolve_reference,
)
from boltzkit.core import config as configs
from boltzkit.core.errors import EnvironmentProblem, UsageError
from boltzkit.core.seeding import seed_everything
from boltzkit.samplers import Callback, SampleResult, null_callback
from boltzkit.targets import Target
from boltzkit.targets.molecules.constrained import constrained_space

__all__ = ["EnvironmentProblem", "UsageError"]  # what the CLI catches, re-exported


class RunOutcome(NamedTuple):
    run_dir: Path
    result: SampleResult
    metrics: dict[str, Any]
    reference: Reference
    wall_s: float


def build_target(name: str, params: Sequence[str] | Mapping[str, Any] = ()) -> Target:
    """`boltzkit.targets.build`: a target from its name and `key=value` parameters."""
    with failures.no_empty_parameter_list(name):
        return targets.build(name, params)


def target_params(name: str, params: Sequence[str] | Mapping[str, Any] = ()) -> dict[str, Any]:
    """The explicitly given target parameters, typed (as recorded in run.json)."""
    with failures.no_empty_parameter_list(name):
        return targets.typed_params(name, params)


def sampling_space(target: Target) -> Target:
    """The target a sampler moves in: for a molecule with rigid bonds (aldp's H-bonds, which
    carry no energy term) its free internal coordinates
    (`targets.molecules.constrained.ConstrainedInternalTarget`, whose law is that of
    constrained MD), else the target itself. Samples come back through `to_target_space`."""
    return constrained_space(target) or target


def to_target_space(space: Target, target: Target, samples: Tensor) -> Tensor:
    """Samples of `space` as coordinates of `target` (Cartesian for a constrained molecule)."""
    if space is target:
        return samples
    return space.to_cartesian(samples)[0]


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
    space = on_config_device(sampling_space(target), config)
    start = time.perf_counter()
    try:
        result = module.sample(space, config, n_samples=int(record["n_samples"]),
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
    result = result._replace(samples=to_target_space(space, target, result.samples))
    rundir.write_samples(run_dir, result.samples, result.log_w, result.log_Z)
    rundir.write_json(run_dir / rundir.DIAGNOSTICS_FILE, diagnostics_file(result))
    extra = {} if space is target else {"sampled_in": f"{space.name}: {space.dim} free "
                                                     "internal coordinates, mapped back to "
                                                     "Cartesian"}
    rundir.update_record(run_dir, wall_s=wall_s, counts=result.counts, **extra)
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
