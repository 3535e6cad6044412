"""`boltzkit report RUN_DIR...`: one self-contained HTML page, and its markdown twin, from any
run directories.

A directory is read as a sampler run (run.json, metrics.json; `boltzkit sample`), an
experiment (experiment.json, headline.json; `boltzkit experiment`) or a leaderboard
(bench.json; `boltzkit bench`). The page holds a summary table of every run (target, sampler,
budget, seed, wall time and the headline metrics with their noise floors), the leaderboard of
a bench, metric-versus-budget plots where runs of one target and sampler differ in budget, and
per run the command that made it, the machine it ran on, all its metrics, an experiment's
results.md and its figures. The HTML embeds every image as a base64 PNG (the page opens
anywhere, alone); the markdown links the images where they lie.

>>> cell({"energy_w1": 0.5, "energy_w1_floor": 0.1, "energy_w1_floor_std": 0.02}, "energy_w1")
'0.5 (floor 0.1 ± 0.02)'
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boltzkit.app.summary import fmt
from boltzkit.core.errors import UsageError

HEADLINE = ("energy_w1", "energy_w2", "x_w2", "distance_w2", "distance_tv", "symmetry_w2",
            "mode_weight_error_max_pp", "ess_fraction", "log_Z_error", "sampler_log_Z_error")
RESULTS = "results.md"  # an experiment's tables, shown as they are
MACHINE = ("platform", "processor", "machine", "cpu_count", "torch_threads", "cuda", "python",
           "torch", "boltzkit")


@dataclass
class Run:
    """What the report shows of one directory."""

    path: Path
    kind: str  # "sample", "experiment" or "bench"
    record: dict[str, Any]
    metrics: dict[str, Any]
    figures: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


@dataclass(frozen=True)
class Table:
    """A table to show: a title, column names and rows of cell text."""

    title: str
    columns: list[str]
    rows: list[list[str]]




def cell(metrics: dict[str, Any], key: str) -> str:
    """`value (floor F ± S)` where the metric has a noise floor, else the value."""
    if key not in metrics:
        return ""
    floor = metrics.get(f"{key}_floor")
    if floor is None:
        return fmt(metrics[key])
    return f"{fmt(metrics[key])} (floor {fmt(floor)} ± {fmt(metrics.get(f'{key}_floor_std'))})"


# ---- reading ------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def load(path: str | Path) -> Run:
    """The run in `path`; a `UsageError` naming what a run directory holds otherwise."""
    path = Path(path)
    figures = sorted(path.glob("*.png"))
    if (path / "run.json").exists():
        return Run(path, "sample", _json(path / "run.json"), _json(path / "metrics.json"),
                   figures)
    if (path / "bench.json").exists():
        return Run(path, "bench", _json(path / "bench.json"), {}, figures)
    if (path / "experiment.json").exists():
        return Run(path, "experiment", _json(path / "experiment.json"),
                   _json(path / "headline.json"), figures)
    raise UsageError(f"{path} is not a run directory (it holds no run.json, experiment.json "
                     "or bench.json)")


# ---- tables -------------------------------------------------------------------------------
def summary_table(runs: Sequence[Run]) -> Table:
    """One row per run: what ran and its headline metrics (with noise floors)."""
    keys = [k for k in HEADLINE if any(k in r.metrics for r in runs)]
    columns = ["run", "kind", "target", "sampler", "budget", "seed", "wall (s)"] + keys
    rows = []
    for r in runs:
        rec = r.record
        what = rec.get("target", rec.get("experiment", ""))
        rows.append([r.name, r.kind, str(what), str(rec.get("sampler", "")),
                     fmt(rec.get("budget")) if "budget" in rec else "", fmt(rec.get("seed")),
                     fmt(rec.get("wall_s", r.metrics.get("wall_s")))]
                    + [cell(r.metrics, k) for k in keys])
    return Table("Runs", columns, rows)


def metrics_table(run: Run) -> Table:
    """metric | value | noise floor, every scalar metric of the run."""
    rows = []
    for key, value in run.metrics.items():
        if key == "nonfinite_keys" or key.endswith(("_floor", "_floor_std")):
            continue
        if isinstance(value, dict | list):
            continue
        floor = run.metrics.get(f"{key}_floor")
        rows.append([key, fmt(value), "" if floor is None else
                     f"{fmt(floor)} ± {fmt(run.metrics.get(f'{key}_floor_std'))}"])
    return Table("Metrics", ["metric", "value", "noise floor"], rows)


def machine_table(run: Run) -> Table:
    env = run.record.get("environment") or {}
    return Table("Machine", ["fact", "value"],
                 [[k, fmt(env[k])] for k in MACHINE if env.get(k) is not None])


def command_text(run: Run) -> str:
    command = run.record.get("command")
    if isinstance(command, list):
        return " ".join(str(w) for w in command)
    return str(command or "(not recorded)")


# ---- figures ------------------------------------------------------------------------------
def budget_figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """PNG plots of each headline metric against the budget, one line per (target, sampler),
    for the targets where some (target, sampler) was run at two budgets or more."""
    series: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for r in runs:
        if r.kind == "sample" and "budget" in r.record:
            key = (str(r.record.get("target")), str(r.record.get("sampler")))
            series.setdefault(key, []).append((int(r.record["budget"]), r.metrics))
    targets = sorted({t for (t, _), pts in series.items() if len({b for b, _ in pts}) > 1})
    out = {}
    for target in targets:
        lines = {s: sorted(pts, key=lambda p: p[0]) for (t, s), pts in series.items()
                 if t == target}
        keys = [k for k in HEADLINE if any(k in m for pts in lines.values() for _, m in pts)]
        if keys:
            out[f"{target}: metrics against budget"] = _plot_budget(target, lines, keys)
    return out


def _plot_budget(target: str, lines: dict[str, list[tuple[int, dict[str, Any]]]],
                 keys: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for sampler, pts in lines.items():
            xy = [(b, m[key]) for b, m in pts if isinstance(m.get(key), int | float)]
            if xy:
                ax.plot([p[0] for p in xy], [p[1] for p in xy], "o-", label=sampler)
        ax.set(xscale="log", xlabel="budget (energy evaluations)", title=key)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(target)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


# ---- writing ------------------------------------------------------------------------------
def write(out: str | Path, run_dirs: Sequence[str | Path], extra: Sequence[Table] = (),
          title: str = "boltzkit report") -> tuple[Path, Path]:
    """Writes `out` (HTML) and its markdown twin (same name, .md); returns both paths.

    `extra` tables (a bench's leaderboard) come first, after the title."""
    if not run_dirs:
        raise UsageError("report needs at least one run directory")
    runs, extra = expand([load(p) for p in run_dirs], list(extra))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = budget_figures(runs)
    md_path = out.with_suffix(".md")
    out.write_text(to_html(runs, extra, plots, title), encoding="utf-8")
    md_path.write_text(to_markdown(runs, extra, title, md_path.parent), encoding="utf-8")
    return out, md_path


def expand(runs: Sequence[Run], extra: list[Table]) -> tuple[list[Run], list[Table]]:
    """A bench directory stands for its leaderboard (a table) and its cells (runs)."""
    out = []
    for r in runs:
        if r.kind != "bench":
            out.append(r)
            continue
        board = r.record["leaderboard"]
        extra.append(Table(board["title"], board["columns"], board["rows"]))
        out += [load(r.path / c) for c in r.record.get("cells", [])]
    return out, extra


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>\n"
                   for row in table.rows)
    return (f"<table>\n<caption>{html.escape(table.title)}</caption>\n<thead><tr>{head}</tr>"
            f"</thead>\n<tbody>\n{body}</tbody>\n</table>\n")


def _html_image(data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>\n")


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:80em}table{border-collapse:collapse;"
         "margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
         "th{background:#eee}caption{font-weight:bold;text-align:left}img{max-width:100%}"
         "figure{display:inline-block;margin:0.5em}pre{background:#f6f6f6;padding:0.5em;"
         "white-space:pre-wrap}")


def to_html(runs: Sequence[Run], extra: Sequence[Table], plots: dict[str, bytes],
            title: str) -> str:
    """The self-contained page."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
             f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
             f"<h1>{html.escape(title)}</h1>\n<p>{len(runs)} run(s); generated "
             f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}</p>\n"]
    parts += [_html_table(t) for t in extra]
    parts.append(_html_table(summary_table(runs)))
    parts += [_html_image(data, caption) for caption, data in plots.items()]
    for r in runs:
        parts.append(f"<section>\n<h2>{html.escape(r.name)} ({r.kind})</h2>\n"
                     f"<p>directory: <code>{html.escape(str(r.path))}</code></p>\n"
                     f"<pre>{html.escape(command_text(r))}</pre>\n")
        parts += [_html_table(machine_table(r)), _html_table(metrics_table(r))]
        if (r.path / RESULTS).exists():
            parts.append(f"<h3>{RESULTS}</h3>\n<pre>"
                         f"{html.escape((r.path / RESULTS).read_text(encoding='utf-8'))}</pre>\n")
        parts += [_html_image(f.read_bytes(), f.name) for f in r.figures]
        parts.append("</section>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def _md_table(table: Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [f"**{table.title}**", "", "| " + " | ".join(map(esc, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in table.rows]
    return "\n".join(lines) + "\n\n"


def to_markdown(runs: Sequence[Run], extra: Sequence[Table], title: str, base: Path) -> str:
    """The markdown twin; images are linked relative to `base` (the report's folder)."""
    parts = [f"# {title}\n\n{len(runs)} run(s); generated "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n"]
    parts += [_md_table(t) for t in extra]
    parts.append(_md_table(summary_table(runs)))
    for r in runs:
        parts.append(f"## {r.name} ({r.kind})\n\ndirectory: `{r.path}`\n\n```\n"
                     f"{command_text(r)}\n```\n\n")
        parts += [_md_table(machine_table(r)), _md_table(metrics_table(r))]
        if (r.path / RESULTS).exists():
            parts.append((r.path / RESULTS).read_text(encoding="utf-8") + "\n\n")
        parts += [f"![{f.name}]({Path(os.path.relpath(f, base)).as_posix()})\n\n"
                  for f in r.figures]
    return "".join(parts)
