"""Run-directory storage and reference loading (boltzkit.app.rundir), and the figure set."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from boltzkit.app import plots, rundir


def test_samples_round_trip_with_and_without_weights(tmp_path):
    x = torch.randn(50, 3, dtype=torch.float64)
    rundir.write_samples(tmp_path, x)
    y, log_w, log_Z = rundir.read_samples(tmp_path)
    assert np.array_equal(y, x.numpy()) and log_w is None and log_Z is None
    rundir.write_samples(tmp_path, x.float(), log_w=torch.zeros(50), log_Z=-1.5)
    y, log_w, log_Z = rundir.read_samples(tmp_path)
    assert y.dtype == np.float32 and log_w.shape == (50,) and log_Z == -1.5


def test_metrics_json_is_strict_and_lists_nonfinite_values(tmp_path):
    written = rundir.write_metrics(tmp_path, {"a": 1.0, "b": float("nan"), "c": -math.inf,
                                              "d": np.float32(2.5), "e": torch.tensor(3)})
    text = (tmp_path / "metrics.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert loaded == written
    assert loaded == {"a": 1.0, "b": None, "c": None, "d": 2.5, "e": 3,
                      "nonfinite_keys": ["b", "c"]}


def test_record_and_config_round_trip(tmp_path):
    rundir.write_record(tmp_path, {"seed": 7, "target": "gmm40"}, {"steps": 3, "lr": 0.1})
    record = rundir.read_record(tmp_path)
    assert record["seed"] == 7 and record["environment"]["boltzkit"]
    assert rundir.read_config(tmp_path) == {"steps": 3, "lr": 0.1}
    rundir.update_record(tmp_path, wall_s=1.5)
    assert rundir.read_record(tmp_path)["wall_s"] == 1.5 and record["seed"] == 7


def test_prepare_refuses_to_overwrite_a_run_and_resume_needs_one(tmp_path):
    run = rundir.prepare(tmp_path / "r")
    with pytest.raises(rundir.RunDirError, match="no run.json"):
        rundir.prepare(run, resume=True)
    rundir.write_record(run, {}, {})
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        rundir.prepare(run)
    assert rundir.prepare(run, resume=True) == run
    with pytest.raises(rundir.RunDirError, match="not a run directory"):
        rundir.read_record(tmp_path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_reference_loading_removes_the_centre_of_mass(tmp_path, suffix):
    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32) + 3.0
    path = tmp_path / f"ref{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, samples=x)
    ref = rundir.load_reference(path, 8, n_particles=4, spatial_dim=2)
    assert ref.dtype == torch.float64 and ref.shape == (20, 8)
    assert ref.reshape(20, 4, 2).mean(1).abs().max() < 1e-6
    assert torch.allclose(ref.reshape(20, 4, 2) - torch.as_tensor(x).double().reshape(20, 4, 2),
                          -torch.as_tensor(x).double().reshape(20, 4, 2).mean(1, keepdim=True))
    plain = rundir.load_reference(path, 8)
    assert torch.equal(plain, torch.as_tensor(x).double())


def test_reference_errors_say_what_is_wrong(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3)))
    with pytest.raises(rundir.RunDirError, match=r"shape \(5, 3\).*\[n, 2\]"):
        rundir.load_reference(tmp_path / "a.npy", 2)
    np.savez(tmp_path / "b.npz", x=np.zeros((5, 2)), y=np.zeros((5, 2)))
    with pytest.raises(rundir.RunDirError, match="'samples'"):
        rundir.load_reference(tmp_path / "b.npz", 2)
    (tmp_path / "c.csv").write_text("1,2\n")
    with pytest.raises(rundir.RunDirError, match=".npy or .npz"):
        rundir.load_reference(tmp_path / "c.csv", 2)


def test_published_reference_sets_when_present():
    if rundir.shared_data_dir() is None:
        pytest.skip("../shared/data is absent")
    path = rundir.published_reference("dw4")
    assert path is not None and path.name == "test_split_DW4.npy"
    ref = rundir.load_reference(path, 8, 4, 2)
    assert ref.shape == (10000, 8) and ref.reshape(-1, 4, 2).mean(1).abs().max() < 1e-5
    assert rundir.published_reference("gmm40") is None


def test_run_figures_for_a_particle_system(tmp_path):
    x, ref = torch.randn(100, 8), torch.randn(200, 8)
    energies = torch.cat([torch.randn(99), torch.tensor([float("inf")])])
    paths = plots.run_figures(tmp_path, x, energies, reference=ref,
                              reference_energies=torch.randn(200), n_particles=4, spatial_dim=2,
                              diagnostics={"ess_fraction": [1.0, 0.5, 0.7], "note": "x"})
    assert sorted(p.name for p in paths) == ["distances.png", "energy_hist.png", "ess.png",
                                             "positions.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_pairwise_distances_match_a_direct_computation():
    x = torch.randn(5, 4 * 3)
    d = plots.pairwise_distances(x, 4, 3)
    xp = x.reshape(5, 4, 3)
    assert d.shape == (5, 6)
    assert d[2, 0] == pytest.approx(float((xp[2, 0] - xp[2, 1]).norm()), rel=1e-6)
    assert d[2, 5] == pytest.approx(float((xp[2, 2] - xp[2, 3]).norm()), rel=1e-6)
