"""Equal-budget baselines on alanine dipeptide (`aldp-fab` or `aldp`, 300 K): PT, MALA, HMC, MD.

Each method gets the same number of force evaluations (--budget): PT, MALA and HMC through
`boltzkit.samplers.mcmc` with the target's preset (energy + gradient per chain step; on `aldp`
the chains move its free internal coordinates, `targets.molecules.constrained`, and their
samples are mapped back to Cartesian frames), MD as OpenMM Langevin steps (one force evaluation
each; `aldp-fab` 0.5 fs without constraints, `aldp` 2 fs with its H-bond constraints; frames
every 500 steps). Each result is compared by `boltzkit.evaluate.evaluation.evaluate` with the
largest cached MD reference of the target (`boltzkit reference TARGET`), and
the table gives the Ramachandran KL/TV and circular phi W1 with their reference-split noise
floors, the reduced-energy W1 (kT), the phi > 0 and D-alanine fractions and the wall time.
Prints a markdown table with the command, date and machine (BENCHMARKS.md, "Alanine dipeptide
equal budget").

    python benchmarks/aldp_equal_budget.py [--target aldp-fab] [--budget 500000]
        [--n-samples 1000] [--seed 0] [--methods pt,mala,hmc,md]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from boltzkit.app import reference as references
from boltzkit.app.md_reference import MDConfig, run_md
from boltzkit.app.runner import sampling_space, to_target_space
from boltzkit.evaluate.evaluation import evaluate
from boltzkit.samplers import mcmc
from boltzkit.targets.molecules import aldp, aldp_fab

TARGETS = {"aldp-fab": aldp_fab, "aldp": aldp}

COLUMNS = ("ramachandran_kl_ref_to_samples_30x30_nats", "ramachandran_tv_30x30",
           "phi_w1_circular_rad", "energy_w1")


def run_mcmc(target_name: str, name: str, budget: int, n_samples: int, seed: int
             ) -> tuple[torch.Tensor, float]:
    target = TARGETS[target_name]()
    space = sampling_space(target)
    torch.manual_seed(seed)
    began = time.perf_counter()
    result = mcmc.sample(space, mcmc.preset(target_name, sampler=name), n_samples=n_samples,
                         budget=budget)
    return to_target_space(space, target, result.samples), time.perf_counter() - began


def run_plain_md(target_name: str, budget: int, seed: int) -> tuple[torch.Tensor, float]:
    steps_per_frame = 500
    n_equilibration = budget // 10
    n_frames = (budget - n_equilibration) // steps_per_frame
    md = run_md(TARGETS[target_name](), MDConfig(
        n_frames=n_frames, steps_per_frame=steps_per_frame,
        n_equilibration_steps=n_equilibration, seed=seed + 1))
    return md.positions, md.wall_s


def row(target_name: str, label: str, x: torch.Tensor, wall_s: float, ref: torch.Tensor,
        seed: int) -> str:
    m = evaluate(x, TARGETS[target_name](), reference=ref,
                 generator=torch.Generator().manual_seed(seed))
    cells = [f"{m[k]:.3g} ({m[k + '_floor']:.2g})" for k in COLUMNS]
    return (f"| {label} | {len(x):,} | " + " | ".join(cells)
            + f" | {m['phi_positive_fraction']:.3f} | {m['d_alanine_fraction']:.2f} "
            f"| {wall_s:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="aldp-fab", choices=sorted(TARGETS))
    parser.add_argument("--budget", type=int, default=500_000)
    parser.add_argument("--n-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="pt,mala,hmc,md",
                        help="comma-separated subset of pt, mala, hmc, md")
    args = parser.parse_args()
    methods = args.methods.split(",")
    path = references.cached_path(args.target, TARGETS[args.target]())
    if path is None:
        sys.exit(f"no cached {args.target} reference: run `boltzkit reference {args.target}` "
                 "first")
    ref = references.load(path).samples
    print(f"Command: `python benchmarks/aldp_equal_budget.py --target {args.target} "
          f"--budget {args.budget} "
          f"--n-samples {args.n_samples} --seed {args.seed}`; date: "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}; reference: {path.name} ({len(ref):,} MD "
          "frames)\n")
    print("| method | samples | Rama KL (floor) | Rama TV (floor) | phi W1 rad (floor) "
          "| energy W1 kT (floor) | phi > 0 | D-Ala | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("pt", "mala", "hmc"):
        if name in methods:
            x, wall = run_mcmc(args.target, name, args.budget, args.n_samples, args.seed)
            print(row(args.target, name, x, wall, ref, args.seed), flush=True)
    if "md" in methods:
        x, wall = run_plain_md(args.target, args.budget, args.seed)
        step = "2 fs, constrained" if args.target == "aldp" else "0.5 fs"
        print(row(args.target, f"MD (Langevin, {step})", x, wall, ref, args.seed), flush=True)


if __name__ == "__main__":
    main()
