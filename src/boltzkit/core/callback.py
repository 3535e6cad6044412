"""The progress/logging hook every layer may accept; library code never logs by itself.

The CLI attaches one (progress bars, the run's log); the default does nothing.
"""

from __future__ import annotations

from typing import Any, Protocol


class Callback(Protocol):
    """Progress/logging hook attached by the CLI; library code never logs by itself.

    Events: "start" (total: int, unit: str, description: str), "advance" (n: int, plus any
    scalars to show), "log" (message: str), "end".
    """

    def __call__(self, event: str, **info: Any) -> None: ...


def null_callback(event: str, **info: Any) -> None:
    """The default callback: does nothing."""
