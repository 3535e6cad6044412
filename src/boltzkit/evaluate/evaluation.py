"""`evaluate`: every metric that applies to a sample set, as one flat dict of floats.

The keys and their conventions are listed in `CONVENTIONS`; a key ending in `_floor` (`_floor_std`)
is the mean (std) of the same metric between two disjoint reference subsets of the same sizes,
the value a perfect sampler would get. Samples that come with importance weights are judged as
the equally weighted set their weights select (systematic resampling, as many draws as
samples), so the metrics describe the corrected law, not the proposal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from boltzkit.evaluate import metrics as M
from boltzkit.mc.estimators import normalised_weights, weight_summary
from boltzkit.mc.resampling import systematic
from boltzkit.targets.base import Target

CONVENTIONS: dict[str, str] = {
    "n_samples": "number of samples given",
    "n_nonfinite_samples": "samples with a non-finite coordinate; excluded from every metric",
    "n_nonfinite_energy": "finite samples whose energy is NaN or inf; excluded from energy metrics",
    "n": "number of log-weights",
    "ess": "Kish ESS count exp(2 LSE(log w) - LSE(2 log w))",
    "ess_fraction": "Kish ESS / N",
    "log_Z": "IS estimate LSE(log w) - log N",
    "log_Z_se": "delta-method SE of log_Z, sqrt((N/ESS - 1)/(N - 1))",
    "log_Z_error": "log_Z - exact log Z of the target",
    "elbo": "mean log w",
    "n_zero_weight": "log-weights equal to -inf",
    "n_invalid_weight": "NaN or +inf log-weights, given zero weight",
    "mode_weight_error_max_pp": "max_k 100 |w_hat_k - w_k|, samples assigned to the most likely "
    "component (percentage points)",
    "mode_weight_error_mean_pp": "mean_k 100 |w_hat_k - w_k| (percentage points)",
    "mode_weight_error_max_pp_floor": "the same error for as many exact samples (multinomial "
    "draws from the true weights, 200 repeats; `_floor_std` their std)",
    "mode_coverage": "exp(H(w_hat)) / K, entropic",
    "n_modes_visited": "components with at least one sample assigned",
    "n_eval": "samples per side in the reference comparisons (random subsets)",
    "n_eval_symmetry": "samples per side in symmetry_w2",
    "x_w2": "exact W2 in raw coordinates, square-rooted (POT emd2, n_eval vs n_eval)",
    "energy_w1": "exact 1-D W1 between reduced energies (finite ones of the n_eval subsets)",
    "energy_w2": "exact 1-D W2 between reduced energies, square-rooted (not W2^2)",
    "distance_w2": "exact 1-D W2 between pooled interatomic distances, square-rooted",
    "distance_tv": "histogram TV of pooled interatomic distances, bins over the reference range, "
    "out-of-range mass counted in full",
    "distance_out_of_range": "fraction of generated distances outside the reference range",
    "symmetry_w2": "exact W2 on the cost minimised over permutations, rotations/reflections and "
    "translations per pair, square-rooted (n_eval_symmetry vs n_eval_symmetry); not for "
    "molecules",
    # molecules (target.is_molecule; evaluate/molecular.py): energies are E / kT, so energy_w1
    # and energy_w2 are in kT
    "ramachandran_kl_ref_to_samples_30x30_nats": "KL(reference || samples) of 30 x 30 (phi, "
    "psi) histograms over [-pi, pi)^2, samples smoothed by 1e-6 pseudo-counts (n_eval per "
    "side); its floor splits the reference at random, which for correlated MD frames is "
    "optimistic",
    "ramachandran_tv_30x30": "0.5 sum |p - q| of the same histograms (n_eval per side)",
    "phi_w1_circular_rad": "W1 of phi on the circle, radians (n_eval per side)",
    "psi_w1_circular_rad": "W1 of psi on the circle, radians (n_eval per side)",
    "phi_positive_fraction": "fraction of samples with phi > 0 (weighted with log_w)",
    "phi_positive_fraction_se": "sqrt(p (1 - p) / ESS): i.i.d./importance SE, too small for "
    "correlated MCMC output",
    "phi_positive_fraction_reference": "phi > 0 fraction of the whole reference",
    "phi_positive_fraction_reference_se_batch_means": "its batch-means SE over 10 blocks",
    "d_alanine_fraction": "fraction of D-alanine samples (improper N, C, CB, CA > 0)",
}


def _subsample(x: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    return x[torch.randperm(len(x), generator=generator)[:n].to(x.device)]


def _energies(target: Target, x: Tensor) -> Tensor:
    with torch.no_grad():
        return target.energy(x).detach()


def _on_finite(metric: Callable[[Tensor, Tensor], float]) -> Callable[[Tensor, Tensor], float]:
    """metric over the finite entries only; inf when a side has none (explicit, never NaN)."""

    def wrapped(a: Tensor, b: Tensor) -> float:
        a, b = a[torch.isfinite(a)], b[torch.isfinite(b)]
        return metric(a, b) if len(a) and len(b) else float("inf")

    return wrapped


def _comparisons(target: Target, n_eval: int, max_symmetry: int) -> dict[str, object]:
    """name -> (featurise, metric, n per side): each metric compares features of two sets."""
    energy = lambda x: _energies(target, x)  # noqa: E731
    out: dict[str, object] = {
        "x_w2": (lambda x: x, M.x_w2, n_eval),
        "energy_w1": (energy, _on_finite(M.energy_w1), n_eval),
        "energy_w2": (energy, _on_finite(M.energy_w2), n_eval),
    }
    if target.is_particle_system:
        n_p, d = target.n_particles, target.spatial_dim
        dist = lambda x: M.interatomic_distances(x, n_p, d)  # noqa: E731
        out["distance_w2"] = (dist, M.distance_w2, n_eval)
        out["distance_tv"] = (dist, lambda a, b: M.distance_tv(a, b).tv, n_eval)
        out["distance_out_of_range"] = (
            dist, lambda a, b: M.distance_tv(a, b).fraction_out_of_range, n_eval)
        if not _is_molecule(target):  # atoms of a molecule are not interchangeable
            out["symmetry_w2"] = (
                lambda x: x, lambda a, b: M.symmetry_w2(a, b, n_p, d), min(n_eval, max_symmetry))
    if _is_molecule(target):
        from boltzkit.evaluate import molecular

        for name, metric in molecular.torsion_comparisons().items():
            out[name] = (molecular.torsions, metric, n_eval)
    return out


def _is_molecule(target: Target) -> bool:
    return bool(getattr(target, "is_molecule", False))


def _molecule_metrics(x: Tensor, reference: Tensor | None, log_w: Tensor | None
                      ) -> dict[str, float]:
    from boltzkit.evaluate import molecular

    return molecular.population_metrics(x, reference, log_w)


def _reference_metrics(
    x: Tensor, reference: Tensor, target: Target, max_ot: int, max_symmetry: int,
    n_repeats: int, generator: torch.Generator | None,
) -> dict[str, float]:
    ref = reference.detach()
    ref = ref[torch.isfinite(ref).all(-1)]
    n_eval = min(len(x), max_ot, len(ref) // 2)
    if n_eval < 2:
        return {}
    out = {"n_eval": float(n_eval)}
    xs, rs = _subsample(x, n_eval, generator), _subsample(ref, len(ref), generator)
    ref_features: dict[int, Tensor] = {}
    for name, (feature, metric, n) in _comparisons(target, n_eval, max_symmetry).items():
        if name == "symmetry_w2":
            out["n_eval_symmetry"] = float(n)
        out[name] = float(metric(feature(xs[:n]), feature(rs[:n])))
        if n_repeats > 0:
            if id(feature) not in ref_features:
                ref_features[id(feature)] = feature(ref)
            floor = M.noise_floor(metric, ref_features[id(feature)], n, n, n_repeats, generator)
            out[f"{name}_floor"], out[f"{name}_floor_std"] = floor.mean, floor.std
    return out


def _mode_metrics(x: Tensor, target: Target, n_repeats: int,
                  generator: torch.Generator | None) -> dict[str, float]:
    err = M.mode_weight_error(x, target)
    w = M.mode_weights(x, target)
    out = {
        "mode_weight_error_max_pp": err.max_pp,
        "mode_weight_error_mean_pp": err.mean_pp,
        "mode_coverage": M.mode_coverage(x, target),
        "n_modes_visited": float((w > 0).sum()),
    }
    if n_repeats > 0 and len(x) > 0:
        floors = M.mode_weight_error_floor(target.weights, len(x), 200, generator)
        for name, floor in zip(("max_pp", "mean_pp"), floors, strict=True):
            out[f"mode_weight_error_{name}_floor"] = floor.mean
            out[f"mode_weight_error_{name}_floor_std"] = floor.std
    return out


def evaluate(
    samples: Tensor,
    target: Target,
    reference: Tensor | None = None,
    log_w: Tensor | None = None,
    max_ot: int = 2000,
    max_symmetry: int = 100,
    n_repeats: int = 3,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Every metric that applies, as a flat dict of floats (keys explained in `CONVENTIONS`).

    Always: sample counts and non-finite counts. With `log_w` (aligned with samples): the
    `weight_summary` keys, and `log_Z_error` when the target's log Z is known. For mixtures
    (`metrics.is_mixture`): mode-weight error, entropic coverage, modes visited. With a reference
    (or, without one, `2 * min(n, max_ot)` exact samples drawn from the target when it has an
    exact sampler): x_w2, energy_w1, energy_w2 and, for particle systems, distance_w2,
    distance_tv, distance_out_of_range and symmetry_w2, each with its noise floor (`_floor`,
    `_floor_std`, `n_repeats` disjoint reference splits of the same sizes). Comparisons use
    n_eval = min(n_finite, max_ot, n_ref // 2) random samples per side (symmetry_w2: at most
    `max_symmetry`); the sizes are keys too.

    Energies come from `target.uncounted()`, so evaluation is never charged to a sampler's
    budget. Non-finite samples and energies are excluded and counted; no value is NaN (log Z of
    all-zero weights is -inf, explicitly).

    Args:
        samples: `[n, dim]`.
        target: the target the samples are meant to follow.
        reference: reference samples `[N, dim]` of the target, or None.
        log_w: log importance weights `[n]` of the samples, or None.
        max_ot, max_symmetry: per-side size caps of the OT metrics (their cost grows as n^2-n^3).
        n_repeats: noise-floor repeats (0 skips the floors).
        generator: for the subsamples and splits (the global RNG when None).
    """
    t = target.uncounted()
    x = samples.detach()
    finite = torch.isfinite(x).all(-1)
    x = x[finite]
    out = {"n_samples": float(len(finite)), "n_nonfinite_samples": float((~finite).sum())}
    energies = _energies(t, x) if len(x) else x.new_zeros(0)
    out["n_nonfinite_energy"] = float((~torch.isfinite(energies)).sum())
    w = None if log_w is None else log_w.detach()[finite]
    if log_w is not None:
        out.update(weight_summary(log_w))
        if t.log_Z is not None:
            out["log_Z_error"] = out["log_Z"] - t.log_Z
    if _is_molecule(t) and len(x):
        out.update(_molecule_metrics(x, reference, w))
    x = _resampled(x, w)
    if M.is_mixture(t) and len(x):
        out.update(_mode_metrics(x, t, n_repeats, generator))
    if reference is None and t.has_exact_samples and len(x) >= 2:
        reference = t.sample(2 * min(len(x), max_ot), generator=generator)
    if reference is not None:
        out.update(_reference_metrics(x, reference, t, max_ot, max_symmetry, n_repeats, generator))
    nan_keys = [k for k, v in out.items() if v != v]
    if nan_keys:
        raise RuntimeError(f"evaluate produced NaN for {nan_keys}; this is a bug")
    return out


def _resampled(x: Tensor, log_w: Tensor | None) -> Tensor:
    """Weighted samples as the equally weighted set their weights select (systematic
    resampling, as many draws as samples): the sample metrics then judge the weighted law, not
    the proposal. Unweighted samples, or weights that are all zero, are returned as they are."""
    if log_w is None or len(x) == 0 or not bool(torch.isfinite(log_w).any()):
        return x
    idx = systematic(torch.log(normalised_weights(log_w))[None, :])[0]
    return x[idx.to(x.device)]


__all__ = ["CONVENTIONS", "evaluate"]
