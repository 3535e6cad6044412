"""Importance-sampling estimators in log space: ESS, log Z, ELBO / EUBO, self-normalised means.

Conventions (../shared/REFERENCE.md, "Metrics"):

- `log_w` are log importance weights log w_i = log gamma(x_i) - log q(x_i) at x_i ~ q, shape
  `[..., N]`. Every reduction is over the last dim and batched over the leading ones.
- `log_w_ref` are the same log-ratios r_i = log gamma(y_i) - log q(y_i) at y_i ~ pi, i.e. at
  reference samples of the target (the "forward" direction). Note that N^2 / (sum e^r sum e^-r)
  (../shared/REFERENCE.md) is the forward ESS *fraction* (it is <= 1 by Cauchy-Schwarz); the
  count is N times it.
- Weights are accumulated in float64 whatever the input dtype; device follows the input.
- A log-weight of -inf is a zero weight (the target density vanishes there, e.g. an infinite
  energy): legitimate, and it still counts in N. NaN and +inf log-weights are invalid: they are
  given zero weight, counted by `n_invalid`, and a RuntimeWarning says how many. For `log_w_ref`
  NaN entries are dropped (and counted), while +-inf keep their meaning (q or gamma vanishing at
  a target sample), which makes the forward ESS 0.
- Results over a 1-D input are Python floats; batched inputs give float64 tensors of the leading
  shape. Nothing returns NaN silently: undefined results (no positive weight) are -inf, 0 or inf
  as documented, and a NaN can only come with a warning.

>>> import torch
>>> round(ess(torch.zeros(10)), 9)
10.0
>>> round(log_Z(torch.full((4,), 2.0)), 12)
2.0
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

_NEG_INF = float("-inf")


class Estimate(NamedTuple):
    """A point estimate with its standard error (floats, or tensors when batched)."""

    mean: float | Tensor
    se: float | Tensor


# ---- input handling ----------------------------------------------------------------------------
def _as_f64(log_w: Tensor, name: str) -> Tensor:
    t = log_w if isinstance(log_w, Tensor) else torch.as_tensor(log_w, device="cpu")
    t = t.to(dtype=torch.float64)
    if t.ndim == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} must have shape [..., N] with N >= 1, got {tuple(t.shape)}")
    return t


def _invalid_mask(lw: Tensor) -> Tensor:
    return torch.isnan(lw) | torch.isposinf(lw)


def _prepare(log_w: Tensor) -> Tensor:
    """float64 log-weights with NaN / +inf replaced by -inf (and a warning saying how many)."""
    lw = _as_f64(log_w, "log_w")
    bad = _invalid_mask(lw)
    n_bad = int(bad.sum())
    if n_bad:
        warnings.warn(
            f"{n_bad} of {lw.numel()} log-weights are NaN or +inf; treated as zero weight (-inf)",
            RuntimeWarning,
            stacklevel=3,
        )
        lw = lw.masked_fill(bad, _NEG_INF)
    return lw


def _out(t: Tensor) -> float | Tensor:
    return t.item() if t.ndim == 0 else t


def n_invalid(log_w: Tensor) -> int | Tensor:
    """Number of NaN or +inf log-weights over the last dim (they are treated as zero weight)."""
    bad = _invalid_mask(_as_f64(log_w, "log_w")).sum(-1)
    return int(bad) if bad.ndim == 0 else bad


def n_zero_weight(log_w: Tensor) -> int | Tensor:
    """Number of log-weights equal to -inf (zero weights), not counting invalid ones."""
    zero = torch.isneginf(_as_f64(log_w, "log_w")).sum(-1)
    return int(zero) if zero.ndim == 0 else zero


# ---- reverse direction: x ~ q ------------------------------------------------------------------
def _ess(lw: Tensor) -> Tensor:
    lse = torch.logsumexp(lw, dim=-1)
    # all weights zero: LSE = -inf and the ratio is -inf - (-inf); the ESS is 0 by definition.
    log_ess = 2.0 * lse - torch.logsumexp(2.0 * lw, dim=-1)
    return torch.where(torch.isneginf(lse), torch.zeros_like(lse), log_ess.exp())


def ess(log_w: Tensor) -> float | Tensor:
    """Kish effective sample size, a count in [0, N].

    ESS = (sum_i w_i)^2 / sum_i w_i^2 = exp(2 LSE(log w) - LSE(2 log w)) (Kish 1965); equal
    weights give N, a single non-zero weight gives 1, all-zero weights give 0.

    Args:
        log_w: log importance weights `[..., N]`.
    """
    return _out(_ess(_prepare(log_w)))


def ess_fraction(log_w: Tensor) -> float | Tensor:
    """Kish ESS / N, in [0, 1] (see `ess`)."""
    lw = _prepare(log_w)
    return _out(_ess(lw) / lw.shape[-1])


def _log_Z(lw: Tensor) -> Tensor:
    return torch.logsumexp(lw, dim=-1) - math.log(lw.shape[-1])


def log_Z(log_w: Tensor) -> float | Tensor:
    """Importance-sampling estimate of log Z: LSE(log w) - log N.

    Unbiased for Z (not for log Z, which it underestimates on average by about Var(w)/(2 N Z^2)).
    All-zero weights give -inf. N counts zero and invalid weights too, as the estimator requires.

    Args:
        log_w: log importance weights `[..., N]`.
    """
    return _out(_log_Z(_prepare(log_w)))


def _log_Z_se(lw: Tensor) -> Tensor:
    n = lw.shape[-1]
    if n < 2:
        return torch.full(lw.shape[:-1], math.inf, dtype=lw.dtype, device=lw.device)
    ess_ = _ess(lw)
    rel_var = (n / ess_ - 1.0).clamp_min(0.0) / (n - 1)
    return torch.where(ess_ > 0, rel_var.sqrt(), torch.full_like(ess_, math.inf))


def log_Z_se(log_w: Tensor) -> float | Tensor:
    """Delta-method standard error of `log_Z`: SE = s_w / (sqrt(N) mean(w)).

    Equivalently SE = sqrt((N/ESS - 1) / (N - 1)).

    s_w is the sample standard deviation of the weights (divisor N - 1); the identity with the
    Kish ESS keeps it in log space. inf when N = 1 or all weights are zero.

    Args:
        log_w: log importance weights `[..., N]`.
    """
    return _out(_log_Z_se(_prepare(log_w)))


def elbo(log_w: Tensor) -> float | Tensor:
    """ELBO estimate mean_i log w_i, estimating E_q[log gamma - log q] = log Z - KL(q || pi).

    A single zero weight gives -inf.

    Args:
        log_w: log importance weights `[..., N]`.
    """
    return _out(_prepare(log_w).mean(dim=-1))


def replica_log_Z(log_Z_replicas: Tensor) -> Estimate:
    """log Z from R independent replicas (e.g. SMC runs), with a standard error from their spread.

    Each replica r gives an unbiased Z_r (SMC: Del Moral 2004, Prop. 7.4.1), so the pooled
    estimate is log Z-hat = LSE_r(log Z_r) - log R, unbiased for Z, with the delta-method SE
    s_Z / (sqrt(R) mean(Z)) = sqrt((R/ESS_R - 1)/(R - 1)), ESS_R the Kish ESS of the Z_r (the
    formulas of `log_Z` and `log_Z_se` applied across replicas). This is the only honest SE for
    an SMC run: after resampling the particle weights are equal and their spread says nothing
    about the error of log Z. The SE is inf for R = 1 (no spread to measure).

    Args:
        log_Z_replicas: `[..., R]` per-replica estimates log Z_r.
    """
    lz = _prepare(log_Z_replicas)
    return Estimate(_out(_log_Z(lz)), _out(_log_Z_se(lz)))


# ---- forward direction: y ~ pi -----------------------------------------------------------------
def _prepare_ref(log_w_ref: Tensor) -> tuple[Tensor, Tensor]:
    r = _as_f64(log_w_ref, "log_w_ref")
    valid = ~torch.isnan(r)
    n_bad = int((~valid).sum())
    if n_bad:
        warnings.warn(
            f"{n_bad} of {r.numel()} reference log-ratios are NaN; dropped",
            RuntimeWarning,
            stacklevel=3,
        )
    return r, valid


def _forward_fraction(r: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(forward ESS fraction, N valid)."""
    n = valid.sum(-1).to(r.dtype)
    lse_pos = torch.logsumexp(r.masked_fill(~valid, _NEG_INF), dim=-1)
    lse_neg = torch.logsumexp((-r).masked_fill(~valid, _NEG_INF), dim=-1)
    log_frac = 2.0 * n.log() - lse_pos - lse_neg
    return torch.where(n > 0, log_frac.exp(), torch.zeros_like(n)), n


def forward_ess_fraction(log_w_ref: Tensor) -> float | Tensor:
    """Forward ESS fraction from reference samples of the target, in [0, 1].

    With r_i = log gamma(y_i) - log q(y_i) at y_i ~ pi: N^2 / (sum_i e^{r_i} sum_i e^{-r_i}),
    computed as exp(2 log N - LSE(r) - LSE(-r)). Since E_pi[w] = E_q[w^2] / Z and
    E_pi[1/w] = 1 / Z, it estimates Z^2 / E_q[w^2], the limit of the Kish fraction, without
    sampling q, so it sees modes q misses: r = +inf at a single reference sample gives 0. It is 1
    when q = pi. ("Beyond ELBOs", arXiv 2406.07423; FAB, arXiv 2208.01893.) NaN entries are
    dropped and N counts the rest.

    Args:
        log_w_ref: log gamma - log q at reference samples, `[..., N]`.
    """
    return _out(_forward_fraction(*_prepare_ref(log_w_ref))[0])


def forward_ess(log_w_ref: Tensor) -> float | Tensor:
    """Forward ESS count: N * `forward_ess_fraction` = N^3 / (sum e^r sum e^-r), in [0, N]."""
    frac, n = _forward_fraction(*_prepare_ref(log_w_ref))
    return _out(frac * n)


def eubo(log_w_ref: Tensor) -> float | Tensor:
    """EUBO estimate mean_i r_i = E_pi[log gamma - log q] >= log Z, at reference samples y_i ~ pi.

    EUBO - log Z = KL(pi || q). NaN entries are dropped; r = +inf (q = 0 at a target sample)
    gives +inf.

    Args:
        log_w_ref: log gamma - log q at reference samples, `[..., N]`.
    """
    r, valid = _prepare_ref(log_w_ref)
    total = r.masked_fill(~valid, 0.0).sum(-1)
    n = valid.sum(-1).to(r.dtype)
    out = total / n
    if bool(torch.isnan(out).any()):
        warnings.warn("EUBO undefined (no valid entry, or both +inf and -inf)", RuntimeWarning,
                      stacklevel=2)
    return _out(out)


def normalised_weights(log_w: Tensor) -> Tensor:
    """W_i = w_i / sum_j w_j along the last dim, float64, `[..., N]`.

    NaN and +inf log-weights count as zero weight (with a warning); a row with no positive
    weight gives all-zero W (not NaN), so that a weighted loss over it is zero.
    """
    lw = _prepare(log_w)
    empty = torch.isneginf(torch.logsumexp(lw, dim=-1, keepdim=True))
    W = torch.softmax(lw.masked_fill(empty, 0.0), dim=-1)
    return W.masked_fill(empty | torch.isneginf(lw), 0.0)


# ---- self-normalised expectations --------------------------------------------------------------
def snis(log_w: Tensor, values: Tensor) -> Estimate:
    """Self-normalised importance-sampling estimate of E_pi[f] with its delta-method SE.

    W_i = w_i / sum_j w_j, mu = sum_i W_i f_i, SE^2 = sum_i W_i^2 (f_i - mu)^2 (Owen, "Monte Carlo
    theory, methods and examples", ch. 9, eq. 9.9). Values at zero weight are ignored, so they may
    be NaN or inf. With no positive weight the estimate is undefined: mean NaN, se inf, and a
    RuntimeWarning.

    Args:
        log_w: log importance weights `[..., N]`.
        values: f(x_i), shape `[..., N, *event]` (the shape of log_w, then any event dims).

    Returns:
        `Estimate(mean, se)`, each of shape `[..., *event]` (floats when that shape is empty).
    """
    lw = _prepare(log_w)
    f = torch.as_tensor(values, device=lw.device).to(dtype=torch.float64)
    if f.shape[: lw.ndim] != lw.shape:
        raise ValueError(f"values {tuple(f.shape)} must start with log_w's shape {tuple(lw.shape)}")
    empty = torch.isneginf(torch.logsumexp(lw, dim=-1))
    W = torch.softmax(lw.masked_fill(empty.unsqueeze(-1), 0.0), dim=-1)
    W = W.masked_fill(torch.isneginf(lw), 0.0)
    W = W.reshape(W.shape + (1,) * (f.ndim - lw.ndim))
    f = torch.where(W > 0, f, torch.zeros_like(f))
    axis = lw.ndim - 1
    mu = (W * f).sum(dim=axis)
    se = ((W * (f - mu.unsqueeze(axis))) ** 2).sum(dim=axis).sqrt()
    if bool(empty.any()):
        warnings.warn(f"{int(empty.sum())} SNIS estimate(s) have no positive weight: mean NaN, "
                      "se inf", RuntimeWarning, stacklevel=2)
        mask = empty.reshape(empty.shape + (1,) * (mu.ndim - empty.ndim))
        mu = mu.masked_fill(mask, float("nan"))
        se = se.masked_fill(mask, math.inf)
    return Estimate(_out(mu), _out(se))


# ---- batches and summaries ---------------------------------------------------------------------
def split_batches(log_w: Tensor, batch_size: int) -> Tensor:
    """Reshapes `[..., N]` into `[..., N // batch_size, batch_size]` independent batches.

    N must be a multiple of batch_size (no sample is dropped silently).
    """
    n = log_w.shape[-1]
    if batch_size < 1 or n % batch_size:
        raise ValueError(f"N = {n} is not a positive multiple of batch_size = {batch_size}")
    return log_w.reshape(*log_w.shape[:-1], n // batch_size, batch_size)


def batch_mean_abs_error(estimates: Tensor, truth: float) -> Estimate:
    """Mean absolute error over independent batches, with its standard error.

    MAE = mean_b |est_b - truth|, SE = std_b(|est_b - truth|) / sqrt(B) (divisor B - 1; inf for
    B = 1). Used for "log Z: mean absolute error over independent batches of a stated size".

    Args:
        estimates: one estimate per batch, `[..., B]` (e.g. `log_Z(split_batches(log_w, n))`).
        truth: the exact value.
    """
    est = estimates if isinstance(estimates, Tensor) else torch.as_tensor(estimates, device="cpu")
    err = (est.to(torch.float64) - truth).abs()
    b = err.shape[-1]
    if b < 1:
        raise ValueError("need at least one batch")
    se = err.std(dim=-1) / math.sqrt(b) if b > 1 else torch.full(err.shape[:-1], math.inf,
                                                                    device=err.device)
    return Estimate(_out(err.mean(dim=-1)), _out(se))


def _restricted_elbo(lw: Tensor) -> Tensor:
    """mean(log w | w > 0) + log(N_+ / N): the ELBO of q restricted to {w > 0} (module docs)."""
    positive = ~torch.isneginf(lw)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return torch.tensor(_NEG_INF, dtype=lw.dtype, device=lw.device)
    return lw[positive].mean() + math.log(n_pos / lw.shape[-1])


def weight_summary(log_w: Tensor) -> dict[str, float]:
    """All reverse-direction diagnostics of one 1-D set of log-weights, as a flat dict.

    Keys: "n" (N), "ess" (Kish count), "ess_fraction", "log_Z" (LSE - log N), "log_Z_se" (delta
    method), "elbo" (mean log w; see below), "n_zero_weight" (-inf), "n_invalid_weight" (NaN or
    +inf, given zero weight).

    With zero weights the plain ELBO (`elbo`) is -inf. The summary reports instead the ELBO of q
    restricted to the support {w > 0}, q' = q / (1 - p_0) with p_0 = q(w = 0):
    E_q'[log gamma - log q'] = E_q[log w | w > 0] + log(1 - p_0), estimated by
    mean(log w | w > 0) + log(N_+ / N). It is still a lower bound of log Z (Jensen under q'),
    equals `elbo` when no weight is zero, and is -inf only when every weight is.
    """
    raw = _as_f64(log_w, "log_w")
    if raw.ndim != 1:
        raise ValueError(f"weight_summary expects a 1-D log_w, got shape {tuple(raw.shape)}")
    counts = {"n_zero_weight": float(n_zero_weight(raw)), "n_invalid_weight": float(n_invalid(raw))}
    lw = raw.masked_fill(_invalid_mask(raw), _NEG_INF)
    n = lw.shape[-1]
    ess_ = _ess(lw)
    return {
        "n": float(n),
        "ess": ess_.item(),
        "ess_fraction": ess_.item() / n,
        "log_Z": _log_Z(lw).item(),
        "log_Z_se": _log_Z_se(lw).item(),
        "elbo": _restricted_elbo(lw).item(),
        **counts,
    }


__all__ = [
    "Estimate",
    "batch_mean_abs_error",
    "elbo",
    "ess",
    "ess_fraction",
    "eubo",
    "forward_ess",
    "forward_ess_fraction",
    "log_Z",
    "log_Z_se",
    "n_invalid",
    "n_zero_weight",
    "replica_log_Z",
    "snis",
    "split_batches",
    "weight_summary",
]
