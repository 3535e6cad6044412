"""Run directories: what one `boltzkit sample` run leaves behind, and how to read it back.

Layout of a run directory:

    run.json          target (name, parameters), sampler, preset, seed, budget, n_samples,
                      command line, boltzkit/torch/numpy/python versions, reference used, timings
    config.json       the resolved sampler config (after preset and --set overrides)
    samples.npz       `samples` [n, dim]; `log_w` [n] where the sampler returns weights;
                      `log_Z` (0-d) where it estimates one
    diagnostics.json  the sampler's diagnostics and its evaluation counts (a diagnostic that
                      shares a count's name is written as `sampler_<name>`; "notes" says which
                      is which)
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

import io
import json
import math
import os
import platform
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import boltzkit
from boltzkit.core.errors import EnvironmentProblem
from boltzkit.core.files import atomic_write, describe_os_error

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


RECORD_KEYS = ("target", "sampler", "seed", "budget", "n_samples")
CHECKPOINT_GLOB = "*checkpoint*.pt"


class RunDirError(ValueError):
    """A run directory or reference file that cannot be used (message says why)."""


# What np.load raises on a file that is not what its name says (garbage, truncated, pickled).
_NUMPY_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError)


# ---- writing ------------------------------------------------------------------------------
def prepare(out: str | Path, *, resume: bool = False) -> Path:
    """Creates `out`; refuses a directory that already holds a finished run unless resuming."""
    path = Path(out)
    if resume:
        if not path.is_dir():
            raise RunDirError(f"cannot resume: {path} is not a directory")
        if not (path / RUN_FILE).exists():
            raise RunDirError(f"cannot resume: {path} holds no {RUN_FILE}")
        return path
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out {path} is an existing file; give a directory to create")
    if (path / RUN_FILE).exists():
        raise RunDirError(f"{path} already holds a run; choose another --out or pass --resume")
    make_dir(path)
    return path


def make_dir(path: Path) -> None:
    """mkdir -p, with `EnvironmentProblem` naming the path and the cause when it fails (a
    read-only file system, no permission, a parent that is a file)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"{path} (or a parent) is an existing file, not a directory") from None
    except NotADirectoryError:
        raise RunDirError(f"a parent of {path} is an existing file, not a directory") from None
    except OSError as err:
        raise EnvironmentProblem(f"cannot create {path}: "
                                 f"{describe_os_error(err).split(': ', 1)[-1]}") from None


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
    text = json.dumps(clean, indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text.encode("utf-8"))


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
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(run_dir / SAMPLES_FILE, buffer.getvalue())


def write_metrics(run_dir: Path, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json; returns what was written (non-finite values as None, listed)."""
    clean, bad = sanitize(dict(metrics))
    clean["nonfinite_keys"] = bad
    write_json(run_dir / METRICS_FILE, clean)
    return clean


# ---- reading ------------------------------------------------------------------------------
def read_record(run_dir: str | Path, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """run.json as a dict; a clear error when `run_dir` is not a run directory, or when the file
    is not JSON or lacks a key of `require` (`EnvironmentProblem`: a corrupt file)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no {RUN_FILE})")
    record = read_json_object(path)
    missing = [k for k in require if k not in record]
    if missing:
        raise EnvironmentProblem(f"{path}: corrupt run file (missing {', '.join(missing)})")
    return record


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise EnvironmentProblem(f"{path}: missing (the run's config)")
    return read_json_object(path)


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    return read_json_object(Path(run_dir) / METRICS_FILE)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; `EnvironmentProblem` naming the path when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EnvironmentProblem(f"{path}: corrupt JSON ({err.msg}: line {err.lineno}, "
                                 f"column {err.colno})") from None
    except UnicodeDecodeError:
        raise EnvironmentProblem(f"{path}: corrupt JSON (not UTF-8 text)") from None
    except OSError as err:
        raise EnvironmentProblem(f"cannot read {describe_os_error(err, path)}") from None
    if not isinstance(value, dict):
        raise EnvironmentProblem(f"{path}: corrupt (a JSON {type(value).__name__}, not an "
                                 "object)")
    return value


def read_samples(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """(samples, log_w or None, log_Z or None) from samples.npz."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} holds no {SAMPLES_FILE} (did the run finish?)")
    try:
        with np.load(path) as data:
            if "samples" not in data:
                raise EnvironmentProblem(f"{path}: corrupt (no 'samples' array)")
            log_w = data["log_w"] if "log_w" in data else None
            log_Z = float(data["log_Z"]) if "log_Z" in data else None
            return data["samples"], log_w, log_Z
    except _NUMPY_READ_ERRORS as err:
        raise EnvironmentProblem(f"{path}: corrupt or truncated .npz file "
                                 f"({_numpy_cause(err)})") from None
    except AttributeError:  # np.load returned a plain array: a .npy file under this name
        raise EnvironmentProblem(f"{path}: corrupt (not an .npz archive)") from None


def _numpy_cause(err: BaseException) -> str:
    text = str(err)
    if "pickled" in text:  # numpy's guess for any file without a valid header
        return "not a NumPy array file"
    return first_sentence(text) if text else type(err).__name__


def first_sentence(text: str) -> str:
    """The first line of `text` up to its first full stop (library messages run on)."""
    line = text.strip().splitlines()[0] if text.strip() else text
    return line.split(". ", 1)[0].rstrip(".")


def load_array(path: str | Path) -> np.ndarray:
    """A 2-D array from `.npy` or `.npz` (key "samples", else the file's only array)."""
    path = Path(path)
    if not path.exists():
        raise RunDirError(f"reference file {path} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise RunDirError(f"{path}: reference files must be .npy or .npz")
    try:
        return _load_array(path)
    except RunDirError:
        raise
    except _NUMPY_READ_ERRORS as err:
        raise RunDirError(f"{path}: not a readable {path.suffix} file ({_numpy_cause(err)})"
                          ) from None


def _load_array(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        array = np.load(path)
        if not isinstance(array, np.ndarray):
            raise RunDirError(f"{path}: not a .npy array (an archive?)")
        return np.asarray(array)
    with np.load(path) as data:
        if not hasattr(data, "keys"):
            raise RunDirError(f"{path}: not an .npz archive")
        keys = list(data.keys())
        if "samples" in keys:
            return np.asarray(data["samples"])
        if len(keys) == 1:
            return np.asarray(data[keys[0]])
        raise RunDirError(f"{path}: expected a 'samples' array or a single array, found {keys}")


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
    if not np.issubdtype(array.dtype, np.number) or len(array) == 0:
        raise RunDirError(f"{path}: reference must be a non-empty numeric array, got "
                          f"{len(array)} rows of {array.dtype}")
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise RunDirError(f"{path}: {int(bad.sum())} of {len(array)} reference rows hold NaN or "
                          f"inf (first: row {int(np.argmax(bad))}); remove them")
    x = torch.as_tensor(array, dtype=torch.float64)
    if n_particles is not None and spatial_dim is not None:
        xp = x.reshape(len(x), n_particles, spatial_dim)
        x = (xp - xp.mean(dim=1, keepdim=True)).reshape(len(x), dim)
    return x


def shared_data_dir() -> Path | None:
    """`../shared/data` next to the project (or $BOLTZKIT_SHARED_DATA), None when absent."""
    candidates = [os.environ.get("BOLTZKIT_SHARED_DATA")]
    candidates.append(str(Path(__file__).resolve().parents[3].parent / "shared" / "data"))
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


# ---- checkpoints (written by the samplers) ---------------------------------------------------
def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """The samplers' checkpoint files in `run_dir` (`*checkpoint*.pt`)."""
    return sorted(Path(run_dir).glob(CHECKPOINT_GLOB))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; `EnvironmentProblem` when it is truncated or corrupt."""
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        cause = first_sentence(str(err)) or type(err).__name__
        raise EnvironmentProblem(f"{path}: truncated or corrupt checkpoint ({cause}); delete it "
                                 "to restart the run from the beginning") from None
    if not isinstance(state, dict):
        raise EnvironmentProblem(f"{path}: corrupt checkpoint (not a dict)")
    return state


def checkpoint_progress(state: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(step, energy evaluations spent) recorded in a checkpoint, None where not recorded.

    Knows the layouts of the samplers' checkpoints: "step" (MCMC, flow, TRADE), "iteration"
    (iDEM); counts under "counts", "spent" or "spent_counts"."""
    step = state.get("step", state.get("iteration"))
    spent = None
    for key in ("counts", "spent", "spent_counts"):
        if isinstance(state.get(key), Mapping) and "n_energy" in state[key]:
            spent = int(state[key]["n_energy"])
            break
    return (None if step is None else int(step)), spent


def remove_temporaries(run_dir: str | Path) -> list[Path]:
    """Removes the `*.tmp` files an interrupted write left in `run_dir`; returns them."""
    removed = []
    for tmp in Path(run_dir).glob("*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


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
