"""How failures become one-line errors: a checkpoint write that failed (a full disk, a
read-only file system) as an `EnvironmentProblem` naming the path and the cause, and an unknown
parameter of a target that takes none."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from boltzkit.app import rundir
from boltzkit.core.errors import EnvironmentProblem, UnknownName, UsageError
from boltzkit.core.files import describe_os_error


def write_failure(run_dir: Path, err: BaseException) -> EnvironmentProblem | None:
    """The EnvironmentProblem behind a failed checkpoint write (an OSError, or torch's
    "enforce fail at inline_container.cc" for a file it could not finish), None for other
    errors; removes the temporary files either way (the previous checkpoint is untouched)."""
    removed = rundir.remove_temporaries(run_dir)
    if isinstance(err, OSError):
        return EnvironmentProblem(f"cannot write {describe_os_error(err, run_dir)}")
    text = str(err)
    if "inline_container" not in text and "PytorchStreamWriter" not in text:
        return None
    where = removed[0].with_suffix("") if removed else run_dir
    cause = "no space left on device" if disk_full(run_dir) else text.splitlines()[0]
    return EnvironmentProblem(f"cannot write {where}: {cause}; the previous checkpoint is intact")


def disk_full(path: Path, margin: int = 1 << 20) -> bool:
    """Less than `margin` bytes free where `path` lives (torch does not say why a write failed)."""
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


@contextlib.contextmanager
def no_empty_parameter_list(name: str) -> Iterator[None]:
    """An unknown parameter of target `name` that takes none says so (not 'valid keys: ')."""
    try:
        yield
    except UnknownName as err:
        if err.kind != "target parameter" or err.valid:
            raise
        raise UsageError(f"unknown target parameter {err.name!r}: target {name!r} takes no "
                         "parameters") from None
