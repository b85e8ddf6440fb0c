"""Likelihoods, divergences and ELBO estimates.

Every function returns log-densities in nats. Per-element functions keep the event shape so
that per-feature / per-pixel contributions can be reported; ``sum_event`` reduces them to one
number per sample.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "BernoulliLikelihood",
    "GaussianLikelihood",
    "LIKELIHOODS",
    "make_likelihood",
    "log_normal_mixture",
    "sum_event",
    "kl_standard_normal",
    "log_standard_normal",
    "log_normal",
    "gaussian_kernel",
    "mmd",
    "mc_elbo",
]


def sum_event(t: torch.Tensor) -> torch.Tensor:
    """Sum every dimension but the first: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


class BernoulliLikelihood(nn.Module):
    """p(x | z) = Bernoulli(sigmoid(logits)); x must lie in [0, 1] (continuous Bernoulli is not
    normalised, so for grey levels this is a cross-entropy, not a density)."""

    name = "bernoulli"

    def log_prob(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-element log p(x | logits), same shape as ``x``."""
        return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")

    def init_from_data(self, x: torch.Tensor) -> None:
        """Nothing to initialise: a Bernoulli decoder has no parameters of its own."""

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class GaussianLikelihood(nn.Module):
    """p(x | z) = N(x; loc(z), sigma^2) with sigma fixed, learned per feature, or learned and shared.

    Parameters
    ----------
    event_shape : shape of one sample, e.g. ``(d,)`` or ``(C, H, W)``.
    variance : ``"fixed"`` (sigma = ``scale``: the loss is a scaled MSE), ``"feature"`` (one learned
        sigma per feature / pixel) or ``"shared"`` (one learned sigma for all).
    scale : the fixed sigma, and the initial sigma of the learned variants.
    min_scale : floor on a learned sigma, so a feature that never varies in training cannot drive
        its sigma (and every score) to zero.
    """

    name = "gaussian"

    def __init__(
        self,
        event_shape: tuple[int, ...],
        variance: str = "feature",
        scale: float = 1.0,
        min_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        if variance not in ("fixed", "feature", "shared"):
            raise ValueError(f"variance must be 'fixed', 'feature' or 'shared', got {variance!r}")
        if not scale > min_scale > 0:
            raise ValueError(f"need scale > min_scale > 0, got scale={scale}, min_scale={min_scale}")
        self.variance = variance
        self.min_scale = float(min_scale)
        self.fixed_scale = float(scale)
        if variance == "fixed":
            self.raw_scale = None
        else:
            shape = tuple(event_shape) if variance == "feature" else (1,)
            # inverse softplus, so that scale() starts at ``scale``
            init = math.log(math.expm1(scale - min_scale))
            self.raw_scale = nn.Parameter(torch.full(shape, init))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Start a learned sigma at the data's own spread (per feature, or overall when shared):
        the error of a decoder that only knows the mean. Features that never vary start at the
        floor, so the first epochs already treat any change there as unlikely."""
        if self.raw_scale is None:
            return
        std = x.std(dim=0) if self.variance == "feature" else x.std().reshape(1)
        target = std.clamp(min=self.min_scale * 1.01, max=1e3) - self.min_scale
        self.raw_scale.copy_(target + torch.log(-torch.expm1(-target)))  # inverse softplus

    def scale(self) -> torch.Tensor:
        if self.raw_scale is None:
            return torch.tensor(self.fixed_scale)
        return self.min_scale + F.softplus(self.raw_scale)

    def log_prob(self, x: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        """Per-element log N(x; loc, sigma^2), same shape as ``x``."""
        sigma = self.scale().to(loc)
        return log_normal(x, loc, torch.log(sigma))

    def mean(self, loc: torch.Tensor) -> torch.Tensor:
        return loc


LIKELIHOODS = ("gaussian", "gaussian-shared", "gaussian-fixed", "bernoulli")


def make_likelihood(name: str, event_shape: tuple[int, ...], scale: float = 1.0, min_scale: float = 1e-2) -> nn.Module:
    """Build a likelihood by name: one of ``LIKELIHOODS``."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    variance = {"gaussian": "feature", "gaussian-shared": "shared", "gaussian-fixed": "fixed"}.get(name)
    if variance is None:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {name!r}")
    return GaussianLikelihood(event_shape, variance=variance, scale=scale, min_scale=min_scale)


def log_normal(x: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mu, exp(log_sigma)^2)."""
    return -0.5 * LOG_2PI - log_sigma - 0.5 * ((x - mu) * torch.exp(-log_sigma)) ** 2


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last dimension: (..., k) -> (...)."""
    return (-0.5 * LOG_2PI - 0.5 * z**2).sum(dim=-1)


def log_normal_mixture(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log (1/M) sum_m N(z; mu_m, diag(exp(logvar_m))), the density of an equal mixture of M diagonal
    Gaussians: ``z`` (..., k), ``mu`` and ``logvar`` (M, k) -> (...).

    Each component's log density is one row of a matrix product, [z^2, z] @ [-1/(2 var), mu / var]^T
    plus a constant per component, in float64: memory (..., M), not (..., M, k), and no float32
    cancellation between the large terms of a narrow component. The log-sum-exp floors each
    component's gap to the largest at -80 nats (what it leaves out is below e^-80 of the sum): the
    exponential of a very negative number takes a slow path in the CPU's vector kernels, which made
    the whole score about four times slower."""
    zd, mud, lvd = z.double(), mu.double(), logvar.double()
    inv = torch.exp(-lvd)  # (M, k)
    const = -0.5 * ((mud * mud * inv).sum(dim=-1) + lvd.sum(dim=-1) + mu.shape[-1] * LOG_2PI)  # (M,)
    weights = torch.cat([-0.5 * inv, mud * inv], dim=-1)  # (M, 2k)
    comp = torch.cat([zd * zd, zd], dim=-1) @ weights.T  # (..., M)
    if comp.requires_grad:
        comp = comp + const
        top = comp.amax(dim=-1, keepdim=True)
        total = torch.exp((comp - top).clamp_min(-80.0)).sum(dim=-1)
    else:  # scoring: the same numbers in place, one (..., M) buffer instead of four (a pair scores B x S x M
        # float64 a block: four fresh 8 MB buffers a block made glibc map and fault in 32 MB a block, and halved
        # the rows a second, whenever its heap's trim and mmap thresholds were where a Parquet read left them)
        comp.add_(const)
        top = comp.amax(dim=-1, keepdim=True)
        total = comp.sub_(top).clamp_min_(-80.0).exp_().sum(dim=-1)
    return (top.squeeze(-1) + torch.log(total) - math.log(mu.shape[0])).to(z.dtype)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample: (B, k) -> (B,)."""
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar).sum(dim=-1)


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """k(a_i, b_j) = exp(-||a_i - b_j||^2 / (2 h^2)); h^2 defaults to the dimension (Zhao et al.)."""
    h2 = float(a.shape[-1]) if bandwidth is None else float(bandwidth) ** 2
    d2 = torch.cdist(a, b, p=2.0) ** 2
    return torch.exp(-d2 / (2.0 * h2))


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples (the biased V-statistic, >= 0):
    mean k(a, a') + mean k(b, b') - 2 mean k(a, b)."""
    return (
        gaussian_kernel(a, a, bandwidth).mean()
        + gaussian_kernel(b, b, bandwidth).mean()
        - 2.0 * gaussian_kernel(a, b, bandwidth).mean()
    )


def mc_elbo(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The Monte-Carlo ELBO estimate log p(x|z) + log p(z) - log q(z|x) at samples ``z`` of
    q(z|x) = N(mu, exp(logvar)): ``log_px`` (..., B), ``z`` (..., B, k) -> (..., B)."""
    return log_px + log_standard_normal(z) - log_normal(z, mu, 0.5 * logvar).sum(dim=-1)
