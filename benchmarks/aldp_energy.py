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

With `--baseline REV` (a git revision), also the kernel alone (`fused.energy_and_grad`, one
thread, 20,000 configurations, CPU time per configuration, median of --repeats rounds that
alternate the kernels) for this tree's kernel and the one `forcefield_fused.cpp` had at REV,
built with the same flags: a before/after comparison measured under the same load; and this
tree's kernel without the GB term and without the torsions (what each term costs).

    python benchmarks/aldp_energy.py [--threads 2] [--repeats 3] [--target aldp] [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import torch

from boltzkit.targets.molecules import MolecularTarget, aldp, aldp_fab, fused
from boltzkit.targets.molecules.parameters import ForceField

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


def baseline_kernel(rev: str) -> ModuleType:
    """The kernel source at git revision `rev`, built under its own extension name."""
    root = Path(__file__).resolve().parents[1]
    path = "src/boltzkit/targets/molecules/forcefield_fused.cpp"
    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=root, check=True,
                         capture_output=True, text=True).stdout.strip()
    file = Path(tempfile.mkdtemp()) / f"forcefield_baseline_{sha}.cpp"
    file.write_text(source)
    return fused.compile_kernel(f"boltzkit_forcefield_baseline_{sha}", file)


def kernel_costs(name: str, kernels: dict[str, ModuleType], repeats: int,
                 n: int = 20_000) -> dict[tuple[str, str], float]:
    """{(kernel, dtype): microseconds of CPU time per configuration} on one thread, the
    median of `repeats` rounds that alternate the kernels (so that they share the load)."""
    t = {"aldp": aldp, "aldp-fab": aldp_fab}[name](backend="torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[tuple[str, str], list[float]] = {}
    for dtype in (torch.float32, torch.float64):
        x = inputs(t, n, dtype).view(n, t.n_particles, 3)
        ff = t._forcefield_for(x.device, dtype)
        cases = [(label, module, ff) for label, module in kernels.items()]
        # the last kernel without a term: what that term costs, in the same rounds
        label, module = list(kernels.items())[-1]
        cases += [(f"{label} without {term}", module, part)
                  for term, part in without_terms(ff).items()]
        for _ in range(repeats):
            for label, module, field in cases:
                def call(m: ModuleType = module, x: torch.Tensor = x, f: object = field) -> object:
                    return fused.energy_and_grad(m, x, f, True)
                cpu = seconds(call, 1)[1]
                out.setdefault((label, str(dtype)[6:]), []).append(cpu / n * 1e6)
    torch.set_num_threads(threads)
    return {key: statistics.median(v) for key, v in out.items()}


def without_terms(ff: ForceField) -> dict[str, ForceField]:
    """The force field without its GB term, and without its torsions."""
    none = ff.torsions[:0]
    return {"GB": replace(ff, gb=None),
            "torsions": replace(ff, torsions=none, torsion_n=ff.torsion_n[:0],
                                torsion_phase=ff.torsion_phase[:0], torsion_k=ff.torsion_k[:0])}


def kernel_table(costs: dict[tuple[str, str], float]) -> str:
    lines = ["| kernel | float32 us/config | float64 us/config |", "|---|---|---|"]
    for label in dict.fromkeys(k for k, _ in costs):
        lines.append(f"| {label} | {costs[label, 'float32']:.2f} | "
                     f"{costs[label, 'float64']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", default="aldp", choices=["aldp", "aldp-fab"])
    parser.add_argument("--baseline", default=None, help="git revision of a kernel to compare")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels = {}
    if args.baseline:  # built before the clock starts
        kernels = {f"kernel at {args.baseline}": baseline_kernel(args.baseline),
                   "this tree's kernel": fused.kernel()}
    before = load()
    results = rows(args.target, args.threads, args.repeats)
    costs = kernel_costs(args.target, kernels, args.repeats) if kernels else {}
    print(f"command: python {' '.join(sys.argv)}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; target {args.target}; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {args.threads} threads; "
          f"load average before / after: {before} / {load()}")
    print(table(results, args.threads))
    if costs:
        print("\nkernel only, 1 thread, CPU time per configuration:")
        print(kernel_table(costs))


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


if __name__ == "__main__":
    main()
