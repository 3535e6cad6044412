"""iDEM's networks: the score network (EGNN on particle systems, time-conditioned MLP otherwise)
or, with `parametrisation = "energy"`, a noised energy E_theta(x, t) whose call is its score
(`boltzkit.models.energy_net.TimeEnergy`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from boltzkit.core.errors import UsageError
from boltzkit.diffusion.schedules import VESchedule
from boltzkit.models.egnn import EGNN
from boltzkit.models.energy_net import TimeEnergy
from boltzkit.targets.base import Target


def build_network(config: Any, target: Target) -> nn.Module:
    """The score network: EGNN for particle systems, time-conditioned MLP otherwise."""
    from boltzkit.models.mlp import TimeMLP

    kind = config.network
    if kind == "auto":
        kind = "egnn" if target.is_particle_system else "mlp"
    if kind == "egnn" and not target.is_particle_system:
        raise UsageError(f"network='egnn' needs a particle system; {target.name} is not one")
    if config.parametrisation == "energy":
        layout = (target.n_particles, target.spatial_dim) if target.is_particle_system else None
        return TimeEnergy(target.dim, VESchedule(config.sigma_min, config.sigma_max).sigma, kind,
                          config.hidden, config.n_layers, layout, config.energy_data_var)
    if kind == "egnn":
        return EGNN(target.n_particles, target.spatial_dim, config.hidden, config.n_layers,
                    fused=config.fused_egnn)
    return TimeMLP(target.dim, config.hidden, config.n_layers)
