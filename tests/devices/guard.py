"""The device guard shared by tests/devices: where a module's tensors land.

`strict(device)` makes a tensor created without an explicit device land somewhere its inputs are
not. On CPU inputs it sets the default device to `meta`: a factory call without `device=` then
returns a meta tensor, and any op mixing it with a CPU tensor raises ("Tensor on device meta is
not on the expected device cpu"), or the module's output ends up on meta, which `assert_on`
catches. On CUDA inputs the default device stays CPU, so the same forgotten `device=` mixes CPU
and CUDA tensors and raises (torch lets 0-dim CPU tensors through there, so the CPU run under
meta is the stricter check). CI has no GPU: there the "cuda" cases are skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]  # the cuda cases show as skipped on CPU


@contextlib.contextmanager
def strict(device: str) -> Iterator[None]:
    """Default device = somewhere the inputs on `device` are not (meta for CPU, CPU for CUDA)."""
    elsewhere = "meta" if torch.device(device).type == "cpu" else "cpu"
    with torch.device(elsewhere):
        yield


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a (nested) tuple, NamedTuple, list, dict or tensor."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)


def assert_on(value: Any, device: str) -> None:
    """Every tensor in `value` lives on `device` (its type: cuda and cuda:0 are alike)."""
    found = [t.device for t in tensors_in(value) if t.device.type != torch.device(device).type]
    assert not found, f"tensors on {sorted({str(d) for d in found})}, expected {device}"
