"""boltzkit: neural samplers for unnormalised Boltzmann densities, with exact Monte Carlo
corrections. Submodules are imported explicitly (`from boltzkit import targets`)."""

__version__ = "0.1.0"
