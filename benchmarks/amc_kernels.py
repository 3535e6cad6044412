"""Wall time and evaluations of diffusion annealed MC per denoising kernel.

1. The acceptance run of `boltzkit experiment amc-gmm --set preset=acceptance` for one seed:
   perfect model, two-modes d = 32, a = 3, N = 2000, 32 levels uniform in log-SNR (VP schedule),
   systematic resampling at ESS/N < 0.5, every kernel.
2. A 10,000-particle run in d = 128 with the second-order kernel and the analytic posterior
   covariance (low-rank form for the shared-covariance mixture).

Prints a markdown table (BENCHMARKS.md, "Diffusion annealed MC") with the machine's load
average, which matters on a shared machine.

    python benchmarks/amc_kernels.py [--threads 2] [--skip-large]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from boltzkit.diffusion.kernels import KERNELS
from boltzkit.diffusion.schedules import PerfectModel, VPSchedule
from boltzkit.experiments.amc_gmm import Config, run_one
from boltzkit.targets.mixtures import two_modes


def bench(d: int, n_particles: int, kernels: list[str], seed: int) -> list[dict[str, object]]:
    target, cfg = two_modes(d, 3.0), Config(n_particles=n_particles)
    rows = []
    for kernel in kernels:
        start = time.perf_counter()
        row, _ = run_one(target, PerfectModel(target, VPSchedule()), kernel, False, seed, cfg)
        rows.append({"d": d, "N": n_particles, "kernel": kernel, **row,
                     "total_s": time.perf_counter() - start})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = bench(32, 2000, list(KERNELS), args.seed)
    if not args.skip_large:
        rows += bench(128, 10_000, ["second-order"], args.seed)
    load_after = os.getloadavg()
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or '?'}, "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"(1 min; {os.cpu_count()} CPUs)\n")
    print("| d | N | kernel | wall (s) | target evals | model evals | JVPs | min ESS/N "
          "| mode-weight err (pp) | abs log Z err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['d']} | {r['N']} | {r['kernel']} | {r['wall_s']:.2f} | {r['n_target']} | "
              f"{r['n_net']} | {r['n_jvp']:.3g} | {r['min_ess_fraction']:.3f} | "
              f"{r['mode_weight_error_pp']:.2f} | {r['abs_log_Z_error']:.4f} |")


if __name__ == "__main__":
    main()
