"""aldp on its free internal coordinates (targets/molecules/constrained.py).

The density must be that of constrained MD, exp(-U/kT) sqrt(det J^T M J) with J the Jacobian of
x(y, external) (Fixman 1974): tested against the brute-force mass-metric determinant from the
autograd Jacobian in float64, with a variant missing the constraint Gram term that must fail.
Also: H-bonds at their constrained lengths, the round trip, the score against autograd, that
tempering divides only the energy, the domain, counting, and `boltzkit sample aldp`.
"""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("openmm")

from boltzkit.targets.molecules import aldp  # noqa: E402
from boltzkit.targets.molecules.constrained import (  # noqa: E402
    ConstrainedInternalTarget,
    _masses,
)

F64 = torch.float64


@pytest.fixture(scope="module")
def space() -> ConstrainedInternalTarget:
    return ConstrainedInternalTarget(aldp())


def perturbed(space: ConstrainedInternalTarget, n: int, scale: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return space.initial_state() + scale * torch.randn(n, space.dim, generator=g, dtype=F64)


def brute_force_half_log_det_metric(space: ConstrainedInternalTarget, y: torch.Tensor,
                                    masses: torch.Tensor) -> torch.Tensor:
    """1/2 log det(J^T M J), J = d x / d(y, external) `[66, 54]` by autograd."""
    external = space._external
    out = []
    for row in y:
        def x_of(v: torch.Tensor) -> torch.Tensor:
            yy, ext = v[:space.dim], v[space.dim:]
            lengths = space.ic.constrained_lengths
            z = torch.cat([yy * space._scale + space._shift, lengths])[space._order]
            return space.ic.to_cartesian(z, ext)[0]

        jac = torch.autograd.functional.jacobian(x_of, torch.cat([row, external]))
        metric = jac.T @ (masses.repeat_interleave(3)[:, None] * jac)
        out.append(0.5 * torch.linalg.slogdet(metric)[1])
    return torch.stack(out)


def test_density_carries_the_mass_metric_of_constrained_md(space):
    y = perturbed(space, 6, 0.3)
    masses = _masses(space.target.molecule.system)
    brute = brute_force_half_log_det_metric(space, y, masses)
    x, log_det = space.to_cartesian(y)
    ours = log_det + space.log_mass_metric(x)
    # equal up to one constant (the standardisation, the fixed externals, the masses)
    diff = brute - ours
    assert float(diff.max() - diff.min()) < 1e-9
    # broken: without the constraints' Gram matrix the difference varies between configurations
    diff_broken = brute - log_det
    assert float(diff_broken.max() - diff_broken.min()) > 1e-6


def test_constrained_bonds_sit_at_their_lengths_and_the_round_trip_is_exact(space):
    y = perturbed(space, 16, 0.5)
    x = space.to_cartesian(y)[0].view(16, 22, 3)
    for i, j, length in space.target.molecule.constraints:
        torch.testing.assert_close((x[:, i] - x[:, j]).norm(dim=-1),
                                   torch.full((16,), length, dtype=F64), rtol=0, atol=1e-12)
    back = space.from_cartesian(x.reshape(16, 66))
    torch.testing.assert_close(space.wrap(back), space.wrap(y), rtol=0, atol=1e-10)
    assert space.dim == 66 - 6 - 12 and int(space.circular.sum()) == 19


def test_score_matches_autograd_and_tempering_divides_only_the_energy(space):
    y = perturbed(space, 32, 0.3, seed=1)
    lp, score = space.log_prob_and_score(y)
    leaf = y.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(space._log_prob(leaf).sum(), leaf)
    torch.testing.assert_close(lp, space.log_prob(y), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(score, auto, rtol=1e-8, atol=1e-7)
    hot = space.tempered(2.0)
    x, log_det = space.to_cartesian(y)
    log_jac = log_det + space.log_mass_metric(x)
    log_boltzmann = space.target.uncounted().log_prob(x)
    torch.testing.assert_close(hot.log_prob(y), log_boltzmann / 2 + log_jac)
    assert not torch.allclose(hot.log_prob(y), space.log_prob(y) / 2)  # not the naive power
    _, hot_score = hot.log_prob_and_score(y)
    leaf = y.clone().requires_grad_(True)
    (hot_auto,) = torch.autograd.grad(hot.log_prob(leaf).sum(), leaf)
    torch.testing.assert_close(hot_score, hot_auto, rtol=1e-8, atol=1e-7)


def test_outside_the_domain_is_minus_inf_and_every_evaluation_is_counted(space):
    fresh = space.uncounted()
    y = perturbed(space, 4, 0.1)
    bond = int(torch.nonzero(space.kinds == 0)[0])
    y[0, bond] = -1.0 / float(space._scale[bond]) - float(space._shift[bond])  # length < 0
    lp = fresh.log_prob(y)
    assert lp[0] == -math.inf and torch.isfinite(lp[1:]).all()
    _, score = fresh.log_prob_and_score(y)
    assert torch.isfinite(score).all()
    assert fresh.counter.n_energy == 8 and fresh.counter.n_grad == 4
    assert fresh.counter.n_nonfinite == 2
    # a diverged configuration (inf or NaN coordinates) is -inf and counted, never an exception
    y[1, 0], y[2, 5] = float("inf"), float("nan")
    lp = fresh.log_prob(y)
    assert lp[0] == lp[1] == lp[2] == -math.inf and torch.isfinite(lp[3])
    assert fresh.counter.n_nonfinite == 5


def test_cli_samples_aldp_in_internal_coordinates_and_writes_cartesian_frames(
        tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from boltzkit.cli import app

    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    ok = CliRunner().invoke(app, ["sample", "aldp", "--sampler", "pt", "--budget", "2e4",
                                  "--n-samples", "50", "--out", str(out), "--quiet",
                                  "--set", "n_chains=16"])
    assert ok.exit_code == 0, ok.output
    record = json.loads((out / "run.json").read_text())
    assert "aldp-internal" in record["sampled_in"]
    assert record["counts"]["n_energy"] <= 20000
    x = torch.as_tensor(np.load(out / "samples.npz")["samples"]).view(-1, 22, 3)
    assert x.shape[0] == 50
    for i, j, length in aldp().molecule.constraints:
        torch.testing.assert_close((x[:, i] - x[:, j]).norm(dim=-1).double(),
                                   torch.full((50,), length, dtype=F64), rtol=0, atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["d_alanine_fraction"] == 0.0


def test_temperature_derivative_by_autograd_matches_finite_differences(space):
    from boltzkit.targets.family import Family, action_derivative

    family = Family(space, "temperature")
    y = perturbed(space, 8, 0.2, seed=3)
    c = torch.full((8,), 0.7, dtype=F64)
    _, a = action_derivative(family, y, c)
    h = 1e-5
    fd = -(family.at(0.7 + h).log_prob(y) - family.at(0.7 - h).log_prob(y)) / (2 * h)
    torch.testing.assert_close(a, fd, rtol=1e-6, atol=1e-6)
    # A = -d/dc [-U/(kT c)] = -U/(kT c^2): the metric terms do not depend on c
    u_over_kt = -space.target.uncounted().log_prob(space.to_cartesian(y)[0])
    torch.testing.assert_close(a, -u_over_kt / 0.49, rtol=1e-10, atol=1e-8)


def test_the_ess_of_a_mismatched_flow_is_far_below_one_with_real_log_weights(space):
    from boltzkit.models import flow_objectives
    from boltzkit.models.flows import FlowConfig, make_flow

    circular = tuple(int(i) for i in torch.nonzero(space.circular))
    torch.manual_seed(0)
    data = space.wrap(perturbed(space, 256, 0.05))
    flow = make_flow(FlowConfig(dim=space.dim, kind="mixed", circular=circular, n_layers=2,
                                hidden=16), data).double()
    with torch.no_grad():
        _, log_w, _ = flow_objectives.reweight(flow, space.uncounted(), 512)
    assert flow_objectives.summarise_weights(log_w)["ess_fraction"] < 0.05
    # broken (TRADE's notebook): zeroed log-weights always give ESS/N = 1
    zeroed = flow_objectives.summarise_weights(torch.zeros_like(log_w))["ess_fraction"]
    assert zeroed == pytest.approx(1.0)
