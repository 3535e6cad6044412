"""Optional compiled CPU kernels, built on first use with the system C++ compiler.

`egnn_kernel()` returns the fused EGNN edge kernel (`egnn_fused.cpp`): the inference forward
pass of one EGNN layer's edge part, tiled so that activations stay in cache. It is the same
function as the library-call path up to floating-point rounding. The build takes about a minute
once and is cached by torch in `~/.cache/torch_extensions` (or `$TORCH_EXTENSIONS_DIR`). When no
compiler is available, or `BOLTZKIT_NO_FUSED=1` is set, `egnn_kernel()` returns None and the
EGNN uses its library-call path; the reason is kept in `build_error()`.

>>> from boltzkit.models import fused
>>> fused.egnn_kernel() is None or hasattr(fused.egnn_kernel(), "egnn_edges")
True
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

_SOURCE = Path(__file__).with_name("egnn_fused.cpp")
_state: dict[str, ModuleType | str | None] = {}


def _flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU. The name carries the instruction set so
    that a build cache shared between machines never runs AVX2 code on a CPU without it."""
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    flags = ["-O3", "-fopenmp"]
    if capability.startswith("AVX"):
        flags += ["-mavx2", "-mfma"]
    return f"boltzkit_egnn_{capability.lower()}", flags


def _ninja_on_path() -> None:
    """torch's extension builder runs `ninja` from PATH; put the ninja wheel's binary there when
    the environment's bin folder is not (a venv used without activating it)."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path]) if path else ninja.BIN_DIR


def egnn_kernel() -> ModuleType | None:
    """The compiled EGNN edge kernel, or None when it cannot be built here (see `build_error`)."""
    if "module" in _state:
        return _state["module"]  # type: ignore[return-value]
    module, error = None, None
    if os.environ.get("BOLTZKIT_NO_FUSED", "") not in ("", "0"):
        error = "disabled by BOLTZKIT_NO_FUSED"
    else:
        try:
            from torch.utils import cpp_extension

            _ninja_on_path()
            name, flags = _flags()
            build = Path(cpp_extension._get_build_directory(name, False))
            if not (build / f"{name}.so").exists():  # a minute's silence otherwise
                print(f"boltzkit: building the fused EGNN kernel in {build} (first use only, "
                      "about a minute)", file=sys.stderr, flush=True)
            module = cpp_extension.load(name, [str(_SOURCE)], extra_cflags=flags,
                                        extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # no compiler, no ninja, failed build: fall back, say why
            lines = str(exc).strip().splitlines() or [""]
            keys = ("error:", "not found", "no such file")  # the compiler's own message
            first = next((ln for ln in lines if any(k in ln.lower() for k in keys)), lines[-1])
            error = f"{type(exc).__name__}: {first.strip()[:300]}"
            warnings.warn(f"boltzkit: fused EGNN kernel unavailable ({error}); using the "
                          "library-call path", RuntimeWarning, stacklevel=2)
    _state["module"], _state["error"] = module, error
    return module


def build_error() -> str | None:
    """Why `egnn_kernel()` returned None (None if it was built or not yet tried)."""
    return _state.get("error")  # type: ignore[return-value]
