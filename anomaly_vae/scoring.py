"""Anomaly scores per sample (higher = more anomalous, in nats) and per feature / pixel.

Determinism: every forward pass runs on a block of exactly ``BLOCK`` rows (the last block padded
with zeros), so a row always meets the same kernels whatever batch, position or batch size it
came in with; Monte-Carlo scores use noise fixed at fit time (common random numbers), never a
fresh draw. Memory is bounded by the block size times the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from .models import VAE
from .objectives import kl_standard_normal, mc_elbo, sum_event

__all__ = ["SCORES", "BLOCK", "score_samples", "feature_scores", "draw_noise"]

SCORES = ("elbo", "reconstruction", "iwae")
BLOCK = 64  # rows per forward pass; fixed so that results do not depend on the batch


def draw_noise(n_samples: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The fixed standard-normal noise used by Monte-Carlo scores: (n_samples, latent_dim)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n_samples, latent_dim, generator=g)


def _blocks(x: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield (block of exactly BLOCK rows, number of real rows in it)."""
    for start in range(0, x.shape[0], BLOCK):
        part = x[start : start + BLOCK]
        n = part.shape[0]
        if n < BLOCK:
            pad = torch.zeros((BLOCK - n, *part.shape[1:]), dtype=part.dtype)
            part = torch.cat([part, pad])
        yield part, n


def _block_scores(model: VAE, x: torch.Tensor, score: str, noise: torch.Tensor) -> torch.Tensor:
    mu, logvar = model.encode(x)  # (B, k)
    if score == "reconstruction":
        return -sum_event(model.log_likelihood(x, model.decode(mu)))
    z = model.reparameterize(mu.unsqueeze(0), logvar.unsqueeze(0), noise.unsqueeze(1))  # (K, B, k)
    params = model.decode(z)  # (K, B, *event)
    k, b = params.shape[:2]
    per = model.log_likelihood(x.unsqueeze(0).expand_as(params), params)  # (K, B, *event), one op for all K
    log_px = per.reshape(k, b, -1).sum(dim=2)  # (K, B)
    if score == "elbo":
        return -log_px.mean(dim=0) + kl_standard_normal(mu, logvar)
    # iwae: -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)
    log_w = mc_elbo(log_px, z, mu, logvar)  # (K, B): log importance weights
    k = torch.tensor(float(noise.shape[0]))
    return -(torch.logsumexp(log_w, dim=0) - torch.log(k))


@torch.no_grad()
def score_samples(model: VAE, x: torch.Tensor, score: str, noise: torch.Tensor) -> np.ndarray:
    """Anomaly score of each row of ``x`` (N, *event): float64 array (N,), higher = more anomalous.

    ``"elbo"``: -ELBO = -E_q[log p(x|z)] + KL(q(z|x) || p(z)) with the expectation over the fixed
    noise; ``"reconstruction"``: -log p(x | z = posterior mean); ``"iwae"``: the importance-weighted
    estimate of -log p(x) with K = len(noise) samples (Burda et al. 2016). All in nats.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    was_training = model.training
    model.eval()
    try:
        out = [_block_scores(model, blk, score, noise)[:n] for blk, n in _blocks(x)]
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0)
    return torch.cat(out).double().numpy()


@torch.no_grad()
def feature_scores(model: VAE, x: torch.Tensor) -> np.ndarray:
    """Per-element -log p(x | z = posterior mean): float64 array (N, *event) whose sum over the
    event dimensions is the ``"reconstruction"`` score."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for blk, n in _blocks(x):
            mu, _ = model.encode(blk)
            out.append(-model.log_likelihood(blk, model.decode(mu))[:n])
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *x.shape[1:]))
    return torch.cat(out).double().numpy()
