"""The alanine-dipeptide torch energy on a non-CPU device takes the library tensor path: the
compiled force-field kernel (`targets/molecules/forcefield_fused.cpp`) is CPU-only. `meta`
stands in for a GPU; the kernel is replaced by a tripwire, which a CPU input must reach (else
the check would pass vacuously). The same energy and forces run on CUDA where one is present.
The OpenMM context pool picks OpenMM's CUDA platform where OpenMM lists it, else CPU."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tests.devices.guard import CUDA, assert_on

pytest.importorskip("openmm")

from boltzkit import targets  # noqa: E402 - after the optional dependency is checked
from boltzkit.targets.molecules import fused  # noqa: E402


class Tripwire(Exception):
    """The compiled kernel was called."""


@pytest.fixture(scope="module")
def aldp() -> Any:
    return targets.get("aldp-fab")


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    def reached(*args: Any, **kwargs: Any) -> None:
        raise Tripwire

    monkeypatch.setattr(fused, "kernel", lambda: SimpleNamespace())
    monkeypatch.setattr(fused, "energy_and_grad", reached)


def test_a_cpu_input_reaches_the_compiled_kernel(aldp: Any, tripwire: None) -> None:
    x = aldp.positions.unsqueeze(0)
    with torch.no_grad(), pytest.raises(Tripwire):
        aldp.log_prob(x)
    with pytest.raises(Tripwire):
        aldp.log_prob_and_score(x)


def test_a_non_cpu_input_takes_the_tensor_path(aldp: Any, tripwire: None) -> None:
    """`_torch_chunks` is where log_prob and log_prob_and_score choose the path (their
    non-finite count reads a value, which meta tensors do not have)."""
    on_meta = aldp.to("meta")
    x = aldp.positions.expand(3, -1).to("meta")
    with torch.no_grad():
        e, none = on_meta._torch_chunks(x, need_grad=False)
    e2, grad = on_meta._torch_chunks(x, need_grad=True)
    assert none is None and e.shape == e2.shape == (3,) and grad.shape == x.shape
    assert_on((e, e2, grad), "meta")


@CUDA
def test_cuda_energy_and_forces_equal_the_cpu_ones(aldp: Any) -> None:
    x = aldp.positions.expand(4, -1) + 1e-3 * torch.randn(4, aldp.dim, dtype=torch.float64)
    lp, score = aldp.log_prob_and_score(x)
    lp_gpu, score_gpu = aldp.to("cuda").log_prob_and_score(x.to("cuda"))
    assert_on((lp_gpu, score_gpu), "cuda")
    torch.testing.assert_close(lp_gpu.cpu(), lp, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(score_gpu.cpu(), score, rtol=1e-7, atol=1e-7)


def _platforms(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> None:
    import openmm

    monkeypatch.setattr(openmm.Platform, "getNumPlatforms", staticmethod(lambda: len(names)))
    monkeypatch.setattr(openmm.Platform, "getPlatform",
                        staticmethod(lambda i: SimpleNamespace(getName=lambda: names[i])))


@pytest.mark.parametrize(("names", "chosen"), [(["Reference", "CPU"], "CPU"),
                                               (["Reference", "CPU", "CUDA", "OpenCL"], "CUDA")])
def test_the_openmm_pool_picks_cuda_where_openmm_has_it(
        monkeypatch: pytest.MonkeyPatch, names: list[str], chosen: str) -> None:
    from boltzkit.targets.molecules.openmm_pool import ContextPool, default_platform

    _platforms(monkeypatch, names)
    assert default_platform() == chosen
    assert ContextPool(None).platform == chosen and ContextPool(None, platform="Reference"
                                                                ).platform == "Reference"


@CUDA
def test_the_cuda_platform_agrees_with_the_cpu_one(aldp: Any) -> None:
    from boltzkit.targets.molecules.openmm_pool import ContextPool, default_platform

    if default_platform() != "CUDA":
        pytest.skip("this OpenMM has no CUDA platform (the openmm[cuda12] wheels add it)")
    x = (aldp.positions.reshape(1, -1, 3) + 1e-3 * torch.randn(8, aldp.n_particles, 3,
                                                                dtype=torch.float64)).numpy()
    cuda, cpu = ContextPool(aldp.molecule.system), ContextPool(aldp.molecule.system, 2, "CPU")
    assert cuda.platform == "CUDA"
    (e_gpu, f_gpu), (e_cpu, f_cpu) = cuda.evaluate(x), cpu.evaluate(x)
    assert abs(e_gpu - e_cpu).max() < 1e-3 * abs(e_cpu).max() + 1e-2  # mixed precision on both
    assert abs(f_gpu - f_cpu).max() < 1e-3 * abs(f_cpu).max() + 1e-1
