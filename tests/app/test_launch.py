"""torchrun launch of one sampler run (boltzkit.app.launch): two processes write one run
directory whose samples and counts are those of the single-process run (float64, the same
n_shards); samplers that do not train data-parallel, and --resume, are refused in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from boltzkit.app import launch, runner
from boltzkit.core.errors import UsageError

SETS = ["hidden=16", "n_layers=2", "n_outer=2", "n_inner=2", "batch_size=16", "n_mc=8",
        "n_shards=2", "n_generate=16", "n_sde_steps=10", "n_init=16", "dtype=float64",
        "checkpoint_every=1"]
RUN = dict(target_name="two-modes", sampler="idem", budget=100_000, seed=3, preset="none",
           n_samples=50, figures=False)


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun is not installed next to this Python")
def test_torchrun_two_processes_write_the_single_process_run(tmp_path: Path) -> None:
    command = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc-per-node",
               "2", "-m", "boltzkit", "sample", "two-modes", "--sampler", "idem", "--preset",
               "none", "--budget", "1e5", "--n-samples", "50", "--seed", "3", "--quiet",
               "--no-figures", "--out", str(tmp_path / "ddp")]
    command += [arg for s in SETS for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    single = runner.run_sampler(out=tmp_path / "one", sets=SETS, **RUN)
    ddp = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert ddp["data_parallel"] == {"world_size": 2, "backend": "gloo"}
    assert ddp["counts"] == single.result.counts
    assert ddp["counts"]["n_energy"] == 2 * 2 * 16 * 8
    np.testing.assert_allclose(np.load(tmp_path / "ddp" / "samples.npz")["samples"],
                               single.result.samples.numpy(), rtol=1e-9, atol=1e-10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "one"]  # rank 1 wrote none


def test_torchrun_refuses_what_it_cannot_run_data_parallel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="only with the samplers idem, flow, not 'mala'"):
        launch.join("mala", [], resume=False)
    with pytest.raises(UsageError, match="--resume of a data-parallel run"):
        launch.join("idem", [], resume=True)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert launch.join("mala", [], resume=False) == (0, 1)
