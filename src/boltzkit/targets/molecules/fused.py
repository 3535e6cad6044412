"""The optional compiled CPU kernel of the torch backend (`forcefield_fused.cpp`).

`energy_and_grad(x, ff)` computes E and dE/dx of `energy.energy` with hand-derived gradients,
32 configurations at a time laid out [coordinate][configuration] so that every loop over
force-field terms vectorises across configurations, blocks spread over torch's threads: the
backend's fast path for CPU tensors that need no autograd graph (about 1.5-1.7 us of CPU time
per configuration in float32, 3.0-3.3 us in float64, on a loaded AVX-512 machine;
BENCHMARKS.md, "Alanine dipeptide energy throughput", `--baseline` for a before/after).
Computed in x's dtype; built with -ffast-math (sums reassociated, rounding at the level of the
dtype's epsilon), compared with the autograd of `energy.py` in the tests.

Built on first use with the system C++ compiler (about a minute, cached by torch in
`~/.cache/torch_extensions` or `$TORCH_EXTENSIONS_DIR`).
Without a compiler, or with `BOLTZKIT_NO_FUSED=1`, `kernel()` returns None and the backend uses
plain tensor ops with autograd; `build_error()` says why.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from boltzkit.targets.molecules.parameters import ForceField

_SOURCE = Path(__file__).with_name("forcefield_fused.cpp")
_state: dict[str, ModuleType | str | None] = {}
_AVX2 = ["-mavx2", "-mfma"]
_ISA_FLAGS = {"avx2": _AVX2, "avx512": _AVX2 + ["-mavx512f", "-mavx512dq", "-mavx512vl",
                                                 "-mavx512bw", "-mprefer-vector-width=512"]}


def kernel() -> ModuleType | None:
    """The compiled module, or None when it cannot be built here (see `build_error`)."""
    if "module" not in _state:
        _state["module"], _state["error"] = _build()
    return _state["module"]  # type: ignore[return-value]


def build_error() -> str | None:
    """Why `kernel()` returned None (None if it was built or not yet tried)."""
    return _state.get("error")  # type: ignore[return-value]


def _build() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("BOLTZKIT_NO_FUSED", "") not in ("", "0"):
        return None, "disabled by BOLTZKIT_NO_FUSED"
    try:
        capability = torch.backends.cpu.get_cpu_capability().lower()
        # one build per instruction set
        return compile_kernel(f"boltzkit_forcefield_{capability}", _SOURCE), None
    except Exception as exc:  # no compiler, no ninja, failed build: fall back, say why
        lines = str(exc).strip().splitlines() or [""]
        error = f"{type(exc).__name__}: {lines[-1].strip()[:300]}"
        warnings.warn(f"boltzkit: fused force-field kernel unavailable ({error}); using "
                      "tensor ops with autograd", RuntimeWarning, stacklevel=3)
        return None, error


def compile_kernel(name: str, source: Path) -> ModuleType:
    """Builds (or loads from torch's cache) the extension `name` from the C++ file `source`
    with this module's flags: -O3 -ffast-math -fopenmp and the instruction set torch detected
    on this CPU (AVX2 or AVX-512; none beyond SSE2 otherwise), so that a cached build never
    runs on a CPU without those instructions. Also used by benchmarks/aldp_energy.py to build
    an older kernel from git for a before/after comparison."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability().lower()
    # fast-math: the pair loops vectorise with libmvec's log/exp (forcefield_fused.cpp)
    flags = ["-O3", "-ffast-math", "-fopenmp"] + _ISA_FLAGS.get(capability, [])
    build = Path(cpp_extension._get_build_directory(name, False))
    if not (build / f"{name}.so").exists():
        print(f"boltzkit: building the fused force-field kernel in {build} (first use "
              "only, about a minute)", file=sys.stderr, flush=True)
    # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds (serial without it)
    return cpp_extension.load(name, [str(source)], extra_cflags=flags,
                              extra_ldflags=["-fopenmp"], verbose=False)


def _ninja_on_path() -> None:
    # torch's extension builder runs `ninja` from PATH (a venv used without activating it)
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path]) if path else ninja.BIN_DIR


def energy_and_grad(module: ModuleType, x: Tensor, ff: ForceField, need_grad: bool
                    ) -> tuple[Tensor, Tensor | None]:
    """(E `[b]`, dE/dx `[b, n, 3]` or None) for CPU x `[b, n, 3]` (float32 or float64),
    computed in x's dtype (ff is cast to it when it is not)."""
    if ff.nb_qq.dtype != x.dtype:
        ff = ff.to(x.device, x.dtype)
    gb = ff.gb
    empty = x.new_empty(0)
    ints = [ff.bonds, ff.angles, ff.torsions, ff.pairs, ff.nb_pair]
    reals = [ff.bond_length, ff.bond_k, ff.angle_theta, ff.angle_k, ff.torsion_n,
             ff.torsion_phase, ff.torsion_k, ff.nb_qq, ff.nb_sigma, ff.nb_epsilon]
    reals += [gb.charge, gb.offset_radius, gb.scaled_radius] if gb else [empty] * 3
    scalars = ([1.0, float(gb.engulf), gb.prefactor, gb.alpha, gb.beta, gb.gamma, gb.offset,
                gb.sa_factor, gb.probe] if gb else [0.0] * 9)
    e, grad = module.energy_and_grad(x.contiguous(), [t.contiguous() for t in ints],
                                     [t.contiguous() for t in reals], scalars, need_grad)
    return e, grad if need_grad else None
