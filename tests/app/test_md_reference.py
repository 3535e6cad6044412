"""MD references (app/md_reference.py): frames, energies and constraints of a short Langevin
run, reproducibility, and the configurational temperature of the frames (theta = 1 within 5 SE
at the bath temperature; frames from a 33 % hotter bath must fail)."""

import pytest
import torch

openmm = pytest.importorskip("openmm")

from boltzkit.app.md_reference import MDConfig, run_md, summarise  # noqa: E402
from boltzkit.evaluate.thermo import configurational_temperature  # noqa: E402
from boltzkit.targets.molecules import aldp, aldp_fab  # noqa: E402

SHORT = MDConfig(n_frames=20, steps_per_frame=50, n_equilibration_steps=200, seed=3)


def test_short_md_frames_energies_and_constraints():
    target = aldp()
    calls = []
    md = run_md(target, SHORT, progress=lambda done, total: calls.append((done, total)))
    assert md.positions.shape == (20, 66) and md.positions.dtype == torch.float64
    assert md.n_steps == 200 + 20 * 50 and calls[-1] == (20, 20) and len(calls) == 20
    assert md.config["timestep_fs"] == 2.0 and md.config["temperature_K"] == 300.0
    # OpenMM's CPU platform (mixed precision) against the float64 torch energy
    torch.testing.assert_close(target.potential_energy(md.positions), md.potential_energy,
                               rtol=1e-5, atol=1e-3)
    atoms = md.positions.view(-1, 22, 3)
    for i, j, length in target.molecule.constraints:
        r = (atoms[:, i] - atoms[:, j]).norm(dim=-1)
        assert ((r - length).abs() / length).max() < 1e-4
    again = run_md(target, SHORT)
    torch.testing.assert_close(again.positions, md.positions, rtol=0, atol=1e-6)
    facts = summarise(target, md, n_blocks=4)
    assert facts["n_frames"] == 20 and facts["d_alanine_fraction"] == 0.0
    assert facts["energy_mean_kJ_mol"] == pytest.approx(float(md.potential_energy.mean()))
    assert facts["energy_mean_se_batch_means"] > 0 and facts["steps_per_second"] > 0
    assert 0 <= facts["phi_positive_fraction"] <= 1


def test_unconstrained_system_gets_a_short_step_and_its_temperature_from_the_target():
    md = run_md(aldp_fab(450.0).tempered(2.0), MDConfig(n_frames=2, steps_per_frame=10,
                                                        n_equilibration_steps=0))
    assert md.config["timestep_fs"] == 0.5 and md.config["temperature_K"] == 900.0
    with pytest.raises(ValueError, match="invalid MD settings"):
        run_md(aldp(), MDConfig(n_frames=-1))


@pytest.mark.slow  # about 70 s on a loaded 2-core machine, nearly all of it the Laplacians
def test_configurational_temperature_of_md_frames_and_a_hotter_bath_fails():
    """aldp-fab (no constraints, so the Cartesian identity E|grad U|^2 = E lap U holds)."""
    target = aldp_fab()
    config = MDConfig(n_frames=300, steps_per_frame=100, n_equilibration_steps=2000, seed=1)
    theta = configurational_temperature(target, run_md(target, config).positions)
    assert abs(theta.mean - 1) < 5 * theta.se
    hot = run_md(target, MDConfig(**{**config.__dict__, "temperature_K": 400.0}))
    theta_hot = configurational_temperature(target, hot.positions)
    assert abs(theta_hot.mean - 1) > 5 * theta_hot.se
