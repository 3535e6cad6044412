"""The errors a user can cause, each a `UsageError` whose message says what is valid.

The CLI prints a `UsageError` as one line and exits with code 2, an `EnvironmentProblem` (a
file or file system that failed: corrupt, truncated, full, read-only) as one line naming the path
and the cause with exit code 1; anything else raised inside a sampler is a bug and keeps its
traceback. `UnknownName` carries the kind, the name and the valid
names so that callers can format or test them without matching message text.

>>> err = UnknownName("sampler", "malla", ["hmc", "mala"])
>>> str(err)
"unknown sampler 'malla'; valid samplers: hmc, mala"
>>> err.valid
('hmc', 'mala')
"""

from __future__ import annotations

from collections.abc import Iterable


class UsageError(ValueError):
    """A bad name, key, value or file given by the user; the message lists the valid choices."""


class UnknownName(UsageError, KeyError):
    """A name that is not registered: `kind` ("target", "sampler", "preset", "experiment",
    "config key", ...), the `name` given and the `valid` names. Also a `KeyError`, as a failed
    look-up."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], plural: str | None = None
                 ) -> None:
        self.kind, self.name, self.valid = kind, name, tuple(valid)
        listed = ", ".join(self.valid) or "none"
        super().__init__(f"unknown {kind} {name!r}; valid {plural or kind + 's'}: {listed}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EnvironmentProblem(Exception):
    """A file or the file system failed, not the user's arguments: a corrupt or truncated run
    file, no space left on device, a read-only file system. The message names the path and the
    cause (exit code 1)."""
