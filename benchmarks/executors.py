"""Executors: wall time of one amc-gmm sweep serially, on a local process pool and on Ray, and
Ray's (and the pool's) overhead per task.

1. The sweep `boltzkit experiment amc-gmm --set preset=acceptance --set seeds=0,...,9 --set
   n_particles=4000 --set figures=false` (two-modes d = 32, every kernel, 10 seeds: 90
   independent runs of about 0.7 s each, about a minute serially) with `--executor serial`,
   `local` at 1 and 2 workers and `ray` at 1 and 2 CPUs (Ray's start-up included, as a user
   sees it; measured separately too). Each sweep writes into a fresh directory, so none is skipped.
2. Overhead per task: `n_tasks` tasks that sleep 1 s each on 2 workers; overhead per task =
   (wall x workers - n_tasks x 1 s) / n_tasks, Ray's start-up excluded. Sleeping tasks do not
   compete for the CPU, so the figure is the executor's own cost even on a loaded machine. The
   overhead of 60 s tasks is this per-task cost (it does not grow with the task's length), i.e.
   the same seconds over 60 s of work.

Prints a markdown table (BENCHMARKS.md, "Executors") with the machine and its load average,
which matters on a shared machine.

    python benchmarks/executors.py [--workers 2] [--overhead-tasks 16] [--skip-ray]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from boltzkit.app import executors
from boltzkit.experiments import amc_gmm

SWEEP = ["preset=acceptance", "seeds=0,1,2,3,4,5,6,7,8,9", "n_particles=4000", "figures=false"]


def quiet(event: str, **info: object) -> None:
    """Ignores every event."""


def sleep_task(seconds: float) -> float:
    """A task that waits `seconds` without using the CPU."""
    time.sleep(seconds)
    return seconds


def time_sweep(executor: executors.Executor) -> tuple[float, int]:
    """Wall seconds of the amc-gmm sweep on `executor`, and its number of runs."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        headline = amc_gmm.run(Path(out), SWEEP, quiet, executor=executor)
        return time.perf_counter() - start, int(headline["n_runs"])


def overhead(executor: executors.Executor, n_tasks: int, workers: int) -> float:
    """Seconds per task beyond the 1 s of work, on `workers` workers."""
    tasks = [executors.Task(f"sleep{i}", sleep_task, {"seconds": 1.0}) for i in range(n_tasks)]
    start = time.perf_counter()
    executor.map(tasks)
    wall = time.perf_counter() - start
    return (wall * workers - n_tasks * 1.0) / n_tasks


def ray_rows(workers: int, n_tasks: int) -> list[tuple[str, float, str]]:
    """Ray's start-up, sweeps at 1 and `workers` CPUs, and overhead per task (one instance)."""
    import ray

    rows = []
    for n in sorted({1, workers}):
        wall, n_runs = time_sweep(executors.make("ray", n))
        rows.append((f"ray({n}), start-up included", wall, f"{n_runs} runs"))
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    rows.append(("ray start-up (ray.init)", time.perf_counter() - start, ""))
    try:
        rows.append((f"ray overhead per 1 s task ({workers} CPUs)",
                     overhead(executors.make("ray", workers), n_tasks, workers),
                     f"{n_tasks} tasks"))
    finally:
        ray.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overhead-tasks", type=int, default=16)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    w = args.workers
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at start {os.getloadavg()[0]:.1f}")
    serial, n_runs = time_sweep(executors.make("serial"))
    rows = [("serial", serial, f"{n_runs} runs")]
    for n in sorted({1, w}):
        rows.append((f"local({n})", time_sweep(executors.make("local", n))[0], ""))
    rows.append((f"local overhead per 1 s task ({w} workers)",
                 overhead(executors.make("local", w), args.overhead_tasks, w),
                 f"{args.overhead_tasks} tasks"))
    if not args.skip_ray:
        rows += ray_rows(w, args.overhead_tasks)
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    print("| executor | wall (s) | x serial | |\n|---|---|---|---|")
    for name, seconds, note in rows:
        ratio = f"{seconds / serial:.2f}" if "overhead" not in name and "init" not in name \
            else ""
        print(f"| {name} | {seconds:.2f} | {ratio} | {note} |")


if __name__ == "__main__":
    main()
