"""A full disk (issue 11, finding 4): one line naming the path and "no space left on device",
exit 1, the previous checkpoint intact and no temporary file left. A real full disk (a tiny
tmpfs) where this machine lets the test mount one, and a writer made to fail with ENOSPC."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

RUN = ("--quiet", "--no-figures", "--n-samples", 200)


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def _no_temporaries(run: Path) -> None:
    assert not list(run.glob("*.tmp")), sorted(p.name for p in run.iterdir())


def test_full_disk_when_writing_metrics_keeps_the_old_file(bk: Any, mala_run: Path,
                                                           tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from boltzkit.core import files  # the atomic writer's last step, made to fail

    run = Path(shutil.copytree(mala_run, tmp_path / "run"))
    before = (run / "metrics.json").read_bytes()
    monkeypatch.setattr(files, "_write", _enospc)
    result = bk.cli("evaluate", run, "--no-figures")
    bk.error(result, 1, f"cannot write {run / 'metrics.json'}: No space left on device")
    assert (run / "metrics.json").read_bytes() == before
    _no_temporaries(run)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(bk: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The second checkpoint write fails half-way with ENOSPC (the bytes reach the temporary
    file, then the disk is full)."""
    from boltzkit.core import files

    real_write, calls = files._write, []

    def write(path: Path, data: bytes) -> None:
        if not str(path).endswith(".pt.tmp"):
            return real_write(path, data)
        calls.append(path)
        if len(calls) < 2:
            return real_write(path, data)
        Path(path).write_bytes(data[: len(data) // 2])
        _enospc()

    monkeypatch.setattr(files, "_write", write)
    out = tmp_path / "run"
    result = bk.cli("sample", "gmm40", "--sampler", "mala", "--budget", 20_000, "--out", out,
                    *RUN)
    bk.error(result, 1, "No space left on device")
    assert len(calls) >= 2
    checkpoints = list(out.glob("*checkpoint*.pt"))
    assert len(checkpoints) == 1 and isinstance(torch.load(checkpoints[0], weights_only=False),
                                                dict)
    _no_temporaries(out)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 48 KiB tmpfs, where `mount` is allowed (root on Linux); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)],
                             capture_output=True, check=False) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        # lazy: a failed torch.save may still hold the file open until it is collected
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk(bk: Any, tiny_disk: Path) -> None:
    out = tiny_disk / "run"
    result = bk.cli("sample", "dw4", "--sampler", "mala", "--budget", 2_000_000, "--out", out,
                    *RUN)
    bk.error(result, 1)
    assert "no space left on device" in result.output.lower(), result.output
    assert str(tiny_disk) in " ".join(result.output.split())
    for checkpoint in out.glob("*checkpoint*.pt"):
        assert isinstance(torch.load(checkpoint, weights_only=False), dict)
    _no_temporaries(out)
