"""Energy + force throughput on alanine dipeptide: the torch backend vs the OpenMM context loop.

For `aldp` (or `--target aldp-fab`): configurations per second of `log_prob_and_score` (energy
and forces), the median of --repeats calls after one warm-up call, on --threads threads:
- the torch backend in float32 and float64: its compiled kernel at batches of 1e3, 1e4 and 1e5,
  its tensor-op path with autograd forces (`target.fused = False`) at 1e3 and 1e4;
- the OpenMM loop (`backend=openmm`: one CPU-platform context per thread, `setPositions` +
  `getState` per configuration) on 1 and --threads threads at 1e3 and 1e4 (it is linear in the
  batch).
Inputs: the PDB structure plus 0.01 nm Gaussian noise (the cost does not depend on the values).
Reports configurations per wall-clock second and per CPU second (the process's CPU time, all
threads): on a shared, loaded machine the second is the stable measure of cost. Prints a
markdown table with the command, date, machine and load average (BENCHMARKS.md, "Alanine
dipeptide energy throughput").

    python benchmarks/aldp_energy.py [--threads 2] [--repeats 3] [--target aldp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from boltzkit.targets.molecules import MolecularTarget, aldp, aldp_fab

BATCHES = (1_000, 10_000, 100_000)
OPENMM_BATCHES = AUTOGRAD_BATCHES = (1_000, 10_000)


def seconds(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `repeats` calls after one warm-up call; CPU time is the
    process's, summed over its threads (OpenMM's and torch's)."""
    call()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def inputs(t: MolecularTarget, n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (t.positions + 0.01 * torch.randn(n, t.dim, generator=g, dtype=torch.float64)).to(dtype)


def rate(t: MolecularTarget, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Configurations of energy + forces per wall-clock second and per CPU second."""
    wall, cpu = seconds(lambda: t.log_prob_and_score(x), repeats)
    return len(x) / wall, len(x) / cpu


def loop_label(workers: int) -> str:
    return f"OpenMM loop, {workers} thread{'s' * (workers > 1)}"


def rows(name: str, threads: int, repeats: int) -> list[tuple[str, int, tuple[float, float]]]:
    """(path, batch, (configurations per wall second, per CPU second)) for every case."""
    make = {"aldp": aldp, "aldp-fab": aldp_fab}[name]
    out = []
    for dtype in (torch.float32, torch.float64):
        t = make(backend="torch")
        out += [(f"torch {str(dtype)[6:]}, fused kernel", n, rate(t, inputs(t, n, dtype), repeats))
                for n in BATCHES]
        t.fused = False
        out += [(f"torch {str(dtype)[6:]}, tensor ops + autograd", n,
                 rate(t, inputs(t, n, dtype), 1)) for n in AUTOGRAD_BATCHES]
    for workers in sorted({1, threads}):
        t = make(backend="openmm")
        t.pool.n_workers = workers
        out += [(loop_label(workers), n, rate(t, inputs(t, n, torch.float64), 1))
                for n in OPENMM_BATCHES]
    return out


def table(results: list[tuple[str, int, tuple[float, float]]], threads: int) -> str:
    """Markdown rows; the ratios are to the best OpenMM-loop row at `threads` threads (wall)
    and to the best OpenMM-loop row per CPU second."""
    loop_wall = max(r[0] for p, _, r in results if p == loop_label(threads))
    loop_cpu = max(r[1] for p, _, r in results if p.startswith("OpenMM"))
    lines = ["| path | batch | configs/s (wall) | x loop (wall) | configs per CPU-s | "
             "x loop (CPU) |", "|---|---|---|---|---|---|"]
    for path, n, (wall, cpu) in results:
        lines.append(f"| {path} | {n:,} | {wall:,.0f} | {wall / loop_wall:.1f} | {cpu:,.0f} | "
                     f"{cpu / loop_cpu:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", default="aldp", choices=["aldp", "aldp-fab"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    before = load()
    results = rows(args.target, args.threads, args.repeats)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; target {args.target}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} threads; "
          f"load average before / after: {before} / {load()}")
    print(table(results, args.threads))


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
