"""Atomic file writes that leave the previous file intact and no temporary file behind.

`atomic_write(path, data)` writes the bytes to `path.tmp` in the same directory, flushes them to
disk and renames the temporary file over `path` (`os.replace` is atomic on POSIX), so a reader
sees the old file or the new one, never half of one. Any failure (a full disk, a read-only file
system) removes the temporary file and raises `EnvironmentProblem` naming the path and the cause,
e.g. "cannot write run/x.pt: No space left on device". Serialising in memory first also turns
torch's opaque "enforce fail at inline_container.cc" into the operating system's error.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = atomic_write(d / "a.txt", b"hello")
>>> sorted(p.name for p in d.iterdir()), (d / "a.txt").read_bytes()
(['a.txt'], b'hello')
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from boltzkit.core.errors import EnvironmentProblem


def describe_os_error(err: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """'<path>: <cause>' for an OSError, e.g. 'out/run.json: Read-only file system'."""
    where = err.filename if err.filename is not None else path
    cause = err.strerror or str(err)
    return f"{where}: {cause}" if where is not None else cause


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike[str], data: bytes) -> Path:
    """Writes `data` to `path` through `path.tmp` and a rename (module docstring)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write(tmp, data)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise EnvironmentProblem(f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """`torch.save(obj)` into memory, then `atomic_write` (module docstring)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, buffer.getvalue())
