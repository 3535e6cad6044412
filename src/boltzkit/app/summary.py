"""`summary.md`: the human-readable page of a run directory: what ran (the command), what it
spent against its budget, the metrics beside their noise floors, the warnings of the sanity
check (`boltzkit.evaluate.sanity`) and the figures."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.md"
_SKIP = ("nonfinite_keys", "reference_source")


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits; None and non-finite values as 'n/a'."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}" if isinstance(value, float) else f"{value:,}"


def metrics_rows(metrics: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, noise floor as 'mean ± std' or '') for every reported metric."""
    rows = []
    for key, value in metrics.items():
        if key in _SKIP or key.endswith(("_floor", "_floor_std")):
            continue
        floor, std = metrics.get(f"{key}_floor"), metrics.get(f"{key}_floor_std")
        rows.append((key, fmt(value), "" if floor is None else f"{fmt(floor)} ± {fmt(std)}"))
    return rows


def budget_line(record: Mapping[str, Any], diagnostics: Mapping[str, Any]) -> str:
    """What was spent of the budget, and whether the budget stopped the run."""
    spent = (record.get("counts") or {}).get("n_energy")
    budget = record.get("budget")
    stopped = diagnostics.get("stopped_by_budget")
    share = f" ({spent / budget:.1%})" if spent is not None and budget else ""
    tail = {True: "; the budget stopped it", False: "; it finished before the budget"}.get(
        stopped, "")
    return f"spent {fmt(spent)} of {fmt(budget)} energy evaluations{share}{tail}"


def write(run_dir: Path, record: Mapping[str, Any], metrics: Mapping[str, Any],
          diagnostics: Mapping[str, Any], warnings: list[str]) -> Path:
    """Writes `summary.md` in `run_dir` (figures: the PNG files found there)."""
    lines = [f"# {record.get('target')} / {record.get('sampler')}", ""]
    lines += ["```", " ".join(str(w) for w in record.get("command") or []), "```", ""]
    lines += [f"- preset: {record.get('preset') or 'none (sampler defaults)'}; seed "
              f"{record.get('seed')}; {fmt(record.get('n_samples'))} samples",
              f"- {budget_line(record, diagnostics)}",
              f"- wall time: {fmt(record.get('wall_s'))} s",
              f"- reference: {metrics.get('reference_source', 'none')}", ""]
    lines += ["## Warnings", ""] + ([f"- {w}" for w in warnings] or ["none"]) + [""]
    lines += ["## Metrics", "", "| metric | value | noise floor |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {f} |" for k, v, f in metrics_rows(metrics)]
    figures = sorted(p.name for p in run_dir.glob("*.png"))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{name}]({name})" for name in figures]
    path = run_dir / SUMMARY_FILE
    path.write_text("\n".join(lines) + "\n")
    return path
