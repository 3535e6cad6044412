"""Run tracking as callback wrappers (protocol: `boltzkit.core.callback.Callback`): a
`metrics.jsonl` stream in the run directory and, optionally, a TensorBoard writer.

Each wrapper handles an event and passes it on to the callback it wraps, so they stack on the
progress bars: `track(progress, run_dir, tensorboard=None)` gives the stacked callback.

metrics.jsonl holds one JSON object a line, for every "start", "advance" and "log" event:
`{"event", "phase", "step", "time_s", ...scalars}` where `phase` is the description of the
last "start" event, `step` the sum of the "advance" counts since it (iterations, energy
evaluations: the phase's unit), `time_s` seconds since the stream opened; "log" lines carry the
message; the scalars are the event's numbers (loss, accept, ESS, evaluations spent), non-finite
ones as null.

The TensorBoard writer (`torch.utils.tensorboard`, which needs the optional `tensorboard`
package: `pip install -e ".[tensorboard]"`) writes each scalar of an "advance" event as
`PHASE/NAME` at the phase's step (losses, acceptance, evaluations spent, as the sampler reports
them), and `write_summary` the run's final metrics as `summary/NAME`.

>>> import io, json
>>> seen, buffer = [], io.StringIO()
>>> stream = MetricsStream(buffer, lambda event, **info: seen.append(event))
>>> stream("start", total=10, unit="step", description="mala")
>>> stream("advance", n=5, accept=0.5, state="ignored")
>>> json.loads(buffer.getvalue().splitlines()[1])["accept"], seen
(0.5, ['start', 'advance'])
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TextIO

from boltzkit.core.callback import Callback, null_callback
from boltzkit.core.errors import UsageError

METRICS_STREAM = "metrics.jsonl"


def scalars(info: dict[str, Any]) -> dict[str, float | int | None]:
    """The numeric entries of an event (0-d tensors and numpy scalars included; bools and text
    left out; non-finite floats as None)."""
    out: dict[str, float | int | None] = {}
    for key, value in info.items():
        if key == "n" or isinstance(value, bool | str):
            continue
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        if isinstance(value, int):
            out[key] = value
        elif isinstance(value, float):
            out[key] = value if math.isfinite(value) else None
    return out


class _Phases:
    """The current phase (description of the last "start") and its step count."""

    def __init__(self) -> None:
        self.phase, self.step = "", 0

    def update(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            self.phase, self.step = str(info.get("description", "")), 0
        elif event == "advance":
            self.step += int(info.get("n", 1))


class MetricsStream:
    """Appends every "start", "advance" and "log" event to a JSON-lines file, then passes the
    event on to `inner`."""

    def __init__(self, target: str | Path | TextIO, inner: Callback = null_callback) -> None:
        self._owned = isinstance(target, str | Path)
        self._fh: TextIO = open(target, "a", encoding="utf-8") if self._owned else target
        self.inner, self._phases, self._t0 = inner, _Phases(), time.perf_counter()

    def __call__(self, event: str, **info: Any) -> None:
        self._phases.update(event, info)
        if event in ("start", "advance", "log"):
            line: dict[str, Any] = {"event": event, "phase": self._phases.phase,
                                    "step": self._phases.step,
                                    "time_s": round(time.perf_counter() - self._t0, 6)}
            if event == "log":
                line["message"] = str(info.get("message", ""))
            elif event == "start":
                line.update(total=info.get("total"), unit=str(info.get("unit", "")))
            line.update(scalars(info))
            self._fh.write(json.dumps(line, allow_nan=False, default=str) + "\n")
            self._fh.flush()
        self.inner(event, **info)

    def close(self) -> None:
        if self._owned:
            self._fh.close()


class TensorBoardWriter:
    """Writes the scalars of every "advance" event to a TensorBoard log directory as
    `PHASE/NAME` at the phase's step, then passes the event on to `inner`."""

    def __init__(self, log_dir: str | Path, inner: Callback = null_callback) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError('--tensorboard needs the tensorboard package: pip install '
                             'tensorboard (or pip install -e ".[tensorboard]")') from None
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.inner, self._phases = inner, _Phases()

    def __call__(self, event: str, **info: Any) -> None:
        self._phases.update(event, info)
        if event == "advance":
            prefix = f"{self._phases.phase}/" if self._phases.phase else ""
            for key, value in scalars(info).items():
                if value is not None:
                    self.writer.add_scalar(prefix + key, value, self._phases.step)
        elif event == "log":
            self.writer.add_text("log", str(info.get("message", "")), self._phases.step)
        elif event == "end":
            self.writer.flush()
        self.inner(event, **info)

    def close(self) -> None:
        self.writer.close()


def write_summary(log_dir: str | Path, metrics: dict[str, Any]) -> None:
    """The finished run's scalar metrics (ESS, log Z, distances, evaluations spent as
    `count_*`) as `summary/NAME` at step 0 of the TensorBoard log in `log_dir`."""
    writer = TensorBoardWriter(log_dir).writer
    for key, value in scalars(metrics).items():
        if value is not None:
            writer.add_scalar(f"summary/{key}", value, 0)
    writer.close()


@contextmanager
def track(callback: Callback, run_dir: str | Path, tensorboard: str | Path | None = None
          ) -> Iterator[Callback]:
    """`callback` wrapped by a metrics.jsonl stream in `run_dir` and, when `tensorboard` names
    a directory, a TensorBoard writer into it; the files are closed on exit."""
    with ExitStack() as stack:
        if tensorboard is not None:
            writer = TensorBoardWriter(tensorboard, callback)
            stack.callback(writer.close)
            callback = writer
        stream = MetricsStream(Path(run_dir) / METRICS_STREAM, callback)
        stack.callback(stream.close)
        yield stream


def read_stream(path: str | Path) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl file (a run directory or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_STREAM
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
