"""The post-run sanity check: silent on exact samples, loud on clearly wrong ones."""

from __future__ import annotations

import torch

from boltzkit import targets
from boltzkit.evaluate import sanity
from boltzkit.evaluate.evaluation import evaluate


def check(x: torch.Tensor, target, reference: torch.Tensor) -> list[str]:
    metrics = evaluate(x, target, reference=reference, generator=torch.Generator().manual_seed(1))
    finite = x[torch.isfinite(x).all(dim=1)]
    return sanity.warnings_for(metrics, target.energy(finite), target.energy(reference),
                               target.typical_energy_max)


def test_exact_samples_raise_no_warning() -> None:
    target = targets.get("gmm40")
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        x, ref = target.sample(1000, generator=g), target.sample(2000, generator=g)
        assert check(x, target, ref) == []


def test_samples_from_the_wrong_temperature_are_flagged() -> None:
    target = targets.get("gmm40")
    g = torch.Generator().manual_seed(0)
    ref = target.sample(2000, generator=g)
    hot = ref[:1000] + 3.0 * torch.randn(1000, 2, generator=g, dtype=ref.dtype)
    found = check(hot, target, ref)
    assert any("outside the reference's whole range" in w for w in found)
    assert any("noise floor" in w for w in found)


def test_nonfinite_samples_and_degenerate_weights_are_flagged() -> None:
    metrics = {"n_samples": 90.0, "n_nonfinite_samples": 10.0, "ess_fraction": 0.002}
    found = sanity.warnings_for(metrics, torch.zeros(90), None, None)
    assert found[0].startswith("10 of 100 samples") and "degenerate" in found[1]


def test_positive_lennard_jones_energies_are_flagged() -> None:
    lj = targets.get("lj13")
    assert lj.typical_energy_max == 0.0
    exploded = torch.full((50,), 1e6, dtype=torch.float64)
    assert any("above 0" in w for w in sanity.warnings_for({}, exploded, None, 0.0))
    bound = torch.full((50,), -40.0, dtype=torch.float64)
    assert sanity.warnings_for({}, bound, None, 0.0) == []


def test_warnings_on_weighted_samples_say_they_concern_the_proposals() -> None:
    metrics = {"ess_fraction": 0.2}
    exploded = torch.full((50,), 1e6, dtype=torch.float64)
    (warning,) = sanity.warnings_for(metrics, exploded, None, 0.0)
    assert "above 0" in warning and "unweighted proposals" in warning
    # the energy W2 metric already judges the weighted law: no such note
    (w2,) = sanity.warnings_for({"energy_w2": 5.0, "energy_w2_floor": 0.1, "ess_fraction": 0.2},
                                torch.zeros(10), None, None)
    assert "noise floor" in w2 and "unweighted" not in w2


def test_weighted_samples_are_judged_by_the_law_their_weights_give() -> None:
    """Proposals from a wrong temperature with exact importance weights: the weighted set is
    the target's law, so energy W2 is near its floor; without the weights (broken) it is far."""
    target = targets.get("gmm40")
    g = torch.Generator().manual_seed(0)
    ref = target.sample(4000, generator=g)
    # a wide Gaussian proposal N(0, 40^2 I) with its exact log-density
    x = 40.0 * torch.randn(4000, 2, generator=g, dtype=torch.float64)
    log_q = -0.5 * (x / 40.0).square().sum(-1) - torch.log(torch.tensor(2 * torch.pi * 1600.0))
    log_w = target.log_prob(x) - log_q
    weighted = evaluate(x, target, reference=ref, log_w=log_w, max_ot=500,
                        generator=torch.Generator().manual_seed(1))
    plain = evaluate(x, target, reference=ref, max_ot=500,
                     generator=torch.Generator().manual_seed(1))
    assert weighted["energy_w2"] < 10 * weighted["energy_w2_floor"] < plain["energy_w2"]
