"""Tracking callbacks (boltzkit.app.tracking): the metrics.jsonl stream, the TensorBoard writer
and `boltzkit sample --tensorboard`."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from boltzkit.app import tracking
from boltzkit.cli import app
from boltzkit.core.errors import UsageError

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def events(stream: tracking.MetricsStream, seen: list[str]) -> None:
    stream("start", total=4, unit="step", description="train")
    stream("advance", n=2, loss=torch.tensor(0.25), accept=np.float64(0.5), label="text",
           flag=True)
    stream("advance", n=2, loss=float("nan"), n_energy=np.int64(800))
    stream("log", message="halfway")
    stream("end")
    assert seen == ["start", "advance", "advance", "log", "end"]


def test_the_stream_writes_one_json_line_per_event_and_passes_events_on() -> None:
    seen: list[str] = []
    buffer = io.StringIO()
    events(tracking.MetricsStream(buffer, lambda event, **info: seen.append(event)), seen)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["start", "advance", "advance", "log"]
    assert lines[1]["step"] == 2 and lines[1]["loss"] == 0.25 and lines[1]["accept"] == 0.5
    assert "label" not in lines[1] and "flag" not in lines[1] and "n" not in lines[1]
    assert lines[2]["loss"] is None and lines[2]["n_energy"] == 800 and lines[2]["step"] == 4
    assert lines[3]["message"] == "halfway" and lines[3]["phase"] == "train"


def test_a_missing_tensorboard_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UsageError, match="needs the tensorboard package: pip install"):
        tracking.TensorBoardWriter(tmp_path)


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_the_tensorboard_writer_writes_the_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen: list[str] = []
    writer = tracking.TensorBoardWriter(tmp_path, lambda event, **info: seen.append(event))
    events(writer, seen)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [(s.step, s.value) for s in losses] == [(2, 0.25)]  # the NaN is left out
    assert [s.step for s in acc.Scalars("train/n_energy")] == [4]


def test_sample_streams_metrics_and_writes_tensorboard(tmp_path: Path) -> None:
    args = ["sample", "gmm40", "--sampler", "mala", "--budget", "4000", "--out",
            str(tmp_path / "run"), "--quiet", "--no-figures", "--n-samples", "200"]
    if HAS_TENSORBOARD:
        args += ["--tensorboard", str(tmp_path / "tb")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = tracking.read_stream(tmp_path / "run")
    advances = [line for line in lines if line["event"] == "advance"]
    assert lines[0]["event"] == "start" and advances and "accept" in advances[-1]
    assert advances[-1]["step"] == max(line["step"] for line in lines)
    if HAS_TENSORBOARD:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tb"))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "mala on gmm40/accept" in tags and "summary/count_n_energy" in tags
        assert acc.Scalars("summary/count_n_energy")[0].value <= 4000
