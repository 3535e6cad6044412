"""Executors: wall time of one amc-gmm sweep serially, on a local process pool and on Ray, and
the executors' start-up and overhead per task.

1. The sweep `boltzkit experiment amc-gmm --set preset=acceptance --set seeds=0,1,2,3,4 --set
   n_particles=4000 --set figures=false` (two-modes d = 32, every kernel, 5 seeds: 45
   independent runs of about 0.6 s each) with `--executor serial`, `local` and `ray` at
   `--workers` workers, in `--rounds` interleaved rounds (serial, local, ray, serial, ...) so
   that a change in the load of a shared machine hits all three alike; the minimum and the
   median of the rounds are shown. One more round at 1 worker gives the scaling. Ray runs on
   one instance started beforehand: its start-up (`ray.init`) is shown on its own row. Each
   sweep writes into a fresh directory, so none is skipped.
2. Start-up and overhead per task: n = 8 and n = 24 tasks that sleep 1 s each on W workers;
   wall(n) = start-up + (n / W) (1 s + overhead), so overhead = W (wall(24) - wall(8)) / 16 - 1
   and start-up = wall(8) - 8 (1 + overhead) / W. Sleeping tasks do not compete for the CPU, so
   these are the executor's own costs even on a loaded machine. The overhead does not grow
   with the task's length: for 60 s tasks it is the same seconds over 60 s of work.

3. `--task-seconds 1,60 --overhead-only`: the overhead per task measured at each task length
   L (instead of extrapolated from 1 s): sweeps of k W and 2 k W tasks sleeping L s each on
   W workers of an executor already started and warmed up (k = max(1, round(10 / L))):
   wall(n) = start-up + (n / W)(L + overhead), so overhead = (wall(2kW) - wall(kW)) / k - L
   and start-up = wall(kW) - k (L + overhead).
   Skips the sweeps of 1.

Prints a markdown table (BENCHMARKS.md, "Executors") with the machine and its load average.

    python benchmarks/executors.py [--workers 2] [--rounds 3] [--skip-ray]
    python benchmarks/executors.py --workers 2 --overhead-only --task-seconds 1,60
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from boltzkit.app import executors
from boltzkit.experiments import amc_gmm

SWEEP = ["preset=acceptance", "seeds=0,1,2,3,4", "n_particles=4000", "figures=false"]


def quiet(event: str, **info: object) -> None:
    """Ignores every event."""


def sleep_task(seconds: float) -> float:
    """A task that waits `seconds` without using the CPU."""
    time.sleep(seconds)
    return seconds


def time_sweep(executor: executors.Executor) -> float:
    """Wall seconds of the amc-gmm sweep on `executor`."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        amc_gmm.run(Path(out), SWEEP, quiet, executor=executor)
        return time.perf_counter() - start


def costs(executor: executors.Executor, workers: int) -> tuple[float, float]:
    """(start-up s, overhead s per task) from sweeps of 8 and 24 one-second tasks."""
    walls = []
    for n in (8, 24):
        tasks = [executors.Task(f"sleep{i}", sleep_task, {"seconds": 1.0}) for i in range(n)]
        start = time.perf_counter()
        executor.map(tasks)
        walls.append(time.perf_counter() - start)
    overhead = workers * (walls[1] - walls[0]) / 16 - 1.0
    return walls[0] - 8 * (1.0 + overhead) / workers, overhead


def costs_at(executor: executors.Executor, workers: int, seconds: float
             ) -> tuple[float, float]:
    """(start-up s, overhead s per task) from sweeps of k W and 2 k W tasks of `seconds` each
    (k = max(1, round(10 / seconds)): at least about 10 s of work per worker, so that short
    tasks are timed over many), after an untimed sweep of W empty tasks (the pool's
    forkserver, Ray's worker processes and their imports are one-time costs, not the
    per-sweep start-up)."""
    executor.map([executors.Task(f"warm{i}", sleep_task, {"seconds": 0.0})
                  for i in range(workers)])
    k, walls = max(1, round(10 / seconds)), []
    for n in (k * workers, 2 * k * workers):
        tasks = [executors.Task(f"sleep{i}", sleep_task, {"seconds": seconds}) for i in range(n)]
        start = time.perf_counter()
        executor.map(tasks)
        walls.append(time.perf_counter() - start)
    overhead = (walls[1] - walls[0]) / k - seconds
    return walls[0] - k * (seconds + overhead), overhead


def overhead_rows(names: list[str], made: dict[str, executors.Executor], workers: int,
                  lengths: list[float]) -> list[tuple[str, str, str]]:
    """Start-up and overhead per task of each parallel executor at each task length."""
    rows = []
    for name in names:
        for seconds in lengths:
            start_up, overhead = costs_at(made[name], workers, seconds)
            print(name, seconds, f"{start_up:.3f} {overhead:.4f}", flush=True)
            rows.append((f"{name}, {seconds:g} s tasks: start-up / overhead per task",
                         f"{start_up:.3f} / {overhead:.4f}",
                         f"{100 * overhead / seconds:.2f}% of a task"))
    return rows


def scaling_rows(names: list[str], made: dict[str, executors.Executor], w: int,
                 rounds: int) -> list[tuple[str, str, str]]:
    """The amc-gmm sweep on each executor in interleaved rounds, the 1 s task costs, and one
    round at one worker (Ray restarted with one CPU)."""
    rows = []
    walls: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            walls[name].append(time_sweep(made[name]))
            print(name, f"{walls[name][-1]:.2f}", flush=True)
    serial = min(walls["serial"])
    for name in names:
        best, median = min(walls[name]), statistics.median(walls[name])
        rows.append((f"{name}({w if name != 'serial' else 1})",
                     f"{best:.2f} / {median:.2f}", f"{best / serial:.2f} / "
                     f"{median / statistics.median(walls['serial']):.2f}"))
    for name in names[1:]:
        start_up, overhead = costs(made[name], w)
        rows.append((f"{name}: start-up / overhead per task", f"{start_up:.2f} / "
                     f"{overhead:.3f}", ""))
    single = time_sweep(executors.make("local", 1))
    rows.append(("local(1)", f"{single:.2f}", f"{single / serial:.2f}"))
    if "ray" in names:
        import ray

        ray.shutdown()
        ray_init(ray, 1)
        single = time_sweep(executors.make("ray", 1))
        rows.append(("ray(1)", f"{single:.2f}", f"{single / serial:.2f}"))
    return rows


def ray_init(ray: object, n_cpus: int) -> float:
    start = time.perf_counter()
    ray.init(num_cpus=n_cpus, include_dashboard=False, log_to_driver=False,  # type: ignore
             logging_level="ERROR")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--task-seconds", default="1,60")
    args = parser.parse_args()
    w = args.workers
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average at start {os.getloadavg()[0]:.1f}", flush=True)
    names = ["serial", "local"] + ([] if args.skip_ray else ["ray"])
    made = {"serial": executors.make("serial"), "local": executors.make("local", w)}
    rows: list[tuple[str, str, str]] = []
    if not args.skip_ray:
        import ray

        made["ray"] = executors.make("ray", w)
        rows.append(("ray start-up (ray.init)", f"{ray_init(ray, w):.2f}", ""))
    if args.overhead_only:
        lengths = [float(v) for v in args.task_seconds.split(",")]
        rows += overhead_rows(names[1:], made, w, lengths)
    else:
        rows += scaling_rows(names, made, w, args.rounds)
    if not args.skip_ray:
        ray.shutdown()
    print(f"load average at end {os.getloadavg()[0]:.1f}\n")
    print("| executor (workers) | wall (s), min / median | x serial, min / median |\n"
          "|---|---|---|")
    for name, seconds, ratio in rows:
        print(f"| {name} | {seconds} | {ratio} |")


if __name__ == "__main__":
    main()
