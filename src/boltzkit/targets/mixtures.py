"""The named Gaussian mixtures: GMM-40 (FAB / iDEM), two-modes (Grenioux & Noble) and TRADE's
tempered 2-D mixture, with their published constants (../shared/REFERENCE.md, "Targets")."""

from __future__ import annotations

import torch
from torch import Tensor

from boltzkit.targets.gmm import GaussianMixture

# ---- presets (../shared/REFERENCE.md, "Targets") ------------------------------------------
# gmm40 means: (U - 0.5) * 80 with U = torch.rand(40, 2) right after torch.manual_seed(0)
# (iDEM / FAB); a test regenerates them.
GMM40_MEANS = (
    (-0.299473, 21.457744), (-32.921805, -29.437561), (-15.406175, 10.726295),
    (-0.792527, 31.715579), (-3.549762, 10.584502), (-12.088523, -7.862616),
    (-38.213940, -26.491284), (-16.488924, 1.481743), (15.813408, 24.000912),
    (-27.117643, -17.418513), (14.528685, 33.215518), (-8.232007, 29.932470),
    (-6.447334, 4.232564), (36.219049, -37.106814), (-25.181518, -10.126610),
    (-15.591998, 34.560032), (-25.927186, -18.413315), (-27.945619, -37.462440),
    (-23.349619, 34.383922), (17.848735, 19.386902), (2.103662, -20.507340),
    (6.767387, -37.347789), (-28.902650, -20.621200), (25.237517, 23.452849),
    (-17.739801, -1.443295), (25.582428, 39.765325), (15.875287, 5.403714),
    (26.819453, -23.552094), (7.453761, -31.012220), (-27.723446, -20.663342),
    (18.098922, 16.086416), (-23.694100, 12.084284), (21.958880, -5.048695),
    (1.527262, 9.268188), (24.815063, 38.407764), (-30.824943, -14.658790),
    (15.720396, 33.141975), (34.808292, 35.294271), (7.960582, -34.783306),
    (3.679700, -25.024214),
)

# TRADE (arXiv 2410.19492) App. C: means and covariances [[a, b], [b, d]] as (a, b, d).
TRADE_GMM_MEANS = ((-1.0, 2.0), (3.0, 7.0), (-4.0, 2.0), (-2.0, -4.0), (0.0, 4.0), (5.0, -2.0))
TRADE_GMM_COVARIANCES = (
    (0.2778, 0.4797, 0.8615), (0.8958, -0.0249, 0.1001), (1.3074, 0.9223, 0.7744),
    (0.0305, 0.0142, 0.4409), (0.0463, 0.0294, 0.3441), (0.15, 0.0294, 1.5),
)


def gmm40() -> GaussianMixture:
    """40 equal-weight 2-D Gaussians, means in [-40, 40]^2, std softplus(1) = 1.31326 per axis
    (Midgley et al., FAB, arXiv 2208.01893; iDEM, arXiv 2402.06121)."""
    means = torch.tensor(GMM40_MEANS, dtype=torch.float64)
    scale = torch.nn.functional.softplus(torch.tensor(1.0, dtype=torch.float64))
    return GaussianMixture(torch.ones(40, dtype=torch.float64), means, scale, name="gmm40")


def two_modes(d: int = 2, a: float = 3.0, variant: str = "isotropic") -> GaussianMixture:
    """Weights 2/3 and 1/3 at -a*1 and +a*1 in R^d (Grenioux & Noble, arXiv 2601.21026).

    Variants: "isotropic" (covariance 0.05 I), "anisotropic" (diagonal variances
    0.05 * logspace(-1, 0, d)), "rotated" (the anisotropic covariance under a Haar rotation drawn
    from a fixed local seed). Headline metric: the heavy mode's weight, 2/3.
    """
    variants = ("isotropic", "anisotropic", "rotated")
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(variants)}")
    f64 = torch.float64
    means = a * torch.stack([-torch.ones(d, dtype=f64), torch.ones(d, dtype=f64)])
    weights = torch.tensor([2.0, 1.0], dtype=f64)
    if variant == "isotropic":
        return GaussianMixture(weights, means, 0.05**0.5, name="two-modes")
    variances = 0.05 * torch.logspace(-1, 0, d, dtype=f64)
    if variant == "anisotropic":
        return GaussianMixture(weights, means, variances.sqrt(), name="two-modes")
    rot = _haar_rotation(d, seed=0)
    cov = rot @ torch.diag(variances) @ rot.T
    return GaussianMixture(weights, means, covariance=cov, name="two-modes")


def tempered_gmm_2d() -> GaussianMixture:
    """TRADE's 6-component 2-D mixture (arXiv 2410.19492, App. C); p(x | beta) ~ GMM(x)^beta is
    `tempered(1 / beta)`, with log Z(beta) by quadrature and exact samples at beta = 1."""
    cov = torch.tensor([[[a, b], [b, d]] for a, b, d in TRADE_GMM_COVARIANCES],
                       dtype=torch.float64)
    means = torch.tensor(TRADE_GMM_MEANS, dtype=torch.float64)
    return GaussianMixture(torch.ones(6, dtype=torch.float64), means, covariance=cov,
                           name="tempered-gmm-2d")


def _haar_rotation(d: int, seed: int) -> Tensor:
    """A Haar-distributed rotation (det +1) from a local generator (the global RNG untouched)."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q
