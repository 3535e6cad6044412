"""Suite-wide settings. pytest-xdist runs one worker per core, so each worker uses one thread:
two workers with two threads each on a 2-core machine oversubscribe and run slower."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def published():
    """published(name, which=1): a published reference split from ../shared/data (0 train,
    1 validation, 2 test), COM removed, float64; the test skips when the data are absent."""
    from boltzkit import targets
    from boltzkit.app import rundir

    def load(name: str, which: int = 1) -> torch.Tensor:
        path = rundir.published_reference(name, which)
        if path is None:
            pytest.skip(f"no published {name} data in ../shared/data")
        t = targets.get(name)
        return rundir.load_reference(path, t.dim, t.n_particles, t.spatial_dim)

    return load
