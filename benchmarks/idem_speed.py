"""iDEM speed: the score estimator against its physical floor, and the time per outer iteration
with the paper's DW-4 and LJ-13 settings, split into estimator, network and reverse SDE, with
FLOP counts of the EGNN.

    python benchmarks/idem_speed.py                     # reduced steps, extrapolated (minutes)
    python benchmarks/idem_speed.py --full              # 100 inner steps + 1000 SDE steps
    python benchmarks/idem_speed.py --inner-steps 10 --sde-steps 50 --targets dw4
    python benchmarks/idem_speed.py --runs 3            # medians of three measurements
    python benchmarks/idem_speed.py --skip-floor --inner-steps 1 --sde-steps 1 --ablations 5
    python benchmarks/idem_speed.py --compare 5         # shared diffusion stack vs the old code

Reduced runs time `--inner-steps` inner steps and `--sde-steps` reverse-SDE steps (batch 1000)
and multiply by 100 / inner-steps and 1000 / sde-steps: every inner step and every SDE step does
the same work, so this extrapolates the per-iteration cost (first steps are warm-up and are
excluded). The output says when numbers are extrapolated. It also prints this machine's sgemm
rate (at the network's shape and at 2048^3) and SiLU cost, and two lower bounds per outer
iteration derived from them and the EGNN's FLOP and activation counts. Generation uses the
fused EGNN kernel (boltzkit.models.fused) when it builds here; the first line says whether it
did, and `--ablations` times it against library calls. `--compare ROUNDS` times the shared VE
schedule and reverse SDE (`boltzkit.diffusion`) against frozen copies of the iDEM-only code
they replaced, side by side in interleaved rounds (see `compare_old_new`). Reference
implementation (issue 4, same machine class): DW-4 103 s, LJ-13 4,630 s per outer iteration;
targets 20 s and 900 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Any

import torch

from boltzkit import targets
from boltzkit.core.config import override
from boltzkit.diffusion.sde import reverse_sde
from boltzkit.mc.noise import Particles, gaussian_noise
from boltzkit.models import fused
from boltzkit.samplers import idem
from boltzkit.samplers.idem.core import buffer_push, mc_score

REFERENCE_S = {"dw4": 103.0, "lj13": 4630.0}
GOAL_S = {"dw4": 20.0, "lj13": 900.0}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def best_of(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def estimator_floor(repeats: int) -> dict[str, float]:
    """LJ-13, B = 512, K = 1000: S_K vs one batched energy+gradient call on 512,000 configs."""
    target = targets.get("lj13")
    cfg = idem.preset("lj13")
    p = Particles(13, 3)
    torch.manual_seed(0)
    x = p.center(torch.randn(512, 39) * 1.2)
    sigma = torch.rand(512) * 0.5 + 0.05
    pts = p.center(x.repeat_interleave(1000, 0) + 0.3 * torch.randn(512_000, 39))
    target.log_prob_and_score(pts[:1000])
    energy = best_of(lambda: target.log_prob_and_score(pts), repeats)
    est = best_of(lambda: mc_score(target.log_prob_and_score, x, sigma, 1000, particles=p,
                                   max_elements=cfg.max_elements), repeats)
    return {"energy_grad_512k_s": energy, "estimator_s": est, "ratio": est / energy}


def egnn_flops(n: int, hidden: int, n_layers: int, batch: int, shared_time: bool) -> dict:
    """Multiply-add FLOPs (2 per MAC) and transcendental evaluations of one EGNN forward.

    Per edge and layer: two H x H matmuls (edge MLP second layer, coordinate MLP hidden layer),
    attention and coordinate heads (2H each); 3H SiLUs, one sigmoid, one tanh, one sqrt. Per
    node and layer: the split first edge layer (2 H^2 MACs) and the node MLP (3 H^2) except in
    the last layer. In the first layer the edges count half (one message per pair) and all
    nodes share h, so its per-node products are per sample (per batch when t is a scalar,
    `shared_time`)."""
    h2 = hidden * hidden
    edges = batch * n * (n - 1)
    edge_layers = n_layers - 0.5  # the first layer's messages are computed once per pair
    mm = edges * edge_layers * 2 * (2 * h2 + 2 * hidden)
    first_rows = 1 if shared_time else batch
    for layer in range(n_layers):
        rows = first_rows if layer == 0 else batch * n
        mm += rows * 2 * 2 * h2  # edge_src, edge_dst
        if layer < n_layers - 1:
            mm += 2 * (rows * h2 + batch * n * 2 * h2)  # node_self on h, node_agg + node_out
    trans = edges * edge_layers * (3 * hidden + 3) + batch * n * (n_layers - 1) * hidden
    return {"flop": float(mm), "transcendental": float(trans)}


def machine_rates() -> dict[str, float]:
    """This machine's rates at the current thread count: sgemm at the EGNN's shape
    ([8192 x 128] @ [128 x 128], one edge chunk) and at 2048^3 (the best case: the peak that
    bounds any float32 implementation), and SiLU per element (the activation's cost, which an
    eager implementation pays on top of the matmuls)."""
    a, w = torch.randn(8192, 128), torch.randn(128, 128)
    big = torch.randn(2048, 2048)
    mm = best_of(lambda: torch.nn.functional.linear(a, w), 9)
    peak = best_of(lambda: big @ big, 5)
    silu = best_of(lambda: torch.nn.functional.silu(a), 9)
    return {"gemm_gflops": 2 * 8192 * 128 * 128 / mm / 1e9,
            "peak_gflops": 2 * 2048**3 / peak / 1e9,
            "silu_ns_per_element": silu / a.numel() * 1e9}


def outer_iteration(name: str, inner_steps: int, sde_steps: int, full: bool) -> dict[str, Any]:
    target = targets.get(name)
    cfg = idem.preset(name)
    n_inner, n_sde = (cfg.n_inner, cfg.n_sde_steps) if full else (inner_steps, sde_steps)
    run = idem._Training(target, override(cfg, {"n_sde_steps": n_sde}), None, None)
    run.buffer = buffer_push(run.buffer, run.prior(cfg.buffer_size))
    run.inner_step()  # warm-up
    run.seconds = {k: 0.0 for k in run.seconds}
    start = time.perf_counter()
    for _ in range(n_inner):
        run.inner_step()
    inner_wall = time.perf_counter() - start
    start = time.perf_counter()
    run.generate(cfg.n_generate)
    sde_wall = time.perf_counter() - start
    inner_factor, sde_factor = cfg.n_inner / n_inner, cfg.n_sde_steps / n_sde
    out = {
        "target": name, "extrapolated": not full, "inner_steps_timed": n_inner,
        "sde_steps_timed": n_sde,
        "estimator_s_per_step": run.seconds["estimator"] / n_inner,
        "network_s_per_step": run.seconds["network"] / n_inner,
        "inner_s_per_step": inner_wall / n_inner,
        "sde_s_per_step": sde_wall / n_sde,
        "inner_s": inner_wall * inner_factor, "sde_s": sde_wall * sde_factor,
    }
    out["outer_s"] = out["inner_s"] + out["sde_s"]
    out["reference_s"], out["goal_s"] = REFERENCE_S[name], GOAL_S[name]
    out["speedup"] = REFERENCE_S[name] / out["outer_s"]
    pts = run.prior(cfg.batch_size * cfg.n_mc)  # one inner step's B x K configurations
    free = target.uncounted()
    free.log_prob_and_score(pts[:1000])
    out["energy_grad_step_s"] = best_of(lambda: free.log_prob_and_score(pts), 3)
    net = run.net
    n = target.n_particles
    fwd = egnn_flops(n, cfg.hidden, cfg.n_layers, cfg.n_generate, shared_time=True)
    train = egnn_flops(n, cfg.hidden, cfg.n_layers, cfg.batch_size, shared_time=False)
    x = run.prior(cfg.n_generate)
    with torch.no_grad():
        net(x, 0.5)
        fwd_s = best_of(lambda: net(x, 0.5), 3)
    xb, tb = run.prior(cfg.batch_size), torch.rand(cfg.batch_size)
    goal, weight = torch.zeros_like(xb), torch.ones(cfg.batch_size)
    fb_s = best_of(lambda: run.backward(xb, tb, goal, weight), 3)  # chunked, as in training
    out.update(egnn_forward_batch_s=fwd_s, egnn_forward_gflop=fwd["flop"] / 1e9,
               egnn_forward_transcendental_M=fwd["transcendental"] / 1e6,
               egnn_fwd_bwd_train_batch_s=fb_s,
               egnn_fwd_bwd_gflop=3 * train["flop"] / 1e9,
               egnn_fwd_bwd_transcendental_M=train["transcendental"] / 1e6)
    return out


def floors(r: dict[str, Any], rates: dict[str, float], n_inner: int, n_sde: int,
           estimator_floor_s: float) -> dict[str, float]:
    """Lower bounds on one outer iteration. `flop_s`: the network's matmul FLOPs at the
    machine's peak sgemm rate plus the estimator's energy+gradient time (no float32
    implementation on this machine can beat it). `eager_s`: matmuls at the rate measured at the
    network's own shape plus every activation at the measured SiLU cost (what an implementation
    that runs each layer as library calls pays; backward activations counted once more)."""
    flop = n_sde * r["egnn_forward_gflop"] + n_inner * r["egnn_fwd_bwd_gflop"]
    trans = n_sde * r["egnn_forward_transcendental_M"] + 2 * n_inner * r[
        "egnn_fwd_bwd_transcendental_M"]
    return {"flop_s": flop / rates["peak_gflops"] + estimator_floor_s,
            "eager_s": flop / rates["gemm_gflops"] + trans * 1e6 * rates[
                "silu_ns_per_element"] * 1e-9 + estimator_floor_s}


def ablations(name: str, repeats: int) -> dict[str, float]:
    """Interleaved A/B timings (median seconds over `repeats` rounds) of the exact
    reformulations, on the preset's network: the fused inference kernel against library calls
    (forward batch 1000), the pairwise first layer on and off (library-call forward batch 1000
    and chunked training forward+backward batch 512), inference chunk sizes, and the training
    batch in edge chunks against all at once."""
    target, cfg = targets.get(name), idem.preset(name)
    run = idem._Training(target, cfg, None, None)
    net = run.net
    x = run.prior(cfg.n_generate)
    xb, tb = run.prior(cfg.batch_size), torch.rand(cfg.batch_size)
    goal, weight = torch.zeros_like(xb), torch.ones(cfg.batch_size)
    chunked = run.train_chunk

    def forward() -> None:
        with torch.no_grad():
            net(x, 0.5)

    def train(chunk: int) -> Any:
        def step() -> None:
            run.train_chunk = chunk
            run.backward(xb, tb, goal, weight)
        return step

    def setting(fn: Any, **attrs: Any) -> Any:
        def call() -> None:
            for k, v in attrs.items():
                setattr(net, k, v)
            fn()
        return call

    cases = {
        "forward, fused kernel": setting(forward, fused=True, symmetric_first_layer=True),
        "forward, library calls, pairwise first layer": setting(
            forward, fused=False, symmetric_first_layer=True),
        "forward, library calls, both directions": setting(forward, symmetric_first_layer=False),
        "train, pairwise first layer": setting(train(chunked), symmetric_first_layer=True),
        "train, both directions": setting(train(chunked), symmetric_first_layer=False),
        "forward, chunks of 8192 edges": setting(forward, chunk_edges=8192,
                                                 symmetric_first_layer=True),
        "forward, chunks of 16384 edges": setting(forward, chunk_edges=16384),
        "forward, chunks of 32768 edges": setting(forward, chunk_edges=32768),
        f"train, chunks of {chunked} samples": setting(train(chunked), chunk_edges=8192),
        "train, whole batch": train(cfg.batch_size),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(repeats):
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


class _FrozenGeometricSchedule:
    """Frozen copy of the removed `samplers.idem.core.GeometricSchedule` (commit 22b107a), kept
    only as the "old" side of `compare_old_new`."""

    def __init__(self, sigma_min: float, sigma_max: float) -> None:
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.log_ratio = math.log(sigma_max / sigma_min)

    def sigma(self, t: Any) -> torch.Tensor:
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * self.log_ratio * t))

    def g2(self, t: Any) -> torch.Tensor:
        t = t if isinstance(t, torch.Tensor) else torch.tensor(t, dtype=torch.float64)
        return 2 * self.log_ratio * self.sigma_min**2 * torch.exp(2 * self.log_ratio * t)


def _frozen_reverse_sde(score_fn: Any, x1: torch.Tensor, schedule: Any, n_steps: int,
                        noise_scale: float, particles: Particles | None) -> torch.Tensor:
    """Frozen copy of the removed `samplers.idem.core.reverse_sde` loop (commit 22b107a)."""
    dt = 1.0 / n_steps
    x = x1.clone()
    for k in range(n_steps):
        t = 1.0 - k * dt
        g2 = float(schedule.g2(t))
        drift = score_fn(x, t)
        z = gaussian_noise(tuple(x.shape), x, particles)
        x = x + (g2 * dt) * drift + (noise_scale * math.sqrt(g2 * dt)) * z
    return particles.center(x) if particles is not None else x


_FREE_SCORE_RUNS = 40


def compare_old_new(name: str, rounds: int, sde_steps: int) -> dict[str, Any]:
    """Old (frozen copies) against new (`VESchedule`, `diffusion.sde.reverse_sde`) on the
    preset's network: the reverse SDE for `sde_steps` steps at batch n_generate, as generation
    runs it (no autograd, fused kernel where built), and one inner training step (estimator +
    network + Adam; the schedule gives sigma(t) and lambda(t)). Each round times old and new of
    both parts, in ABBA order across rounds so that drifts in the machine's speed cancel; the
    medians over rounds and their ratio new / old are returned, with the outer iteration
    extrapolated as n_inner inner steps + n_sde_steps / sde_steps SDE runs. A third part, the
    SDE with a score that costs nothing (40 runs per round), isolates what the two
    implementations do differently: the schedule's coefficients, the update and the noise."""
    target, cfg = targets.get(name), idem.preset(name)
    run = idem._Training(target, cfg, None, None)
    run.buffer = buffer_push(run.buffer, run.prior(cfg.buffer_size))
    schedules = {"old": _FrozenGeometricSchedule(cfg.sigma_min, cfg.sigma_max),
                 "new": run.schedule}
    x1 = run.prior(cfg.n_generate)

    def sde(side: str) -> None:
        with torch.no_grad():
            if side == "old":
                _frozen_reverse_sde(run.net, x1, schedules["old"], sde_steps, cfg.noise_scale,
                                    run.particles)
            else:
                reverse_sde(run.net, x1, schedules["new"], sde_steps,
                            noise_scale=cfg.noise_scale, particles=run.particles)

    def inner(side: str) -> None:
        run.schedule = schedules[side]
        run.inner_step()

    still = torch.zeros_like(x1)

    def steps_only(side: str) -> None:  # the SDE with a free score: all but the network
        for _ in range(_FREE_SCORE_RUNS):
            if side == "old":
                _frozen_reverse_sde(lambda x, t: still, x1, schedules["old"], sde_steps,
                                    cfg.noise_scale, run.particles)
            else:
                reverse_sde(lambda x, t: still, x1, schedules["new"], sde_steps,
                            noise_scale=cfg.noise_scale, particles=run.particles)

    parts = (("sde", sde), ("inner", inner), ("steps", steps_only))
    keys = [f"{p}_{s}" for p, _ in parts for s in ("old", "new")]
    times: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    for side in ("old", "new"):  # warm-up
        sde(side)
        inner(side)
    for r in range(rounds):
        for part, fn in parts:
            for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn(side)
                times[f"{part}_{side}"].append(time.perf_counter() - start)
                cpu[f"{part}_{side}"].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    best = {k: min(v) for k, v in times.items()}
    outer = {s: cfg.n_inner * med[f"inner_{s}"] + cfg.n_sde_steps / sde_steps * med[f"sde_{s}"]
             for s in ("old", "new")}
    paired = {part: statistics.median(n / o for n, o in zip(
        times[f"{part}_new"], times[f"{part}_old"], strict=True)) for part, _ in parts}
    return {"target": name, "rounds": rounds, "sde_steps": sde_steps,
            "batch_sde": cfg.n_generate, "batch_inner": cfg.batch_size, "times": times,
            "median": med, "best": best, "outer_old_s": outer["old"], "outer_new_s": outer["new"],
            "ratio": {**{p: med[f"{p}_new"] / med[f"{p}_old"] for p, _ in parts},
                      "outer": outer["new"] / outer["old"]},
            "paired_ratio": paired, "cpu_times": cpu, "median_cpu": med_cpu,
            "cpu_ratio": {p: med_cpu[f"{p}_new"] / med_cpu[f"{p}_old"] for p, _ in parts},
            "best_ratio": {p: best[f"{p}_new"] / best[f"{p}_old"] for p, _ in parts}}


def print_comparison(c: dict[str, Any]) -> None:
    """Wall-clock medians and bests, and the medians of process CPU time (both threads), which
    other processes on a shared machine disturb far less than wall time."""
    m, b, mc = c["median"], c["best"], c["median_cpu"]
    print(f"\n## {c['target']}: old (frozen iDEM-only code) vs new (shared diffusion stack), "
          f"{c['rounds']} interleaved rounds\n| part | old wall s (median; best) | new wall s "
          "(median; best) | new / old: wall medians | paired wall ratios, median | wall bests | "
          "CPU s old; new (medians) | new / old: CPU medians |\n|---|---|---|---|---|---|---|---|")
    for part, label in (("sde", f"reverse SDE, {c['sde_steps']} steps, batch {c['batch_sde']}"),
                        ("inner", f"one inner step, batch {c['batch_inner']}"),
                        ("steps", f"{_FREE_SCORE_RUNS} x reverse SDE with a free score (all "
                                  f"but the network), {c['sde_steps']} steps")):
        o, n = part + "_old", part + "_new"
        print(f"| {label} | {m[o]:.4f}; {b[o]:.4f} | {m[n]:.4f}; {b[n]:.4f} | "
              f"{c['ratio'][part]:.3f} | {c['paired_ratio'][part]:.3f} | "
              f"{c['best_ratio'][part]:.3f} | {mc[o]:.4f}; {mc[n]:.4f} | "
              f"{c['cpu_ratio'][part]:.3f} |")
    print(f"| outer iteration (extrapolated from the wall medians) | {c['outer_old_s']:.1f} | "
          f"{c['outer_new_s']:.1f} | {c['ratio']['outer']:.3f} | | | | |")
    per_step = 1e6 / (_FREE_SCORE_RUNS * c["sde_steps"])
    print("free-score SDE, microseconds per step (median; best): old "
          f"{m['steps_old'] * per_step:.1f}; {b['steps_old'] * per_step:.1f}, new "
          f"{m['steps_new'] * per_step:.1f}; {b['steps_new'] * per_step:.1f}")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of numeric results over repeated measurements (other keys from the
    first); `outer_s_runs` keeps every run's total."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, float):
            out[key] = statistics.median(r[key] for r in runs)
    out["outer_s_runs"] = [r["outer_s"] for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--targets", default="dw4,lj13")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--sde-steps", type=int, default=20)
    ap.add_argument("--full", action="store_true", help="100 inner + 1000 SDE steps, measured")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", type=int, default=1,
                    help="measure each outer iteration this many times; medians are printed")
    ap.add_argument("--ablations", type=int, default=0, metavar="ROUNDS",
                    help="also time the exact reformulations on and off (interleaved rounds)")
    ap.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                    help="only time the old iDEM schedule + SDE against the shared ones "
                         "(interleaved rounds; --sde-steps steps)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu": platform.processor() or platform.machine(),
                            "load_before": load()}
    kernel = fused.egnn_kernel()
    info["fused_kernel"] = kernel is not None
    print(f"# iDEM speed (torch {info['torch']}, {info['threads']} threads, float32); "
          f"load average before: {info['load_before']}; fused EGNN kernel: "
          + ("on" if kernel is not None else f"unavailable ({fused.build_error()})"))
    if args.compare:
        info["compare"] = [compare_old_new(name, args.compare, args.sde_steps)
                           for name in args.targets.split(",")]
        for c in info["compare"]:
            print_comparison(c)
        info["load_after"] = load()
        print(f"\nload average after: {info['load_after']}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(info, f, indent=1)
        return
    rates = machine_rates()
    info["rates"] = rates
    print(f"machine: sgemm {rates['gemm_gflops']:.0f} GFLOP/s at [8192x128]x[128x128], "
          f"{rates['peak_gflops']:.0f} GFLOP/s at 2048^3; "
          f"SiLU {rates['silu_ns_per_element']:.2f} ns/element")
    if not args.skip_floor:
        floor = estimator_floor(args.repeats)
        info["floor"] = floor
        print(f"estimator floor (LJ-13, B=512, K=1000): energy+grad of 512,000 configs "
              f"{floor['energy_grad_512k_s']:.3f} s; S_K {floor['estimator_s']:.3f} s; "
              f"ratio {floor['ratio']:.2f} (acceptance: <= 1.5)")
    info["runs"] = []
    for name in args.targets.split(","):
        runs = [outer_iteration(name, args.inner_steps, args.sde_steps, args.full)
                for _ in range(args.runs)]
        r = median_run(runs)
        info["runs"].append(r)
        tag = "measured" if args.full else (
            f"extrapolated from {r['inner_steps_timed']} inner / {r['sde_steps_timed']} SDE steps")
        tag += (f"; median of {args.runs} runs: "
                + ", ".join(f"{v:.1f}" for v in r["outer_s_runs"]) + " s") if args.runs > 1 else ""
        cfg = idem.preset(name)
        r.update(floors(r, rates, cfg.n_inner, cfg.n_sde_steps,
                        cfg.n_inner * r["energy_grad_step_s"]))
        flops_fwd = r["egnn_forward_gflop"] / r["egnn_forward_batch_s"]
        flops_fb = r["egnn_fwd_bwd_gflop"] / r["egnn_fwd_bwd_train_batch_s"]
        print(f"\n## {name} ({tag})\n"
              f"| part | seconds per step | seconds per outer iteration |\n|---|---|---|\n"
              f"| estimator (B=512, K={idem.preset(name).n_mc}) | "
              f"{r['estimator_s_per_step']:.3f} | {100 * r['estimator_s_per_step']:.1f} |\n"
              f"| network fwd+bwd+Adam (batch 512) | {r['network_s_per_step']:.3f} | "
              f"{100 * r['network_s_per_step']:.1f} |\n"
              f"| reverse SDE (batch 1000) | {r['sde_s_per_step']:.4f} | {r['sde_s']:.1f} |\n"
              f"| **outer iteration** | | **{r['outer_s']:.1f}** (reference "
              f"{r['reference_s']:.0f}, goal <= {r['goal_s']:.0f}; {r['speedup']:.1f}x) |\n"
              f"EGNN forward, batch 1000: {r['egnn_forward_batch_s']:.3f} s for "
              f"{r['egnn_forward_gflop']:.1f} GFLOP + {r['egnn_forward_transcendental_M']:.0f} M "
              f"transcendentals ({flops_fwd:.0f} GFLOP/s effective); fwd+bwd batch 512: "
              f"{r['egnn_fwd_bwd_train_batch_s']:.3f} s for ~{r['egnn_fwd_bwd_gflop']:.1f} GFLOP "
              f"({flops_fb:.0f} GFLOP/s)\n"
              f"lower bounds per outer iteration: {r['flop_s']:.0f} s (matmul FLOPs at the "
              f"{rates['peak_gflops']:.0f} GFLOP/s peak + estimator), {r['eager_s']:.0f} s "
              f"(matmuls at {rates['gemm_gflops']:.0f} GFLOP/s + activations at "
              f"{rates['silu_ns_per_element']:.2f} ns + estimator)")
    if args.ablations:
        info["ablations"] = {}
        for name in args.targets.split(","):
            ab = info["ablations"][name] = ablations(name, args.ablations)
            print(f"\n## {name}: exact reformulations on and off (median of {args.ablations} "
                  "interleaved rounds)\n| case | seconds |\n|---|---|")
            for key, sec in ab.items():
                print(f"| {key} | {sec:.4f} |")
    info["load_after"] = load()
    print(f"\nload average after: {info['load_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
