"""Every registered target follows its input's device: log_prob, score, tempered copies and,
after `Target.to(device)`, exact samples; `to` moves every tensor the target holds."""

from __future__ import annotations

import pytest
import torch
from tests.devices.guard import assert_on, strict, tensors_in

from boltzkit import targets
from boltzkit.targets.base import Target

# aldp and aldp-fab (OpenMM contexts, CPU-only, slow to build) are checked in tests/targets.
NAMES = [n for n in targets.names() if not n.startswith("aldp")]


def build(name: str) -> Target:
    try:
        return targets.get(name)
    except ImportError as err:  # aldp / aldp-fab without OpenMM
        pytest.skip(f"{name} needs an optional dependency: {err}")


def start(target: Target, device: str, n: int = 6) -> torch.Tensor:
    """A few configurations where log_prob is finite-ish, float64 on `device`."""
    x = target.sample(n) if target.has_exact_samples else 0.5 * torch.randn(
        n, target.dim, dtype=torch.float64)
    return target.remove_com(x.to(torch.float64)).to(device)


@pytest.mark.parametrize("name", NAMES)
def test_target_follows_its_input(name: str, device: str) -> None:
    target = build(name).to(device)
    x = start(target, device)
    with strict(device):
        lp = target.log_prob(x)
        lp2, score = target.log_prob_and_score(x)
        hot = target.tempered(2.0).log_prob(x)
        energy = target.energy(x)
        samples = target.sample(5) if target.has_exact_samples else None
    assert lp.shape == (6,) and score.shape == x.shape
    torch.testing.assert_close(lp, lp2)
    assert_on((lp, score, hot, energy, samples), device)


@pytest.mark.parametrize("name", NAMES)
def test_to_moves_every_tensor(name: str) -> None:
    target = build(name)
    moved = target.to("meta")
    held = list(tensors_in(vars(moved)))
    assert all(t.device.type == "meta" for t in held), [t.device for t in held]
    assert moved.device == torch.device("meta") and target.device == torch.device("cpu")
    assert moved.counter is target.counter
    assert all(t.device.type == "cpu" for t in tensors_in(vars(target))), "to() moved the original"
