"""Callbacks that the CLI attaches to samplers and experiments (protocol:
`boltzkit.samplers.Callback`). Library code stays quiet; these show rich progress bars and keep a
plain-text log.

Events: "start" (total, unit, description), "advance" (n, plus scalars to show), "log"
(message), "end".

>>> lines = []
>>> with RichProgress(log=lines.append, enabled=False) as cb:
...     cb("start", total=10, unit="evals", description="mala")
...     cb("advance", n=10, acceptance=0.57)
...     cb("log", message="hello")
>>> lines[1]
'hello'
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from boltzkit.core.errors import UsageError


def _format_scalars(info: dict[str, Any]) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        parts.append(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class RichProgress:
    """Rich progress bars, one task per "start" event; "log" messages print above the bars.

    Use as a context manager so that the live display is torn down on errors:

        with RichProgress(console) as cb:
            sampler.sample(target, config, ..., callback=cb)
    """

    def __init__(self, console: Console | None = None, *, log: Callable[[str], None] | None = None,
                 enabled: bool = True) -> None:
        self.console = console or Console(stderr=True, log_path=False)
        self.enabled = enabled
        self._log = log
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[unit]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[scalars]}"),
            console=self.console,
            transient=False,
            disable=not enabled,
        )
        self._task: TaskID | None = None
        self._started = False

    def __enter__(self) -> RichProgress:
        self._progress.start()
        self._started = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()
        self._started = False

    def __call__(self, event: str, **info: Any) -> None:
        if event == "start":
            total = info.get("total")
            total = None if total is None or not math.isfinite(float(total)) else float(total)
            self._task = self._progress.add_task(
                str(info.get("description", "")), total=total, unit=str(info.get("unit", "")),
                scalars="")
            if self._log:
                self._log(f"start: {info.get('description', '')} "
                          f"(total {info.get('total')} {info.get('unit', '')})")
        elif event == "advance":
            if self._task is None:
                self("start", total=None, unit="", description="")
            n = info.pop("n", 1)
            assert self._task is not None
            self._progress.update(self._task, advance=n, scalars=_format_scalars(info))
        elif event == "log":
            message = str(info.get("message", ""))
            if self.enabled:
                self._progress.console.log(message)
            if self._log:
                self._log(message)
        elif event == "end":
            # the bar stays where the run got to: a run stopped early shows it
            done = ""
            if self._task is not None:
                task = self._progress.tasks[-1]
                total = "" if task.total is None else f" of {task.total:,.0f}"
                done = f": {task.completed:,.0f}{total} {task.fields.get('unit', '')}".rstrip()
                self._progress.stop_task(self._task)
            if self._log:
                self._log(f"end{done}")
            self._task = None


class LogFile:
    """A timestamped append-only text log (the run directory's `log.txt`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO = self.path.open("a", encoding="utf-8")

    def write(self, message: str) -> None:
        """Appends one line with the wall-clock time."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in str(message).splitlines() or [""]:
            self._fh.write(f"{stamp}  {line}\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> LogFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A user error was already explained in one line; anything else is a bug, whose
        # traceback the log keeps (it still propagates to the terminal).
        if exc is not None and not isinstance(exc, UsageError | SystemExit | KeyboardInterrupt):
            self.write("unexpected error (a bug in boltzkit or a sampler; please report it "
                       "with this log):\n"
                       + "".join(traceback.format_exception(exc_type, exc, tb)))
        self.close()
