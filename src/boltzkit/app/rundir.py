"""Run directories: what one `boltzkit sample` run leaves behind, and how to read it back.

Layout of a run directory:

    run.json          target (name, parameters), sampler, preset, seed, budget, n_samples,
                      command line, boltzkit/torch/numpy/python versions, reference used, timings
    config.json       the resolved sampler config (after preset and --set overrides)
    samples.npz       `samples` [n, dim]; `log_w` [n] where the sampler returns weights;
                      `log_Z` (0-d) where it estimates one
    diagnostics.json  the sampler's diagnostics and its evaluation counts
    metrics.json      flat dict of metrics (boltzkit.evaluate.evaluation.evaluate) plus counts;
                      non-finite values are written as null and their keys listed under
                      "nonfinite_keys"
    log.txt           timestamped log
    *.png             figures (boltzkit.app.plots.run_figures)

Reference sample sets load from `.npy` (an `[n, dim]` array) or `.npz` (key "samples", or its
only array); particle systems have their centre of mass removed on load. The published sets in
`../shared/data` (REFERENCE.md) are found by target name when that folder exists.

>>> sanitize({"a": float("nan"), "b": [1.0, float("inf")]})
({'a': None, 'b': [1.0, None]}, ['a', 'b[1]'])
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import boltzkit

RUN_FILE = "run.json"
CONFIG_FILE = "config.json"
SAMPLES_FILE = "samples.npz"
DIAGNOSTICS_FILE = "diagnostics.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.txt"

# target name -> (published file, second file for a reference-vs-reference noise floor)
PUBLISHED: dict[str, tuple[str, str]] = {
    "dw4": ("test_split_DW4.npy", "val_split_DW4.npy"),
    "lj13": ("test_split_LJ13-1000.npy", "val_split_LJ13-1000.npy"),
}


class RunDirError(ValueError):
    """A run directory or reference file that cannot be used (message says why)."""


# ---- writing ------------------------------------------------------------------------------
def prepare(out: str | Path, *, resume: bool = False) -> Path:
    """Creates `out`; refuses a directory that already holds a finished run unless resuming."""
    path = Path(out)
    if resume:
        if not (path / RUN_FILE).exists():
            raise RunDirError(f"cannot resume: {path} holds no {RUN_FILE}")
        return path
    if (path / RUN_FILE).exists():
        raise RunDirError(f"{path} already holds a run; choose another --out or pass --resume")
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded in every run."""
    return {
        "boltzkit": boltzkit.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_line() -> list[str]:
    """The command line of this process, program name shortened to its basename."""
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return argv


def write_json(path: str | Path, obj: Any) -> Path:
    """Writes strict JSON (non-finite floats become null; tensors and arrays become lists)."""
    clean, _ = sanitize(obj)
    path = Path(path)
    path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_record(run_dir: Path, record: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Writes run.json (record plus environment and a timestamp) and config.json."""
    full = dict(record)
    full.setdefault("environment", environment())
    full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json(run_dir / RUN_FILE, full)
    write_json(run_dir / CONFIG_FILE, dict(config))


def update_record(run_dir: Path, **fields: Any) -> None:
    """Adds or replaces top-level fields of run.json."""
    record = read_record(run_dir)
    record.update(fields)
    write_json(run_dir / RUN_FILE, record)


def write_samples(run_dir: Path, samples: Any, log_w: Any = None, log_Z: float | None = None
                  ) -> Path:
    """samples.npz with `samples` and, where given, `log_w` and `log_Z`."""
    arrays: dict[str, np.ndarray] = {"samples": to_numpy(samples)}
    if log_w is not None:
        arrays["log_w"] = to_numpy(log_w)
    if log_Z is not None:
        arrays["log_Z"] = np.asarray(float(log_Z))
    path = run_dir / SAMPLES_FILE
    np.savez(path, **arrays)
    return path


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json; returns what was written (non-finite values as None, listed)."""
    clean, bad = sanitize(dict(metrics))
    clean["nonfinite_keys"] = bad
    write_json(run_dir / METRICS_FILE, clean)
    return clean


# ---- reading ------------------------------------------------------------------------------
def read_record(run_dir: str | Path) -> dict[str, Any]:
    """run.json as a dict; a clear error when `run_dir` is not a run directory."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    return json.loads(path.read_text(encoding="utf-8"))


def read_config(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8"))


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8"))


def read_samples(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(samples, log_w or None, log_Z or None) from samples.npz."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} holds no {SAMPLES_FILE} (did the run finish?)")
    with np.load(path) as data:
        log_w = data["log_w"] if "log_w" in data else None
        log_Z = float(data["log_Z"]) if "log_Z" in data else None
        return data["samples"], log_w, log_Z


def load_array(path: str | Path) -> np.ndarray:
    """A 2-D array from `.npy` or `.npz` (key "samples", else the file's only array)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"reference file {path} does not exist")
    if path.suffix == ".npy":
        array = np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as data:
            keys = list(data.keys())
            if "samples" in keys:
                array = data["samples"]
            elif len(keys) == 1:
                array = data[keys[0]]
            else:
                raise RunDirError(f"{path}: expected a 'samples' array or a single array, "
                                  f"found {keys}")
    else:
        raise RunDirError(f"{path}: reference files must be .npy or .npz")
    return np.asarray(array)


def load_reference(path: str | Path, dim: int, n_particles: int | None = None,
                   spatial_dim: int | None = None) -> torch.Tensor:
    """Reference samples `[n, dim]` as float64, centre of mass removed for particle systems."""
    array = load_array(path)
    if array.ndim == 3 and n_particles is not None and array.shape[1:] == (n_particles,
                                                                          spatial_dim):
        array = array.reshape(len(array), -1)
    if array.ndim != 2 or array.shape[1] != dim:
        raise RunDirError(f"{path}: reference has shape {tuple(array.shape)}, the target needs "
                          f"[n, {dim}]")
    x = torch.as_tensor(array, dtype=torch.float64)
    if n_particles is not None and spatial_dim is not None:
        xp = x.reshape(len(x), n_particles, spatial_dim)
        x = (xp - xp.mean(dim=1, keepdim=True)).reshape(len(x), dim)
    return x


def shared_data_dir() -> Path | None:
    """`../shared/data` next to the project (or $BOLTZKIT_SHARED_DATA), None when absent."""
    candidates = [os.environ.get("BOLTZKIT_SHARED_DATA")]
    candidates.append(str(Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    candidates.append(str(Path.cwd().parent / "shared" / "data"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    return None


def published_reference(target_name: str, which: int = 0) -> Path | None:
    """The published reference file for `target_name` (which=0 test split, 1 validation split),
    None when there is none or ../shared/data is absent."""
    data = shared_data_dir()
    if data is None or target_name not in PUBLISHED:
        return None
    path = data / PUBLISHED[target_name][which]
    return path if path.exists() else None


# ---- helpers ------------------------------------------------------------------------------
def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def sanitize(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """A JSON-ready copy of `obj` (tensors, arrays and numpy scalars to Python; NaN and inf to
    None) and the paths of the non-finite values replaced."""
    if isinstance(obj, torch.Tensor | np.ndarray | np.generic):
        obj = obj.tolist() if not isinstance(obj, torch.Tensor) else obj.detach().cpu().tolist()
    if isinstance(obj, Mapping):
        out, bad = {}, []
        for k, v in obj.items():
            out[str(k)], b = sanitize(v, f"{where}.{k}" if where else str(k))
            bad += b
        return out, bad
    if isinstance(obj, list | tuple):
        out_list, bad = [], []
        for i, v in enumerate(obj):
            clean, b = sanitize(v, f"{where}[{i}]")
            out_list.append(clean)
            bad += b
        return out_list, bad
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where]
    if isinstance(obj, bool | int | float | str) or obj is None:
        return obj, []
    if isinstance(obj, Path):
        return str(obj), []
    return str(obj), []
