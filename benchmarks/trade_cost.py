"""Training cost of TRADE against a single-temperature flow of the same size.

Target tempered-gmm-2d, data at T = 1, the flow of `boltzkit experiment trade-gmm` (spline
coupling, latent temperature scaling). Methods: "single-T" (NLL at T = 1, the transforms blind
to T: the latent-NLL baseline), "trade-free" and "trade-grid" (NLL + propagation loss from the
first step, warmup 0, i.e. the full per-step cost throughout). Reported per method and thread
count: median seconds per step, and the wall time until the held-out NLL at T = 1 first comes
within `--nll-gap` nats of the exact entropy (evaluated every `--eval-every` steps, evaluation
time excluded). Prints a markdown table for BENCHMARKS.md ("TRADE") with the load average, which
matters on a shared machine.

    python benchmarks/trade_cost.py [--threads 1 2] [--steps 1500] [--nll-gap 0.05]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from boltzkit.experiments.trade_exps import Settings, trade_config
from boltzkit.models.flows import dtype_of, n_parameters
from boltzkit.samplers import trade
from boltzkit.targets import get
from boltzkit.targets.family import Family

METHODS = {"single-T": "latent_nll", "trade-free": "trade-free", "trade-grid": "trade-grid",
           "trade-free-fit": "trade-free-fit", "trade-grid-fit": "trade-grid-fit"}
PROBLEM = {"parameter": "temperature", "c0": 1.0, "c_min": 0.162, "c_max": 6.16}


def run(method: str, threads: int, args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    target = get("tempered-gmm-2d")
    data = trade.Data(target.sample(20_000).float(), 1.0)
    held_out = target.sample(20_000)
    entropy = float(-(target.log_prob(held_out) - target.log_Z).mean())
    settings = Settings(n_layers=4, warmup_steps=0, n_steps=args.steps)
    config = trade_config(settings, METHODS[method], **PROBLEM)
    flow = trade.build_flow(config, 2, data.x)
    family = Family(target)
    opt = torch.optim.Adam(flow.parameters(), lr=config.lr)
    record = {"n_nonfinite": 0}
    step_s, train_s, reached = [], 0.0, None
    for step in range(args.steps):
        t0 = time.perf_counter()
        loss = trade.step_loss(flow, family, config, data, None, step, record)
        opt.zero_grad()
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        step_s.append(dt)
        train_s += dt
        if reached is None and (step + 1) % args.eval_every == 0:
            with torch.no_grad():
                nll = float(-flow.log_prob(held_out.to(dtype_of(flow)), 1.0).double().mean())
            if nll - entropy <= args.nll_gap:
                reached = (step + 1, train_s)
    return {"method": method, "threads": threads, "params": n_parameters(flow),
            "s_per_step": statistics.median(step_s[10:]),
            "steps_to_nll": reached[0] if reached else None,
            "s_to_nll": reached[1] if reached else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--nll-gap", type=float, default=0.05)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    load = os.getloadavg()
    rows = [run(m, t, args) for t in args.threads for m in args.methods]
    print(f"load average at start {load[0]:.1f}, end {os.getloadavg()[0]:.1f}; "
          f"{os.cpu_count()} CPUs; torch {torch.__version__}")
    print(f"NLL target: exact entropy at T = 1 + {args.nll_gap} nats, {args.steps} steps max\n")
    print("| method | threads | parameters | s / step | steps to NLL | s to NLL |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v, f: "not reached" if v is None else format(v, f)  # noqa: E731
        print(f"| {r['method']} | {r['threads']} | {r['params']} | {r['s_per_step']:.3f} | "
              f"{fmt(r['steps_to_nll'], 'd')} | {fmt(r['s_to_nll'], '.0f')} |")


if __name__ == "__main__":
    main()
