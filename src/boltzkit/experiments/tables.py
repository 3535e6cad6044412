"""Result tables of the experiments: results.csv (one row per run), results.md (one
methods x condition table per metric) and, over several seeds, the mean +- SE of every cell
(summary.csv)."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any


def write_tables(out_dir: Path, rows: list[dict[str, Any]], metrics: tuple[str, ...],
                 column: str, title: str, notes: str = "") -> None:
    """results.csv (all rows) and results.md: per metric a methods x `column` table. Rows of
    several seeds (a "seed" key) are summarised per cell as mean +- SE (std / sqrt(n)) with n
    the seeds whose value is finite; summary.csv holds those means and SEs."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out_dir / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    cells = seed_summary(rows, column, metrics)
    if any(c["n_seeds"] > 1 for c in cells.values()):
        _write_summary(out_dir / "summary.csv", cells)
    lines = [f"# {title}", "", notes, ""] if notes else [f"# {title}", ""]
    cols = list(dict.fromkeys(r[column] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for metric in metrics:
        lines += [f"## {metric}", "", "| method | " + " | ".join(f"{column}={c:g}" for c in cols)
                  + " |", "|---" * (len(cols) + 1) + "|"]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(_cell(cells.get((m, c)), metric) for c in cols)
                         + " |")
        lines.append("")
    (out_dir / "results.md").write_text("\n".join(lines))


def seed_summary(rows: list[dict[str, Any]], column: str, metrics: tuple[str, ...]
                 ) -> dict[tuple[str, Any], dict[str, Any]]:
    """Per (method, `column` value): n_seeds, and per metric the mean over the rows with a
    finite value and, from two such rows, `<metric>_se` = std / sqrt(n)."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r[column]), []).append(r)
    out = {}
    for (method, c), members in groups.items():
        cell: dict[str, Any] = {"method": method, column: c, "n_seeds": len(members)}
        for metric in metrics:
            values = [float(r[metric]) for r in members
                      if isinstance(r.get(metric), int | float) and math.isfinite(r[metric])]
            if values:
                cell[metric] = sum(values) / len(values)
            if len(values) >= 2:
                cell[f"{metric}_se"] = statistics.stdev(values) / math.sqrt(len(values))
        out[(method, c)] = cell
    return out


def _write_summary(path: Path, cells: dict[tuple[str, Any], dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for c in cells.values() for k in c))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(cells.values())


def _cell(cell: dict[str, Any] | None, metric: str) -> str:
    if cell is None:
        return "-"
    text = _fmt(cell.get(metric))
    return text + f" +- {cell[metric + '_se']:.2g}" if f"{metric}_se" in cell else text


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


__all__ = ["seed_summary", "write_tables"]
