"""`boltzkit report` (boltzkit.app.report): the HTML page's structure (html.parser), the page in
headless Chromium where one is installed, the markdown twin, and bad input."""

from __future__ import annotations

import base64
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from boltzkit.app import report, rundir
from boltzkit.cli import app

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_png() -> bytes:
    """A valid 2 x 2 grey PNG, written by hand (no plotting in tests)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80\x80" * 2)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def fake_run(path: Path, budget: int, w1: float) -> Path:
    path.mkdir(parents=True)
    rundir.write_record(path, {"target": "gmm40", "sampler": "mala", "seed": 0,
                               "budget": budget, "wall_s": 1.5,
                               "command": ["boltzkit", "sample", "gmm40", "--budget",
                                           str(budget), "--note", "<b>&"]}, {})
    rundir.write_metrics(path, {"energy_w1": w1, "energy_w1_floor": 0.1,
                                "energy_w1_floor_std": 0.02, "n_samples": 100,
                                "log_Z_error": float("nan")})
    (path / "energy_histogram.png").write_bytes(tiny_png())
    return path


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    experiment = tmp_path / "exp"
    experiment.mkdir()
    rundir.write_json(experiment / "experiment.json", {"experiment": "amc-gmm", "seed": 0,
                                                       "command": ["boltzkit", "experiment"]})
    rundir.write_json(experiment / "headline.json", {"n_runs": 3, "wall_s": 2.0})
    (experiment / "results.md").write_text("| kernel | error |\n|---|---|\n| ddim | 0.4 |\n")
    return [fake_run(tmp_path / "small", 1000, 2.5), fake_run(tmp_path / "large", 4000, 0.5),
            experiment]


class Page(HTMLParser):
    """Collects the page's tables (captions, rows), images and external references."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._text: list[str] | None = None
        self.pre: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"caption": "", "rows": 0})
        elif tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1
        elif tag == "img":
            self.images.append(a.get("src") or "")
        elif tag in ("caption", "pre"):
            self._text = []
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith("data:"):
                self.external.append(str(a[key]))

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption" and self._text is not None:
            self.tables[-1]["caption"] = "".join(self._text)
        elif tag == "pre" and self._text is not None:
            self.pre.append("".join(self._text))
        if tag in ("caption", "pre"):
            self._text = None


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_the_page_is_self_contained_with_tables_images_and_commands(runs, tmp_path) -> None:  # noqa: ANN001
    html_path, md_path = report.write(tmp_path / "out" / "report.html", runs)
    page = parse(html_path.read_text())
    captions = [t["caption"] for t in page.tables]
    assert captions == ["Runs"] + ["Machine", "Metrics"] * 3
    assert page.tables[0]["rows"] == 1 + 3  # header + one row per run
    assert not page.external
    # 2 run figures + 1 metric-vs-budget plot (gmm40/mala at two budgets)
    assert len(page.images) == 3
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "boltzkit sample gmm40 --budget 1000 --note <b>&" in page.pre  # escaped, read back
    assert any("| ddim | 0.4 |" in text for text in page.pre)  # the experiment's results.md
    text = html_path.read_text()
    assert "2.5 (floor 0.1 ± 0.02)" in text and "n/a" in text
    md = md_path.read_text()
    assert "| run | kind | target |" in md and "![energy_histogram.png](../small/" in md


def test_a_bench_directory_stands_for_its_leaderboard_and_cells(runs, tmp_path) -> None:  # noqa: ANN001
    bench = tmp_path / "bench"
    bench.mkdir()
    rundir.write_json(bench / "bench.json", {"cells": ["../small"], "leaderboard": {
        "title": "Leaderboard", "columns": ["target", "mala"], "rows": [["gmm40", "2.5"]]}})
    html_path, _ = report.write(tmp_path / "b.html", [bench])
    page = parse(html_path.read_text())
    assert [t["caption"] for t in page.tables][:2] == ["Leaderboard", "Runs"]


def test_not_a_run_directory_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is not a run directory" in result.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium installed")
def test_headless_chromium_finds_the_tables_and_images(runs, tmp_path) -> None:  # noqa: ANN001
    html_path, _ = report.write(tmp_path / "report.html", runs)
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         html_path.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    page = parse(dom)
    assert len(page.tables) == 7 and len(page.images) == 3
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
