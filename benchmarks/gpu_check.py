"""The GPU check of issue 16, as one prepared run of at most about 8 minutes on a CUDA machine:
the device-parametrised contract tests (tests/devices: CPU and CUDA cases), then per-component
iDEM timings on DW-4, LJ-13 and LJ-55 with the paper settings (the idem presets "dw4", "lj13",
"lj55"): one inner step (Monte Carlo score estimator S_K over B x K configurations, then the
network's forward and backward pass and the optimizer step), 20 reverse-SDE steps at the
generation batch, and the outer iteration extrapolated from them,

    outer_s = n_inner * inner_step_s + (n_sde_steps / 20) * sde_20_steps_s,

since every inner step and every SDE step does the same work (the first inner step and the
first SDE batch are warm-up, excluded). Every interval is closed by `torch.cuda.synchronize()`.
Results go to one JSON file (GPU name, torch and CUDA versions, test outcome, timings).

    python benchmarks/gpu_check.py --out "$OUT/gpu_check.json"        # on a GPU machine
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check.json  # CPU, tiny sizes

`--dry-run` runs the same code on the CPU at tiny sizes (about 2 minutes on 2 busy cores, most
of it imports and tests/devices collection): the tests phase runs
only the CUDA cases (skipped without a GPU) and the timings use batch 8, K = 4, 2 SDE steps;
its numbers mean nothing, it checks that the script works. The reference implementation is not
run here (it is not installed on the device machines); its published-code timings in
BENCHMARKS.md come from a CPU machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from boltzkit import targets
from boltzkit.core.config import override
from boltzkit.mc.noise import gaussian_noise
from boltzkit.samplers import idem
from boltzkit.samplers.idem.core import buffer_push, buffer_sample, loss_weight, mc_score

TARGETS = ("dw4", "lj13", "lj55")
SDE_STEPS = 20
TINY = {"batch_size": 8, "n_mc": 4, "hidden": 8, "n_generate": 8, "buffer_size": 64}
ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    """(fn(), wall seconds) with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run_tests(dry_run: bool, timeout_s: float) -> dict[str, Any]:
    """tests/devices under pytest (CUDA cases only in a dry run), within `timeout_s`."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/devices"]
    if dry_run:
        cmd += ["-k", "cuda"]
    elif importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        rc, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        rc, tail = None, f"timed out after {timeout_s:.0f} s\n{out[-3000:]}"
    lines = [ln for ln in tail.splitlines() if ln.strip()]
    return {"command": " ".join(cmd), "returncode": rc, "wall_s": time.perf_counter() - start,
            "summary": lines[-1] if lines else "", "tail": tail}


def training(name: str, device: str, dry_run: bool) -> tuple[Any, Any]:
    """(config, iDEM training state) of the paper preset on `device` (tiny in a dry run)."""
    cfg = override(idem.preset(name), {**(TINY if dry_run else {}), "device": device,
                                       "checkpoint_every": 0})
    target = targets.get(name).to(device)
    run = idem._Training(target, cfg, None, None)
    run.buffer = buffer_push(run.buffer, run.prior(cfg.buffer_size))
    return cfg, run


def inner_parts(run: Any) -> dict[str, float]:
    """One inner step split as in `idem._Training.inner_step`: draw, estimator, network."""
    c, dev = run.config, run.device

    def draw() -> tuple[Any, Any, Any]:
        x0 = buffer_sample(run.buffer, c.batch_size)
        t = torch.rand(c.batch_size, dtype=run.dtype, device=dev)
        sigma = run.schedule.sigma(t)
        return x0 + sigma.unsqueeze(1) * gaussian_noise(tuple(x0.shape), x0, run.particles), \
            t, sigma

    (xt, t, sigma), draw_s = timed(draw, dev)
    est, estimator_s = timed(lambda: mc_score(run.evaluate, xt, sigma, c.n_mc,
                                              particles=run.particles,
                                              max_elements=c.max_elements), dev)

    def network() -> None:
        weight = loss_weight(run.schedule, t, c.loss_weight, c.loss_weight_eps)
        run.backward(xt, t, run.clip(est.score), weight)
        if c.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), c.grad_clip)
        run.optimizer.step()

    _, network_s = timed(network, dev)
    return {"draw_s": draw_s, "estimator_s": estimator_s, "network_s": network_s}


def time_target(name: str, device: str, dry_run: bool) -> dict[str, Any]:
    """Per-component seconds and the extrapolated outer iteration of one target."""
    cfg, run = training(name, device, dry_run)
    dev, sde_steps = run.device, 2 if dry_run else SDE_STEPS
    inner_parts(run)  # warm-up (CUDA context, kernels, allocator)
    parts = inner_parts(run)
    _, inner_s = timed(run.inner_step, dev)
    fast = override(cfg, {"n_sde_steps": sde_steps})
    run.config = fast
    run.generate(min(cfg.n_generate, 8))  # warm-up
    _, sde_s = timed(lambda: run.generate(cfg.n_generate), dev)
    run.config = cfg
    outer = cfg.n_inner * inner_s + cfg.n_sde_steps / sde_steps * sde_s
    return {"target": name, "n_inner": cfg.n_inner, "batch_size": cfg.batch_size,
            "n_mc": cfg.n_mc, "n_generate": cfg.n_generate, "n_sde_steps": cfg.n_sde_steps,
            "network": cfg.network, "n_layers": cfg.n_layers, "hidden": cfg.hidden,
            **{f"inner_{k}": v for k, v in parts.items()}, "inner_step_s": inner_s,
            f"sde_{sde_steps}_steps_s": sde_s, "outer_s_extrapolated": outer,
            "peak_memory_GiB": (torch.cuda.max_memory_allocated(dev) / 2**30
                                if dev.type == "cuda" else None)}


def machine(device: str) -> dict[str, Any]:
    cuda = torch.device(device).type == "cuda"
    return {"device": device, "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python":
            platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the script")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--tests-timeout", type=float, default=300.0, help="seconds")
    args = ap.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here (use --dry-run to check the script on CPU)")
    torch.manual_seed(0)
    results: dict[str, Any] = {"machine": machine(device), "dry_run": args.dry_run}
    if not args.skip_tests:
        results["tests"] = run_tests(args.dry_run, args.tests_timeout)
        print(f"tests/devices: {results['tests']['summary']}", flush=True)
    results["timings"] = []
    for name in args.targets.split(","):
        row = time_target(name, device, args.dry_run)
        results["timings"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k.endswith(("_s", "extrapolated"))}
                         | {"target": name}), flush=True)
        args.out.write_text(json.dumps(results, indent=1, default=str))  # kept if cut short
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
