"""Figures for run directories and experiments; the only module that imports matplotlib.

Every function takes plain arrays (numpy or torch), writes one PNG with the Agg backend and
returns its path, so that library code never touches a display. Histograms take their bins from
the reference (when one is given) and state in the legend how many generated values fell outside
that range instead of dropping them silently.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "e.png"
>>> energy_histogram({"samples": np.random.randn(100)}, path).name
'e.png'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ArrayLike = Any  # numpy array or torch tensor
_REFERENCE = "reference"


def _np(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _finite(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def _bins(series: Mapping[str, np.ndarray], n_bins: int, tail: float) -> np.ndarray:
    """Bins spanning the reference's central 1 - 2*tail mass; without a reference, robust bins
    from all series pooled: the central 90 % widened by its own width on each side (so that a
    few samples with overlapping atoms at E ~ 1e16 cannot stretch the axis). Values outside
    the bins are piled into the edge bins and counted in the legend."""
    base = series.get(_REFERENCE)
    robust = base is None or base.size == 0
    if robust:
        base = np.concatenate([v for v in series.values()] or [np.zeros(1)])
    if base.size == 0:
        base = np.zeros(1)
    if robust:
        q5, q95 = np.quantile(base, [0.05, 0.95])
        lo, hi = max(base.min(), q5 - (q95 - q5)), min(base.max(), q95 + (q95 - q5))
    else:
        lo, hi = np.quantile(base, [tail, 1.0 - tail])
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def _overlaid_histograms(
    series: Mapping[str, ArrayLike], path: Path, xlabel: str, title: str, n_bins: int,
    tail: float,
) -> Path:
    arrays = {k: _np(v).ravel() for k, v in series.items()}
    finite = {k: _finite(v) for k, v in arrays.items()}
    bins = _bins(finite, n_bins, tail)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in finite.items():
        outside = int(((values < bins[0]) | (values > bins[-1])).sum())
        nonfinite = arrays[label].size - values.size
        note = f" ({outside} outside range" + (f", {nonfinite} non-finite)" if nonfinite else ")")
        style = {"color": "k", "histtype": "step", "lw": 1.5} if label == _REFERENCE else {
            "alpha": 0.5, "histtype": "stepfilled"}
        ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins, density=True,
                label=f"{label}, n={values.size}{note}", **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, path)


def energy_histogram(
    energies: Mapping[str, ArrayLike], path: str | Path, *, title: str = "energy",
    n_bins: int = 60, tail: float = 0.005,
) -> Path:
    """Overlaid energy histograms; the series named "reference" (if any) sets the bins.

    Values beyond the reference's [tail, 1 - tail] quantiles are piled into the edge bins and
    counted in the legend.
    """
    return _overlaid_histograms(energies, Path(path), "reduced energy E/kT", title, n_bins, tail)


def distance_histogram(
    distances: Mapping[str, ArrayLike], path: str | Path, *,
    title: str = "interatomic distances", n_bins: int = 60,
) -> Path:
    """Overlaid histograms of interatomic distances (bins from the reference's full range)."""
    return _overlaid_histograms(distances, Path(path), "distance", title, n_bins, 0.0)


def scatter_2d(
    points: Mapping[str, ArrayLike], path: str | Path, *, title: str = "samples",
    xlabel: str = "x[0]", ylabel: str = "x[1]", max_points: int = 5000,
) -> Path:
    """Scatter plots of 2-column point sets side by side (shared axes), one panel per series."""
    arrays = {k: _np(v).reshape(-1, 2) for k, v in points.items()}
    fig, axes = plt.subplots(1, len(arrays), figsize=(4 * len(arrays), 4), squeeze=False,
                             sharex=True, sharey=True)
    for ax, (label, xy) in zip(axes[0], arrays.items(), strict=True):
        xy = xy[np.isfinite(xy).all(axis=1)][:max_points]
        ax.scatter(xy[:, 0], xy[:, 1], s=2, alpha=0.4, color="k" if label == _REFERENCE else None)
        ax.set_title(f"{label} (n={len(xy)})", fontsize=9)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel(ylabel)
    fig.suptitle(title)
    return _save(fig, path)


def traces(
    series: Mapping[str, Sequence[float] | ArrayLike], path: str | Path, *,
    title: str = "diagnostics", xlabel: str = "step", ylabel: str = "",
    log_y: bool = False, first_step: int = 0,
    x: Mapping[str, Sequence[float] | ArrayLike] | None = None,
) -> Path:
    """Line plots of 1-D traces (e.g. ESS fraction per annealing step) on one axis, x counting
    from `first_step`, or at the points `x[label]` where given (markers, sorted by x)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in series.items():
        y = _np(values).ravel()
        if x is not None and label in x:
            xs = _np(x[label]).ravel()
            order = np.argsort(xs)
            ax.plot(xs[order], y[order], "o-", label=label)
            continue
        ax.plot(np.arange(first_step, first_step + len(y)), y, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


Curve = tuple[Sequence[float], ...]  # (x, y), or (x, y, error bar half-widths)
Band = tuple[Sequence[float], Sequence[float], Sequence[float]]  # (x, lower, upper)


def curve_grid(
    rows: Mapping[str, Mapping[str, Mapping[str, Curve]]], path: str | Path, *,
    xlabel: str = "", xscale: str = "linear", yscale: str = "linear", style: str = "o-",
    bands: Mapping[str, Mapping[str, Mapping[str, Band]]] | None = None,
) -> Path:
    """A grid of line plots: rows[ylabel][panel title][curve label] = (x, y) or (x, y, err),
    the last drawn with error bars; bands[ylabel][panel title][label] = (x, lower, upper) are
    shaded regions (e.g. a noise floor's mean +- 2 std).

    Every row shares its y label, every column its panel title (taken from the first row);
    e.g. error against dimension, one column per mixture, one row per metric.
    """
    bands = bands or {}
    titles = list(dict.fromkeys(t for panels in rows.values() for t in panels))
    fig, axes = plt.subplots(len(rows), len(titles), figsize=(4 * len(titles), 3.2 * len(rows)),
                             squeeze=False)
    for i, (ylabel, panels) in enumerate(rows.items()):
        for j, title in enumerate(titles):
            ax = axes[i, j]
            for label, (x, lo, hi) in bands.get(ylabel, {}).get(title, {}).items():
                ax.fill_between(_np(x), _np(lo), _np(hi), color="0.8", alpha=0.7, label=label)
            for label, curve in panels.get(title, {}).items():
                if len(curve) == 3:
                    ax.errorbar(_np(curve[0]), _np(curve[1]), yerr=_np(curve[2]), fmt=style,
                                capsize=2, label=label)
                else:
                    ax.plot(_np(curve[0]), _np(curve[1]), style, label=label)
            ax.set(xscale=xscale, yscale=yscale, xlabel=xlabel, ylabel=ylabel)
            if i == 0:
                ax.set_title(title, fontsize=9)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(handles, labels, fontsize=7)
    return _save(fig, path, tight=True)


def image_grid(
    images: Mapping[str, Mapping[str, ArrayLike]], path: str | Path, *,
    extent: tuple[float, float, float, float] | None = None, cmap: str = "viridis",
) -> Path:
    """A grid of 2-D images (e.g. densities on a grid): images[row][column] = array `[ny, nx]`
    with row 0 at the bottom (`origin="lower"`); each panel titled "row, column"."""
    rows = list(images)
    cols = list(dict.fromkeys(c for panels in images.values() for c in panels))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3 * len(cols), 2.6 * len(rows)),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if col in images[row]:
                ax.imshow(_np(images[row][col]), origin="lower", extent=extent, cmap=cmap)
                ax.set_title(f"{row}, {col}", fontsize=8)
    return _save(fig, path, tight=True)


def ess_trace(ess_fraction: Mapping[str, ArrayLike], path: str | Path, **kwargs: Any) -> Path:
    """ESS / N against step (Kish ESS; see boltzkit.mc.estimators.ess)."""
    kwargs.setdefault("title", "effective sample size")
    return traces(ess_fraction, path, ylabel="ESS / N", **kwargs)


def ramachandran(torsions: Mapping[str, ArrayLike], path: str | Path, *, n_bins: int = 60
                 ) -> Path:
    """(phi, psi) histograms side by side, one panel per series (pass the reference first), on
    a shared log colour scale of the density over [-pi, pi)^2 (radians; phi across)."""
    arrays = {k: _np(v).reshape(-1, 2) for k, v in torsions.items()}
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    hists = {k: np.histogram2d(v[:, 0], v[:, 1], bins=[edges, edges], density=True)[0]
             for k, v in arrays.items()}
    top = max(float(h.max()) for h in hists.values()) or 1.0
    fig, axes = plt.subplots(1, len(hists), figsize=(4 * len(hists), 4), squeeze=False,
                             sharex=True, sharey=True)
    norm = matplotlib.colors.LogNorm(vmin=top * 1e-4, vmax=top)
    for ax, (label, hist) in zip(axes[0], hists.items(), strict=True):
        ax.pcolormesh(edges, edges, np.where(hist > 0, hist, np.nan).T, norm=norm,
                      cmap="viridis")
        ax.set_title(f"{label} (n={len(arrays[label])})", fontsize=9)
        ax.set_xlabel("phi (rad)")
        ax.set_aspect("equal")
    axes[0][0].set_ylabel("psi (rad)")
    fig.suptitle("Ramachandran plot")
    return _save(fig, path)


def ramachandran_grid(series: Mapping[str, Mapping[float, ArrayLike]], path: str | Path, *,
                      n_bins: int = 60) -> Path:
    """(phi, psi) histograms, one row per series (the reference first), one column per
    temperature (K), on one log colour scale per column (radians; phi across)."""
    temps = sorted({t for by_t in series.values() for t in by_t})
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    fig, axes = plt.subplots(len(series), len(temps), figsize=(2.6 * len(temps),
                             2.6 * len(series)), squeeze=False, sharex=True, sharey=True)
    for j, t in enumerate(temps):
        hists = {name: np.histogram2d(*_np(by_t[t]).reshape(-1, 2).T, bins=[edges, edges],
                                      density=True)[0] if t in by_t else None
                 for name, by_t in series.items()}
        top = max((float(h.max()) for h in hists.values() if h is not None), default=1.0)
        norm = matplotlib.colors.LogNorm(vmin=top * 1e-4, vmax=top or 1.0)
        for i, (name, hist) in enumerate(hists.items()):
            ax = axes[i][j]
            if hist is not None:
                ax.pcolormesh(edges, edges, np.where(hist > 0, hist, np.nan).T, norm=norm,
                              cmap="viridis")
            ax.set_title(f"{name}, {t:g} K", fontsize=8)
            ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("phi (rad)")
    for row in axes:
        row[0].set_ylabel("psi (rad)")
    return _save(fig, path, tight=True)


def free_energy_profiles(profiles: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike]],
                         path: str | Path, *, xlabel: str = "phi (rad)") -> Path:
    """Free energy F (kT, minimum 0) against an angle with SE error bars, one line per series
    of (bin centres, F, SE); empty bins (F = inf) are left out."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (centres, f, se) in profiles.items():
        c, f, se = _np(centres), _np(f), _np(se)
        keep = np.isfinite(f)
        ax.errorbar(c[keep], f[keep], yerr=np.nan_to_num(se[keep]), label=label, capsize=2,
                    marker="o", ms=3, color="k" if label == _REFERENCE else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("free energy (kT)")
    ax.set_xlim(-np.pi, np.pi)
    ax.legend(fontsize=8)
    ax.set_title("free energy along phi (batch-means SE)")
    return _save(fig, path)


def molecule_figures(out_dir: str | Path, samples: ArrayLike, reference: ArrayLike | None,
                     label: str = "samples") -> list[Path]:
    """ramachandran.png and free_energy_phi.png of alanine-dipeptide configurations `[n, 66]`
    (the reference beside / under the samples when given)."""
    import torch

    from boltzkit.evaluate import molecular

    sets = {} if reference is None else {_REFERENCE: reference}
    sets[label] = samples
    phi_psi = {k: molecular.torsions(torch.as_tensor(_np(v))) for k, v in sets.items()}
    out = Path(out_dir)
    return [ramachandran(phi_psi, out / "ramachandran.png"),
            free_energy_profiles({k: tuple(molecular.free_energy_profile(v[:, 0]))
                                  for k, v in phi_psi.items()}, out / "free_energy_phi.png")]


def pairwise_distances(x: ArrayLike, n_particles: int, spatial_dim: int) -> np.ndarray:
    """The n(n-1)/2 interatomic distances of each configuration, `[n, n_particles*(n-1)/2]`."""
    xp = _np(x).reshape(-1, n_particles, spatial_dim)
    i, j = np.triu_indices(n_particles, k=1)
    return np.linalg.norm(xp[:, i] - xp[:, j], axis=-1)


def run_figures(
    out_dir: str | Path,
    samples: ArrayLike,
    energies: ArrayLike,
    *,
    reference: ArrayLike | None = None,
    reference_energies: ArrayLike | None = None,
    n_particles: int | None = None,
    spatial_dim: int | None = None,
    diagnostics: Mapping[str, Any] | None = None,
    label: str = "samples",
    molecule: bool = False,
) -> list[Path]:
    """The standard figures of a run directory: energy histogram, a 2-D view (first two
    coordinates, or all particle positions in the first two spatial axes), interatomic
    distances for particle systems, and any ESS trace found in `diagnostics` (a list under a key
    containing "ess"); for molecules (`molecule=True`, alanine dipeptide) the Ramachandran
    and free-energy-along-phi figures. Returns the paths written."""
    out = Path(out_dir)
    x = _np(samples)
    energy = {label: _np(energies)}
    if reference_energies is not None:
        energy[_REFERENCE] = _np(reference_energies)
    paths = [energy_histogram(energy, out / "energy_hist.png")]
    views = {label: x}
    if reference is not None:
        views[_REFERENCE] = _np(reference)
    if n_particles is not None and spatial_dim is not None and spatial_dim >= 2:
        positions = {k: v.reshape(-1, spatial_dim)[:, :2] for k, v in views.items()}
        paths.append(scatter_2d(positions, out / "positions.png", title="particle positions",
                                xlabel="x", ylabel="y"))
    elif x.shape[-1] >= 2:
        paths.append(scatter_2d({k: v[:, :2] for k, v in views.items()}, out / "projection.png",
                                title="first two coordinates"))
    if n_particles is not None and spatial_dim is not None:
        dists = {k: pairwise_distances(v, n_particles, spatial_dim) for k, v in views.items()}
        paths.append(distance_histogram(dists, out / "distances.png"))
    if molecule and len(x):
        paths += molecule_figures(out, x, reference, label)
    diagnostics = diagnostics or {}
    ess = {k: v for k, v in diagnostics.items()
           if "ess" in k.lower() and not k.endswith("_x") and _is_trace(v)}
    by_step = {k: v for k, v in ess.items() if f"{k}_x" not in diagnostics}
    if by_step:
        paths.append(ess_trace(by_step, out / "ess.png"))
    for key in sorted(set(ess) - set(by_step)):  # ESS at other points (e.g. conditions)
        paths.append(ess_trace({key: ess[key]}, out / f"{key}.png",
                               x={key: diagnostics[f"{key}_x"]},
                               xlabel=str(diagnostics.get(f"{key}_xlabel", "x"))))
    return paths


def _is_trace(value: Any) -> bool:
    if not isinstance(value, list | tuple) or len(value) < 2:
        return False
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)


def _save(fig: Any, path: str | Path, tight: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    else:
        # Fixed margins for the per-run figures: tight_layout draws every figure twice.
        fig.subplots_adjust(left=0.1, right=0.97, bottom=0.13, top=0.88, wspace=0.12)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
