"""Seeding the global RNGs: entry points only (library code never reseeds)."""

from __future__ import annotations

import random

import numpy as np
import torch


# ---- resolution ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seeds torch, numpy and random: entry points only (library code never reseeds)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
