"""Executors for sweeps of independent runs: `serial`, `local` (a process pool over this
machine's cores) and `ray` (Ray tasks, on a local instance or a cluster joined by address).

A sweep is a list of `Task`s: a picklable top-level function, its keyword arguments (the run's
recorded seed among them) and its resources. Every executor runs `run_task` on each task, which
pins torch's intra-op threads to the task's `num_cpus` and calls the function; the function
seeds itself from its own arguments, so a run's numbers do not depend on the executor, the
worker or the order of completion. Finished runs are written one JSON file each,
`<out_dir>/<key>.json` (value, attempts, failures), and a re-run of the sweep skips them.

A worker that dies (killed, `os._exit`, out of memory) fails its task with `WorkerDied`; the
task is retried once (`retries=1`) and its failed attempts are recorded in the result file. A
task that still fails, or raises an exception (a bug, not retried), is recorded in
`<key>.failed.json` and the sweep goes on; the failed keys are in `SweepResult.failed`. When a
local pool breaks, every task in flight in it at that moment is charged one attempt (the pool
cannot tell which worker died), so an innocent bystander may be retried too.

Ray is an optional dependency (`pip install -e ".[ray]"`), imported only here and only when the
ray executor runs; nothing else in boltzkit imports it.

>>> outcome = Serial().map([Task("a", pow, {"base": 2, "exp": 10})])
>>> outcome.values["a"]
1024
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from boltzkit.core.callback import Callback, null_callback
from boltzkit.core.errors import UsageError

EXECUTORS = ("serial", "local", "ray")


@dataclass(frozen=True)
class Task:
    """One independent run: `fn(**kwargs)` returns a JSON-serialisable value.

    `key` names the run's result file (unique within the sweep; `task_key` builds one from the
    arguments); `num_cpus` / `num_gpus` are its resources (Ray schedules by them; every executor
    sets torch's threads to `num_cpus`)."""

    key: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_cpus: int = 1
    num_gpus: float = 0.0


class WorkerDied(RuntimeError):
    """The process running a task died before returning (killed, `os._exit`, out of memory)."""


class SweepResult(NamedTuple):
    """values: key -> the task's value, in task order, for the tasks that finished (now or in an
    earlier run); attempts: key -> attempts made now (0 when skipped as already finished);
    failed: key -> the last error of the tasks that did not finish; skipped: keys found done."""

    values: dict[str, Any]
    attempts: dict[str, int]
    failed: dict[str, str]
    skipped: list[str]


class Executor(Protocol):
    """Runs a sweep: `map(tasks, out_dir=None, callback=...) -> SweepResult`."""

    name: str

    def map(self, tasks: Sequence[Task], out_dir: str | Path | None = None,
            callback: Callback = null_callback) -> SweepResult: ...


def task_key(label: str, kwargs: Mapping[str, Any]) -> str:
    """A filesystem-safe key: `label` plus 10 hex digits of the SHA-1 of the JSON arguments, so
    that a re-run with other settings in the same directory does not reuse stale results."""
    digest = hashlib.sha1(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)
    return f"{safe}-{digest[:10]}"


def run_task(fn: Callable[..., Any], kwargs: Mapping[str, Any], num_cpus: int = 1) -> Any:
    """`fn(**kwargs)` with torch's intra-op threads set to `num_cpus` (restored afterwards), so
    that reductions are split the same way whichever executor runs the task."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(num_cpus)))
    try:
        return fn(**kwargs)
    finally:
        torch.set_num_threads(before)


def make(name: str = "serial", workers: int | None = None, address: str | None = None,
         retries: int = 1) -> Executor:
    """The executor `name` ("serial", "local", "ray"); `workers` defaults to the CPU count;
    `address` (ray only) joins an existing cluster ("auto" or "HOST:PORT")."""
    if name not in EXECUTORS:
        raise UsageError(f"unknown executor {name!r}; valid executors: {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    if address is not None and name != "ray":
        raise UsageError("--address joins a Ray cluster: use it with --executor ray")
    if name == "serial":
        return Serial(retries=retries)
    if name == "local":
        return Local(workers or os.cpu_count() or 1, retries=retries)
    return Ray(workers, address=address, retries=retries)


def sweep(executor: Executor | None, tasks: Sequence[Task], out_dir: str | Path,
          callback: Callback = null_callback) -> SweepResult:
    """An experiment's sweep: `tasks` on `executor` (default serial), results kept in
    `out_dir`, each failed run logged in one line."""
    result = (executor or Serial()).map(tasks, out_dir, callback)
    for key, error in result.failed.items():
        callback("log", message=f"run {key} failed: {error.splitlines()[0]}")
    return result


def tally(executor: Executor | None, *results: SweepResult) -> dict[str, Any]:
    """The headline's account of sweeps: executor name, failed and skipped runs."""
    return {"executor": (executor or Serial()).name,
            "n_failed": sum(len(r.failed) for r in results),
            "n_skipped": sum(len(r.skipped) for r in results)}


def fresh_dir(path: str | Path) -> Path:
    """`path` as a new empty directory: what a dead attempt of the task left there removed."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# ---- result files -------------------------------------------------------------------------
class _Ledger:
    """The per-run result files of one sweep (none when `out_dir` is None)."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.dir = None if out_dir is None else Path(out_dir)
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def done(self, key: str) -> tuple[bool, Any]:
        if self.dir is None or not (self.dir / f"{key}.json").exists():
            return False, None
        return True, json.loads((self.dir / f"{key}.json").read_text())["value"]

    def finish(self, key: str, value: Any, attempts: int, failures: list[str]) -> Any:
        """Writes the result file; returns the value as read back (the same JSON round trip
        whether the task ran now or in an earlier sweep)."""
        text = json.dumps({"key": key, "value": value, "attempts": attempts,
                           "failures": failures}, allow_nan=True)
        if self.dir is not None:
            (self.dir / f"{key}.json").write_text(text + "\n")
            (self.dir / f"{key}.failed.json").unlink(missing_ok=True)
        return json.loads(text)["value"]

    def fail(self, key: str, attempts: int, failures: list[str]) -> None:
        if self.dir is not None:
            (self.dir / f"{key}.failed.json").write_text(json.dumps(
                {"key": key, "attempts": attempts, "failures": failures}, indent=1) + "\n")


class _Sweep:
    """Book-keeping shared by the executors: skip finished tasks, count attempts, retry worker
    deaths up to `retries` times, record everything and report progress."""

    def __init__(self, tasks: Sequence[Task], out_dir: str | Path | None, callback: Callback,
                 retries: int, description: str) -> None:
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError("task keys must be unique within a sweep")
        self.tasks, self.ledger, self.callback, self.retries = list(tasks), _Ledger(out_dir), \
            callback, retries
        self.values: dict[str, Any] = {}
        self.attempts = {k: 0 for k in keys}
        self.failures: dict[str, list[str]] = {k: [] for k in keys}
        self.failed: dict[str, str] = {}
        self.skipped: list[str] = []
        self.todo: list[Task] = []
        for task in self.tasks:
            found, value = self.ledger.done(task.key)
            if found:
                self.values[task.key] = value
                self.skipped.append(task.key)
            else:
                self.todo.append(task)
        if self.tasks:
            callback("start", total=len(self.tasks), unit="run", description=description)
        if self.skipped:
            callback("advance", n=len(self.skipped))
            callback("log", message=f"{len(self.skipped)} of {len(self.tasks)} runs already "
                     f"finished in {out_dir}: skipped")

    def started(self, task: Task) -> None:
        self.attempts[task.key] += 1

    def succeeded(self, task: Task, value: Any) -> None:
        self.values[task.key] = self.ledger.finish(task.key, value, self.attempts[task.key],
                                                   self.failures[task.key])
        self.callback("advance", n=1)

    def errored(self, task: Task, error: BaseException) -> bool:
        """Records a failed attempt; True when the task should be retried."""
        died = isinstance(error, WorkerDied)
        text = f"{type(error).__name__}: {error}"
        if not died:
            text += "\n" + "".join(traceback.format_exception(error)[-3:])
        self.failures[task.key].append(text)
        retry = died and self.attempts[task.key] <= self.retries
        self.callback("log", message=f"run {task.key}: attempt {self.attempts[task.key]} failed "
                      f"({type(error).__name__}: {error}){'; retrying' if retry else ''}")
        if not retry:
            self.failed[task.key] = text
            self.ledger.fail(task.key, self.attempts[task.key], self.failures[task.key])
            self.callback("advance", n=1)
        return retry

    def result(self) -> SweepResult:
        if self.tasks:
            self.callback("end")
        ordered = {t.key: self.values[t.key] for t in self.tasks if t.key in self.values}
        return SweepResult(ordered, dict(self.attempts), dict(self.failed), list(self.skipped))


# ---- executors ----------------------------------------------------------------------------
@dataclass
class Serial:
    """One task after another in this process (a dying worker here is this process: no retry)."""

    retries: int = 1
    name: str = "serial"

    def map(self, tasks: Sequence[Task], out_dir: str | Path | None = None,
            callback: Callback = null_callback) -> SweepResult:
        sweep = _Sweep(tasks, out_dir, callback, self.retries, "serial")
        for task in sweep.todo:
            sweep.started(task)
            try:
                value = run_task(task.fn, task.kwargs, task.num_cpus)
            except Exception as err:  # noqa: BLE001 - recorded; the sweep goes on
                sweep.errored(task, err)
                continue
            sweep.succeeded(task, value)
        return sweep.result()


@dataclass
class Local:
    """A `ProcessPoolExecutor` of `workers` processes (forkserver where available, else spawn:
    no fork of a process holding torch's threads), at most `workers` tasks in flight so that a
    broken pool charges only the tasks that were running."""

    workers: int
    retries: int = 1
    name: str = "local"

    def map(self, tasks: Sequence[Task], out_dir: str | Path | None = None,
            callback: Callback = null_callback) -> SweepResult:
        sweep = _Sweep(tasks, out_dir, callback, self.retries, f"local x{self.workers}")
        queue = list(sweep.todo)
        while queue:
            queue = self._run_pool(sweep, queue)
        return sweep.result()

    def _run_pool(self, sweep: _Sweep, queue: list[Task]) -> list[Task]:
        """Runs `queue` on one pool until it is empty or the pool breaks; returns the tasks
        still to run (those in flight when it broke that may be retried, then the rest)."""
        queue = list(queue)
        context = _context()
        running: dict[Future, Task] = {}
        with ProcessPoolExecutor(self.workers, mp_context=context) as pool:
            while queue or running:
                while queue and len(running) < self.workers:
                    task = queue.pop(0)
                    sweep.started(task)
                    running[pool.submit(run_task, task.fn, task.kwargs, task.num_cpus)] = task
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                broken = _harvest(sweep, {f: running.pop(f) for f in finished})
                if broken:
                    # The pool is dead: what else was in flight either finished or died too.
                    broken += _harvest(sweep, running)
                    died = WorkerDied("a worker process of the local pool died")
                    return [t for t in broken if sweep.errored(t, died)] + queue
        return []


def _harvest(sweep: _Sweep, futures: Mapping[Future, Task]) -> list[Task]:
    """Records the outcome of each future (waiting for it); returns the tasks whose pool broke
    under them."""
    broken = []
    for future, task in futures.items():
        error = future.exception()
        if error is None:
            sweep.succeeded(task, future.result())
        elif isinstance(error, BrokenProcessPool):
            broken.append(task)
        else:
            sweep.errored(task, error)
    return broken


@dataclass
class Ray:
    """Ray tasks, each with its `num_cpus` / `num_gpus`; a local Ray instance of `workers` CPUs
    is started (and shut down after the sweep) unless `address` joins a running cluster or Ray
    is already initialised. Worker deaths arrive as Ray's WorkerCrashedError (Ray's own retries
    are off so that each attempt is recorded here)."""

    workers: int | None = None
    address: str | None = None
    retries: int = 1
    name: str = "ray"

    def map(self, tasks: Sequence[Task], out_dir: str | Path | None = None,
            callback: Callback = null_callback) -> SweepResult:
        ray = _import_ray()
        owned = not ray.is_initialized()
        if owned:
            _init_ray(ray, self.workers, self.address)
        try:
            sweep = _Sweep(tasks, out_dir, callback, self.retries,
                           f"ray {self.address or 'local'}")
            remote = ray.remote(max_retries=0)(run_task)
            pending: dict[Any, Task] = {}
            for task in sweep.todo:
                pending[self._submit(remote, sweep, task)] = task
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready[0])
                try:
                    sweep.succeeded(task, ray.get(ready[0]))
                except Exception as err:  # noqa: BLE001 - recorded; the sweep goes on
                    if sweep.errored(task, _ray_error(ray, err)):
                        pending[self._submit(remote, sweep, task)] = task
            return sweep.result()
        finally:
            if owned:
                ray.shutdown()

    @staticmethod
    def _submit(remote: Any, sweep: _Sweep, task: Task) -> Any:
        sweep.started(task)
        return remote.options(num_cpus=task.num_cpus, num_gpus=task.num_gpus).remote(
            task.fn, dict(task.kwargs), task.num_cpus)


def _context() -> multiprocessing.context.BaseContext:
    """forkserver (torch imported once, in the server, and forked from there: cheap worker
    starts and restarts) where available, else spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["boltzkit.app.executors"])
    return context


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError('--executor ray needs Ray: pip install -e ".[ray]"') from None
    return ray


def _init_ray(ray: Any, workers: int | None, address: str | None) -> None:
    """Starts a local instance (its workers find boltzkit on this process's sys.path) or joins
    the cluster at `address` (whose nodes must have boltzkit installed)."""
    if address is not None:
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")


def _ray_error(ray: Any, err: BaseException) -> BaseException:
    """Ray's worker-death errors as WorkerDied; a task's own exception unwrapped."""
    deaths = tuple(getattr(ray.exceptions, name) for name in (
        "WorkerCrashedError", "NodeDiedError", "OutOfMemoryError") if hasattr(ray.exceptions,
                                                                               name))
    if isinstance(err, deaths):
        return WorkerDied(f"the Ray worker died ({type(err).__name__})")
    if isinstance(err, ray.exceptions.RayTaskError):
        cause = err.as_instanceof_cause()
        return cause if isinstance(cause, Exception) else err
    return err
