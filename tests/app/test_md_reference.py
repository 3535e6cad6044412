"""MD references (app/md_reference.py): frames, energies and constraints of a short Langevin
run, reproducibility, and the configurational temperature of the frames (theta = 1 within 5 SE
at the bath temperature; frames from a 33 % hotter bath must fail)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from boltzkit.core.errors import UnknownName

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


def test_ladder_and_exchange_criterion():
    from boltzkit.app.replica_exchange import K_B, ladder, log_acceptance

    temps = ladder(300.0, 600.0, 4)
    assert temps[0] == 300.0 and temps[-1] == pytest.approx(600.0)
    assert temps[1] / temps[0] == pytest.approx(temps[3] / temps[2])
    assert ladder(300.0, 600.0, 1) == [300.0]
    with pytest.raises(ValueError, match="must exceed"):
        ladder(300.0, 200.0, 3)
    b0, b1 = 1 / (K_B * 300), 1 / (K_B * 600)
    # the hot replica holding the lower energy: always accepted; else exp(-dbeta dE)
    assert log_acceptance(b0, b1, -50.0, -60.0) > 0
    assert log_acceptance(b0, b1, -60.0, -50.0) == pytest.approx(-(b0 - b1) * 10.0)


def test_replica_exchange_run_and_checkpoint_resume_give_the_uninterrupted_frames(tmp_path):
    target = aldp()
    config = MDConfig(n_frames=16, steps_per_frame=20, n_equilibration_steps=50, seed=5,
                      n_replicas=2, temperature_max_K=400.0, checkpoint_every_frames=5)
    full = run_md(target, config)
    assert full.n_steps == 2 * (50 + 16 * 20) and full.config["temperatures_K"] == [300.0, 400.0]
    assert 0 < full.config["exchange_rates"][0] <= 1
    ckpt = tmp_path / "run.checkpoint.npz"

    def stop_at_11(done, total):
        if done == 11:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_md(target, config, progress=stop_at_11, checkpoint=ckpt)
    assert ckpt.exists()
    seen = []
    resumed = run_md(target, config, progress=lambda d, t: seen.append(d), checkpoint=ckpt)
    assert seen[0] == 11 and seen[-1] == 16 and not ckpt.exists()
    torch.testing.assert_close(resumed.positions, full.positions, rtol=0, atol=1e-6)
    assert resumed.config["exchange_rates"] == full.config["exchange_rates"]
    # an interrupt in the middle of a frame's steps: the checkpoint holds the last whole frame
    from boltzkit.app import replica_exchange

    original, calls = replica_exchange.Replicas.step, []

    def half_then_interrupt(self, n_steps):
        calls.append(n_steps)
        if len(calls) == 8:
            original(self, n_steps // 2)
            raise KeyboardInterrupt
        original(self, n_steps)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replica_exchange.Replicas, "step", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_md(target, config, checkpoint=ckpt)
    resumed = run_md(target, config, checkpoint=ckpt)
    torch.testing.assert_close(resumed.positions, full.positions, rtol=0, atol=1e-6)
    other = MDConfig(**{**config.__dict__, "seed": 6})
    with pytest.raises(KeyboardInterrupt):
        run_md(target, config, progress=stop_at_11, checkpoint=ckpt)
    with pytest.raises(ValueError, match="other MD settings"):
        run_md(target, other, checkpoint=ckpt)


def test_md_reference_is_cached_fingerprinted_and_reports_its_checks(tmp_path):
    from boltzkit.app import reference

    events = []
    sets = ["steps_per_frame=10", "n_equilibration_steps=20"]
    made = reference.make_reference("aldp", 12, sets=sets, cache=tmp_path,
                                    callback=lambda e, **i: events.append(e))
    assert made.samples.shape == (12, 66) and events[0] == "start" and events[-1] == "end"
    assert events.count("advance") == 12
    meta, checks = made.metadata, made.metadata["checks"]
    assert meta["method"].startswith("OpenMM") and meta["counts"]["n_force_evals"] == 140
    for key in ("energy_mean_kJ_mol", "energy_mean_se_batch_means", "phi_positive_fraction",
                "phi_positive_fraction_se_batch_means", "configurational_temperature"):
        assert key in checks
    assert "H-bond constraints" in checks["configurational_temperature_note"]
    again = reference.make_reference("aldp", 12, sets=sets, cache=tmp_path,
                                     callback=lambda e, **i: events.append(e))
    assert len(events) == 14  # from the cache: no new events
    torch.testing.assert_close(again.samples, made.samples)
    assert reference.cached_path("aldp", aldp(), tmp_path) == Path(meta["path"])
    assert reference.cached_path("aldp", aldp(310.0), tmp_path) is None
    assert reference.cached_path("aldp-fab", None, tmp_path) is None
    with pytest.raises(UnknownName):
        reference.make_reference("aldp", 12, sets=["replicas=4"], cache=tmp_path)


@pytest.mark.slow  # about 60 s on a loaded 2-core machine
def test_replica_exchange_energy_mean_matches_plain_md_and_always_swapping_fails(monkeypatch):
    """300 K energy mean of RE (4 replicas to 600 K) vs plain MD, within 5 combined SEs;
    accepting every exchange heats the 300 K replica and must fail."""
    from boltzkit.app import replica_exchange

    target = aldp()
    plain_config = MDConfig(n_frames=200, steps_per_frame=50, n_equilibration_steps=1000,
                            seed=1)
    re_config = MDConfig(**{**plain_config.__dict__, "seed": 2, "n_replicas": 4,
                            "temperature_max_K": 600.0})

    def z_score(a, b):
        fa, fb = summarise(target, a, 10), summarise(target, b, 10)
        se = (fa["energy_mean_se_batch_means"] ** 2 + fb["energy_mean_se_batch_means"] ** 2)
        return abs(fa["energy_mean_kJ_mol"] - fb["energy_mean_kJ_mol"]) / se**0.5

    plain = run_md(target, plain_config)
    assert z_score(run_md(target, re_config), plain) < 5
    monkeypatch.setattr(replica_exchange, "log_acceptance", lambda *args: 0.0)
    assert z_score(run_md(target, re_config), plain) > 5


def test_cli_reference_of_a_molecule_takes_a_temperature_and_says_what_is_wrong(tmp_path,
                                                                               monkeypatch):
    from typer.testing import CliRunner

    from boltzkit.cli import app

    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path))
    runner = CliRunner()
    ok = runner.invoke(app, ["reference", "aldp-fab", "--temperature", "350", "--n-samples",
                             "4", "--set", "steps_per_frame=5", "--set",
                             "n_equilibration_steps=0", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert "energy_mean_kJ_mol" in ok.output and list(tmp_path.rglob("aldp-fab-*.npz"))
    for args, says in ((["dw4", "--temperature", "2"], "temperature parameter"),
                       (["aldp", "--set", "seed=3"], "--seed"),
                       (["aldp", "--temperature", "300", "--target-param", "temperature=310"],
                        "once")):
        bad = runner.invoke(app, ["reference", *args, "--n-samples", "2", "--quiet"])
        assert bad.exit_code == 2 and says in bad.output, bad.output


def test_cli_pt_on_aldp_fab_writes_molecular_metrics_and_figures(
        tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from boltzkit.cli import app

    monkeypatch.setenv("BOLTZKIT_CACHE", str(tmp_path / "cache"))
    reference = tmp_path / "ref.npy"
    base = aldp_fab().positions
    gen = torch.Generator().manual_seed(0)
    np.save(reference, (base + 0.002 * torch.randn(60, 66, generator=gen,
                                                   dtype=torch.float64)).numpy())
    runner = CliRunner()
    out = tmp_path / "run"
    ok = runner.invoke(app, ["sample", "aldp-fab", "--sampler", "pt", "--budget", "2e4",
                             "--n-samples", "50", "--out", str(out), "--reference",
                             str(reference), "--quiet", "--set", "n_chains=16"])
    assert ok.exit_code == 0, ok.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["d_alanine_fraction"] == 0.0 and "ramachandran_tv_30x30_floor" in metrics
    assert (out / "ramachandran.png").exists() and (out / "free_energy_phi.png").exists()
