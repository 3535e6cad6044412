"""Checks that samples are not clearly off, run after every sampler run: each returns a warning
(one sentence saying what is wrong and by how much) or nothing. A warning does not fail a run;
it is shown in the summary, the log and `run.json`, because a sampler that exits 0 with garbage
is worse than one that fails.

Thresholds are deliberately loose: exact samples never trigger them (tested), and a sampler that
does is far outside the noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

OUTSIDE_FRACTION = 0.05  # of sample energies beyond the reference's whole range
FLOOR_FACTOR = 10.0  # energy W2 this many times its noise floor
POSITIVE_FRACTION = 0.01  # of energies above the target's typical maximum
ESS_FRACTION = 0.01  # importance weights this degenerate


def warnings_for(metrics: Mapping[str, float], energies: Tensor,
                 reference_energies: Tensor | None, typical_energy_max: float | None
                 ) -> list[str]:
    """Every warning that applies to one run's samples.

    Args:
        metrics: the run's metrics (`boltzkit.evaluate.evaluation.evaluate`).
        energies: reduced energies of the finite samples `[n]`.
        reference_energies: reduced energies of the reference `[m]`, if any.
        typical_energy_max: `Target.typical_energy_max`.
    """
    about_samples = [
        _outside_reference(energies, reference_energies),
        _above_typical(energies, typical_energy_max),
    ]
    if metrics.get("ess_fraction") is not None:  # weighted samples: these checks see proposals
        note = (" (of the unweighted proposals; the importance weights correct them, ESS/N = "
                f"{metrics['ess_fraction']:.3g})")
        about_samples = [w + note if w else w for w in about_samples]
    # the metrics themselves judge the weighted law (evaluation resamples by the weights)
    found = [_nonfinite(metrics), *about_samples, _energy_w2(metrics),
             _degenerate_weights(metrics)]
    return [w for w in found if w]


def _nonfinite(metrics: Mapping[str, float]) -> str | None:
    n_bad = int(metrics.get("n_nonfinite_samples") or 0)
    if n_bad == 0:
        return None
    n = int(metrics.get("n_samples") or 0) + n_bad
    return f"{n_bad} of {n} samples have non-finite coordinates (left out of every metric)"


def _outside_reference(energies: Tensor, reference: Tensor | None) -> str | None:
    if reference is None or len(energies) == 0:
        return None
    ref = reference[torch.isfinite(reference)]
    if len(ref) == 0:
        return None
    lo, hi = float(ref.min()), float(ref.max())
    outside = float(((energies < lo) | (energies > hi)).double().mean())
    if outside <= OUTSIDE_FRACTION:
        return None
    return (f"{outside:.1%} of sample energies lie outside the reference's whole range "
            f"[{lo:.4g}, {hi:.4g}] (median sample energy {float(energies.median()):.4g})")


def _energy_w2(metrics: Mapping[str, float]) -> str | None:
    value, floor = metrics.get("energy_w2"), metrics.get("energy_w2_floor")
    if value is None or floor is None or not floor > 0 or value <= FLOOR_FACTOR * floor:
        return None
    return (f"energy W2 is {value:.4g}, {value / floor:.0f}x its noise floor {floor:.3g}: the "
            "samples do not follow the target (try the target's preset, a longer run or "
            "another sampler)")


def _above_typical(energies: Tensor, bound: float | None) -> str | None:
    if bound is None or len(energies) == 0:
        return None
    above = float((energies > bound).double().mean())
    if above <= POSITIVE_FRACTION:
        return None
    return (f"{above:.1%} of samples have reduced energy above {bound:g}, which typical "
            f"configurations of this target never reach (median {float(energies.median()):.4g};"
            " overlapping particles or an exploded cluster)")


def _degenerate_weights(metrics: Mapping[str, float]) -> str | None:
    ess = metrics.get("ess_fraction")
    if ess is None or ess >= ESS_FRACTION:
        return None
    return (f"the importance weights are degenerate (ESS/N = {ess:.2g}): the weighted estimates "
            "rest on a handful of samples")
