"""Energy + gradient throughput of the particle targets: analytic fast path vs autograd.

dw4, lj13, lj55 at batch 1024 and 65536, and LJ-13 at 512,000 configurations (the issue's goal:
<= 3.3 s on 2 cores): seconds per `log_prob_and_score` call, the median of --repeats calls after
one warm-up call, and configurations per second; beside them the base-class autograd path
(`Target.log_prob_and_score`, called on chunks of at most 65,536 configurations to bound its
memory) and the speed-up. Inputs are random COM-free configurations (the cost does not depend on
the values). Prints a markdown table with the command, date, machine (CPUs, torch threads) and
load average (BENCHMARKS.md, "Energy throughput"). The autograd rows dominate the run time
(about 20 minutes on a loaded 2-core machine, most of it LJ-55 at 65,536); `--cases` runs a subset.

    python benchmarks/energy_throughput.py [--threads 2] [--repeats 5] [--dtypes float32,float64]
        [--cases lj13:512000,dw4:1024]
    python benchmarks/energy_throughput.py --sweep-chunks   # configurations/s vs chunk size
    python benchmarks/energy_throughput.py --compile        # torch.compile of the chunk kernel
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from boltzkit import targets
from boltzkit.targets import particles
from boltzkit.targets.base import Target

CASES = [("dw4", 1024), ("dw4", 65536), ("lj13", 1024), ("lj13", 65536), ("lj13", 512_000),
         ("lj55", 1024), ("lj55", 65536)]
AUTOGRAD_CHUNK = 65536


def configurations(target: Target, n: int, dtype: torch.dtype) -> Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, target.dim, generator=g, dtype=dtype)
    return target.remove_com(x * target.n_particles ** (1 / target.spatial_dim))


def seconds(call: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def autograd_path(target: Target, x: Tensor) -> None:
    for chunk in x.split(AUTOGRAD_CHUNK):
        Target.log_prob_and_score(target, chunk)


def throughput_table(cases: list[tuple[str, int]], dtypes: list[torch.dtype],
                     repeats: int) -> None:
    print("| target | dtype | batch | analytic s/call | analytic conf/s | autograd s/call "
          "| autograd conf/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in dtypes:
        for name, n in cases:
            target = targets.get(name)
            x = configurations(target, n, dtype)
            fast = seconds(lambda t=target, x=x: t.log_prob_and_score(x), repeats)
            slow = seconds(lambda t=target, x=x: autograd_path(t, x), repeats)
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {n:,} | {fast:.4f} | "
                  f"{n / fast:,.0f} | {slow:.4f} | {n / slow:,.0f} | {slow / fast:.1f} |",
                  flush=True)


def chunk_sweep(repeats: int) -> None:
    """Configurations/s of the fast path against `_CHUNK_ELEMENTS` (float32)."""
    exponents = range(15, 23)
    print("| target | batch | " + " | ".join(f"2^{k}" for k in exponents) + " |")
    print("|---|---|" + "---|" * len(exponents))
    for name, n in [("dw4", 65536), ("lj13", 65536), ("lj55", 8192)]:
        target = targets.get(name)
        x = configurations(target, n, torch.float32)
        n_pairs = target.n_particles * (target.n_particles - 1) // 2
        cells = []
        for k in exponents:
            target.chunk_size = max(64, 2**k // (n_pairs * target.spatial_dim))
            wall = seconds(lambda t=target, x=x: t.log_prob_and_score(x), repeats)
            cells.append(f"{n / wall:,.0f}")
        print(f"| {name} | {n:,} | " + " | ".join(cells) + " |", flush=True)


def compiled(repeats: int) -> None:
    """torch.compile of the per-chunk kernel on LJ-13, float32, batch 65536."""
    target = targets.get("lj13")
    x = configurations(target, 65536, torch.float32)
    eager = seconds(lambda: target.log_prob_and_score(x), repeats)
    try:
        start = time.perf_counter()
        target._chunk = torch.compile(target._chunk, dynamic=False)
        target.log_prob_and_score(x)
        compile_s = time.perf_counter() - start
        comp = seconds(lambda: target.log_prob_and_score(x), repeats)
    except Exception as err:  # report, whatever the backend's failure
        print(f"torch.compile failed: {type(err).__name__}: {str(err)[:300]}")
        return
    print("| LJ-13 float32, batch 65,536 | eager | torch.compile |\n|---|---|---|")
    print(f"| s/call | {eager:.4f} | {comp:.4f} |\n| first call incl. compile (s) | - | "
          f"{compile_s:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--cases", default=",".join(f"{name}:{n}" for name, n in CASES))
    parser.add_argument("--sweep-chunks", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"`python {' '.join(sys.argv)}`, {time.strftime('%Y-%m-%d %H:%M %Z')}: "
          f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, _CHUNK_ELEMENTS = "
          f"2^{particles._CHUNK_ELEMENTS.bit_length() - 1}, load average "
          f"{os.getloadavg()[0]:.1f} (1 min) at the start\n")
    if args.sweep_chunks:
        chunk_sweep(args.repeats)
    elif args.compile:
        compiled(args.repeats)
    else:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
        throughput_table(cases, [getattr(torch, d) for d in args.dtypes.split(",")], args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.1f} (1 min) at the end")


if __name__ == "__main__":
    main()
