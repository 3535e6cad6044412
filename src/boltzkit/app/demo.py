"""`boltzkit demo` (what `make run` runs): DW-4 sampled by parallel tempering and by MALA at the
same budget of energy evaluations, both evaluated against one reference set, printed as a table
with the reference-vs-reference noise floor at the same sample sizes.

The reference is the project's own cached set (`boltzkit reference dw4`) when there is one, else
the published test split in ../shared/data when present, else one generated now by
`boltzkit.app.reference.make_reference`; the table says which. Everything lands in one directory:
`pt/` and `mala/` (complete run directories), `summary.json` and `table.md` (the markdown block
that goes into BENCHMARKS.md, with command, machine and date).
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from boltzkit.app import references, rundir, runner
from boltzkit.app.progress import LogFile, RichProgress

TARGET = "dw4"
SAMPLERS = ("pt", "mala")
PRESET = "dw4"
# Both samplers start from the same relaxed configurations (capped uphill steps, counted in the
# budget): from the raw Gaussian start some MALA chains stay stuck with overlapping particles,
# whose huge gradients make every proposal overshoot at the shared step size.
SETS = ("init_relax_steps=100",)
BUDGET = 1_000_000  # energy evaluations per sampler
N_SAMPLES = 1000
# (column title, metrics.json key): each value is shown with its noise floor `<key>_floor`.
COLUMNS = (("energy W2", "energy_w2"), ("dist. TV", "distance_tv"), ("x-W2", "x_w2"))


def main(*, console: Console, err_console: Console, budget: int | None = None,
         out: Path | None = None, seed: int = 0, n_samples: int = N_SAMPLES,
         figures: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Runs the comparison, prints the table and the directory, returns the summary dict."""
    started = time.perf_counter()
    budget = BUDGET if budget is None else budget
    # what was really run (sys.argv), with the settings it resolved to
    command = [*rundir.command_line(), "# resolved:", "--budget", str(budget), "--seed",
               str(seed), "--n-samples", str(n_samples)]
    out = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}" if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    with LogFile(out / rundir.LOG_FILE) as log:
        ref_path, ref_source = reference_for_demo(out, log.write, err_console, quiet)
        console.print(f"DW-4, {budget:,} energy evaluations per sampler, {n_samples} samples "
                      f"each; reference: {ref_source}")
        rows = {}
        for name in SAMPLERS:
            with RichProgress(err_console, log=log.write, enabled=not quiet) as callback:
                outcome = runner.run_sampler(
                    target_name=TARGET, sampler=name, budget=budget, seed=seed, out=out / name,
                    preset=PRESET, sets=SETS, n_samples=n_samples, reference_path=ref_path,
                    callback=callback, log=log.write, figures=figures, command=command)
            rows[name] = {**outcome.metrics, "wall_s": outcome.wall_s}
    summary = {"target": TARGET, "budget": budget, "n_samples": n_samples, "seed": seed,
               "command": " ".join(command),
               "reference": ref_source, "reference_path": str(ref_path), "runs": rows,
               "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    rundir.write_json(out / "summary.json", summary)
    (out / "table.md").write_text(markdown(summary), encoding="utf-8")
    console.print(rich_table(summary))
    console.print(f"run directory: [bold]{out}[/]  (pt/, mala/, summary.json, table.md); "
                  f"{time.perf_counter() - started:.0f} s in all")
    return summary


def reference_for_demo(out: Path, log: Any, err_console: Console, quiet: bool
                       ) -> tuple[Path, str]:
    """(path, description) of the reference set, in the order the module docstring gives."""
    target = runner.build_target(TARGET)
    own = references.project_reference_path(TARGET, target)
    if own is not None:
        return own, f"project reference, cached ({own})"
    published = rundir.published_reference(TARGET)
    if published is not None:
        return published, f"published test split ({published.name}, iDEM / Klein et al. MCMC)"
    from boltzkit.app import reference as project_reference

    log("no cached or published DW-4 reference: generating one (boltzkit reference dw4)")
    with RichProgress(err_console, log=log, enabled=not quiet) as callback:
        made = project_reference.make_reference(target, callback=callback)
    path = Path(made.metadata["path"])
    return path, f"project reference, generated now by parallel tempering ({path})"


def machine() -> str:
    """One line describing this machine (for BENCHMARKS.md)."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def _value(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "n/a" if value is None else f"{value:.3f}"


def _floor(metrics: dict[str, Any], key: str) -> str:
    mean, std = metrics.get(f"{key}_floor"), metrics.get(f"{key}_floor_std")
    if mean is None:
        return "n/a"
    return f"{mean:.3f}±{std:.3f}" if std is not None else f"{mean:.3f}"


def _rows(summary: dict[str, Any]) -> list[list[str]]:
    runs = summary["runs"]
    rows = []
    for name, m in runs.items():
        rows.append([name, *(_value(m, key) for _, key in COLUMNS),
                     f"{int(m.get('count_n_energy') or 0):,}", f"{m['wall_s']:.0f}"])
    first = next(iter(runs.values()))
    rows.append(["noise floor", *(_floor(first, key) for _, key in COLUMNS), "-", "-"])
    return rows


def _floor_note(summary: dict[str, Any]) -> str:
    first = next(iter(summary["runs"].values()))
    n = int(first.get("n_eval") or 0)
    return (f"noise floor: reference vs reference, {n} vs {n} (disjoint subsets), "
            "mean±std over 3 splits; dist. TV: interatomic distances; evals: energy "
            "evaluations spent; time: sampling only; lower is better")


HEADER = ["sampler", *(title for title, _ in COLUMNS), "evals", "time s"]


def rich_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"DW-4 at equal budget ({summary['budget']:,} energy evaluations)",
                  caption=_floor_note(summary), header_style="bold")
    for i, col in enumerate(HEADER):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in _rows(summary):
        table.add_row(*row)
    return table


def markdown(summary: dict[str, Any]) -> str:
    """The BENCHMARKS.md block: command, machine, date, reference, table."""
    lines = [
        f"Command: `{summary['command']}`; machine: {summary['machine']}; "
        f"date: {summary['date']}.",
        f"Samplers: `--preset {PRESET}` with `{' '.join('--set ' + x for x in SETS)}` (the same "
        "start for both, its cost counted). "
        f"Reference: {summary['reference']}. {summary['n_samples']} samples per sampler; "
        "metrics from `boltzkit.evaluate.evaluation.evaluate` (energy W2 square-rooted, "
        "distance TV with "
        "bins from the reference, x-W2 exact OT in raw COM-free coordinates).",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(summary)]
    note = _floor_note(summary)
    lines += ["", f"{note[0].upper()}{note[1:]}."]
    return "\n".join(lines) + "\n"
