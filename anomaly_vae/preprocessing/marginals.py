"""Column marginals made normal before the network (``VAEAnomalyDetector(marginals="kde")``).

A numeric column whose tails are close to a normal's (``heavy_tail_ratio`` at most
``MAX_HEAVY_TAILS``) is given to the network as z = Phi^-1(F(x)), F the CDF of a Gaussian kernel
density of its training values (Silverman's bandwidth, at most ``MAX_CENTRES`` centres), instead of
(x - mean) / std; heavy-tailed and spiky columns stay standardised. The map is stored as a
piecewise-linear function, knots (x, z), continued linearly past both ends: monotone, exact at the
knots, and the same numbers in numpy and in an ONNX graph. Its log slope is the change of variables
that keeps the score -log p(x) of the row as it came: the detector adds minus the log slope of
every mapped column (``log_jacobian``), once for each network of the model, so the score is in nats
of the columns' own units. Study section 29 of ``benchmarks/results/quality-study.md`` measured it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MARGINALS", "MAX_HEAVY_TAILS", "MAX_CENTRES", "MAX_KNOTS", "heavy_tail_ratio", "fit_column_map",
           "arrays", "apply_map", "log_slope_at", "check_column_map"]

MARGINALS = ("standard", "kde")
MAX_HEAVY_TAILS = 1.5  # (q99 - q01) over a normal's with the column's IQR: 1 for a normal column
MAX_CENTRES = 2000  # the kernel density's centres: the training values, or this many of their quantiles
TAIL_BANDWIDTHS = 30.0  # the knots reach this many bandwidths past the data; the map is a line beyond
MAX_KNOTS = 1024  # per column, in the card (a column of 64 MB of knots is refused when the card is read)
_BULK, _SPAN = 512, 256  # knots at the training values' quantiles, and evenly over the whole span


def heavy_tail_ratio(finite: np.ndarray) -> float:
    """The 1-99 % range of the values over a normal's with their IQR: 1 for a normal column, more for
    heavier tails, infinity when the IQR is 0 (a spike: most rows share one value)."""
    q = np.quantile(finite, [0.01, 0.25, 0.75, 0.99])
    iqr = q[2] - q[1]
    return float((q[3] - q[0]) / (2 * 2.326 * iqr / 1.349)) if iqr > 0 else float("inf")


def _kde_normal_scores(x: np.ndarray, centres: np.ndarray, h: float) -> np.ndarray:
    """z = Phi^-1(F(x)) under the Gaussian KDE (``centres``, bandwidth ``h``), in log space so that a
    value far past the data keeps a finite z."""
    from scipy.special import log_ndtr, logsumexp, ndtri_exp

    z = np.empty(len(x))
    for a in range(0, len(x), 256):
        u = (x[a:a + 256, None] - centres[None, :]) / h
        log_cdf = logsumexp(log_ndtr(u), axis=1) - np.log(len(centres))
        log_sf = logsumexp(log_ndtr(-u), axis=1) - np.log(len(centres))
        z[a:a + 256] = np.where(log_cdf < np.log(0.5), ndtri_exp(np.minimum(log_cdf, 0.0)),
                                -ndtri_exp(np.minimum(log_sf, 0.0)))
    return z


def fit_column_map(finite: np.ndarray) -> dict[str, list[float]] | None:
    """The map of one column from its finite training values, as ``{"x": knots, "z": values}`` (both
    strictly increasing, at most ``MAX_KNOTS``), or None where the column stays standardised: fewer
    than two distinct values, heavy tails or a spike (``heavy_tail_ratio`` above ``MAX_HEAVY_TAILS``)."""
    finite = np.sort(np.asarray(finite, dtype=np.float64))
    if len(finite) < 2 or finite[0] == finite[-1] or heavy_tail_ratio(finite) > MAX_HEAVY_TAILS:
        return None
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    sd = float(finite.std())
    h = 0.9 * min(sd, float(q3 - q1) / 1.349) * len(finite) ** -0.2  # the IQR is > 0 (the ratio is finite)
    if not (np.isfinite(h) and h > 0):
        return None
    centres = finite if len(finite) <= MAX_CENTRES else np.quantile(finite, (np.arange(MAX_CENTRES) + 0.5) / MAX_CENTRES)
    lo, hi = centres[0] - TAIL_BANDWIDTHS * h, centres[-1] + TAIL_BANDWIDTHS * h
    x = np.unique(np.concatenate([np.quantile(finite, np.linspace(0.0, 1.0, _BULK)), np.linspace(lo, hi, _SPAN)]))
    z = _kde_normal_scores(x, centres, h)
    keep = np.concatenate([[True], (np.diff(z) > 1e-9) & (np.diff(x) > 0)])  # strictly increasing, for the inverse
    x, z = x[keep], z[keep]
    if len(x) < 2 or not np.all(np.isfinite(z)):
        return None
    return {"x": x.tolist(), "z": z.tolist()}


def arrays(m: dict[str, list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored map as (x knots, z knots, slopes): slopes (len(x) + 1,) are dz/dx of the line below
    the first knot, of each segment, and of the line past the last one (the end segments' own)."""
    x, z = np.asarray(m["x"], dtype=np.float64), np.asarray(m["z"], dtype=np.float64)
    s = np.diff(z) / np.diff(x)
    return x, z, np.concatenate([s[:1], s, s[-1:]])


def apply_map(values: np.ndarray, x: np.ndarray, z: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """z of ``values`` (float64): from the knot at or below a value (the first one below them all)
    along its segment's slope, a line past either end; NaN stays NaN. The ONNX graph computes the
    same formula in float64 (``anomaly_vae.onnx``)."""
    i = np.searchsorted(x, values, side="right")  # knots at or below: 0 below them all, len(x) past the last
    j = np.clip(i - 1, 0, len(x) - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        out = z[j] + (values - x[j]) * slopes[i]
    return np.where(np.isnan(values), np.nan, out)


def log_slope_at(zv: np.ndarray, z: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """log dz/dx of the map where it gave ``zv`` (what the network was given, float32 or 64): the
    segment's, found by z (the map is strictly increasing); at a knot, the segment that starts there."""
    return np.log(slopes)[np.searchsorted(z, np.asarray(zv, dtype=np.float64), side="right")]


def check_column_map(m: Any) -> str | None:
    """What is wrong with a stored map (None: nothing): two lists of the same length, 2 to
    ``MAX_KNOTS`` finite numbers, both strictly increasing."""
    if not isinstance(m, dict) or set(m) != {"x", "z"}:
        return 'an object with "x" and "z"'
    x, z = (np.asarray(m[k], dtype=np.float64) for k in ("x", "z"))
    if x.ndim != 1 or x.shape != z.shape or not 2 <= len(x) <= MAX_KNOTS:
        return f'"x" and "z" of one length, 2 to {MAX_KNOTS} numbers'
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(z))):
        return "finite numbers"
    if not (np.all(np.diff(x) > 0) and np.all(np.diff(z) > 0)):
        return '"x" and "z" strictly increasing'
    return None
