"""Anomaly scores per sample (higher = more anomalous, in nats) and per feature / pixel.

Determinism: every forward pass runs on a block of exactly ``BLOCK`` rows (the last block padded
with zeros) with exactly one intra-op thread, so a row always meets the same kernels and the same
work split whatever batch, position, batch size or thread count it came in with; more threads
score more blocks at once (``workers``), never one block faster. Monte-Carlo scores use noise fixed
at fit time (common random numbers), never a fresh draw. Memory is bounded by the block size times
the number of samples (times ``workers``).

Across CPUs the contract is narrower: oneDNN and the BLAS pick kernels by instruction set (AVX2,
AVX-512, AMX), which sum in another order, so the same model on another x86-64 CPU gives scores
within ``CROSS_CPU_RTOL`` (relative; ``CROSS_CPU_ATOL`` nats absolute near zero) of these, not
bit-identical ones. Tested by scoring in a child process restricted to AVX2 kernels
(``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``).

Finite scores: no NaN or infinity leaves this module. Inputs are bounded upstream (the
preprocessing caps standardised values at ``preprocessing.Z_MAX``); a score that still is not
finite, or exceeds ``SCORE_MAX`` nats, is reported as ``SCORE_MAX`` (an input the model cannot
represent is as anomalous as it gets) and logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .models import VAE

log = logging.getLogger(__name__)

__all__ = ["SCORES", "BLOCK", "SCORE_MAX", "CROSS_CPU_RTOL", "CROSS_CPU_ATOL", "score_samples", "feature_scores",
           "block_scores", "draw_noise", "single_thread"]

SCORES = ("elbo", "reconstruction", "iwae")
BLOCK = 64  # rows per forward pass; fixed so that results do not depend on the batch
SCORE_MAX = 1e30  # nats: the largest score reported; a non-finite one becomes this
CROSS_CPU_RTOL, CROSS_CPU_ATOL = 1e-5, 1e-3  # the same model's scores on two CPUs (float32 sums in another order)


def draw_noise(n_samples: int, latent_dim: int, seed: int) -> torch.Tensor:
    """The fixed standard-normal noise used by Monte-Carlo scores: (n_samples, latent_dim)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n_samples, latent_dim, generator=g)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the calling thread's torch ops on one intra-op thread, then restore its setting.

    torch's setting is per thread (OpenMP), so this does not slow other threads down."""
    old = torch.get_num_threads()
    if old != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if old != 1:
            torch.set_num_threads(old)


def _blocks(x: torch.Tensor, device: torch.device) -> Iterator[tuple[torch.Tensor, int]]:
    """Yield (block of exactly BLOCK rows on ``device``, number of real rows in it)."""
    for start in range(0, x.shape[0], BLOCK):
        part = x[start : start + BLOCK]
        n = part.shape[0]
        if n < BLOCK:
            pad = torch.zeros((BLOCK - n, *part.shape[1:]), dtype=part.dtype)
            part = torch.cat([part, pad])
        yield part.to(device), n


def _run_blocks(fn, x: torch.Tensor, device: torch.device, workers: int) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """``fn(block)[:n]`` for every block of ``x``, in order, each block on one CPU thread; with
    ``workers`` > 1, that many blocks at a time (torch releases the GIL inside its kernels)."""
    blocks = list(_blocks(x, device))

    def one(item: tuple[torch.Tensor, int]) -> torch.Tensor:
        blk, n = item
        # no_grad here too: autograd's mode is per thread, and a pool thread does not inherit the caller's
        # (with it on, every block's result kept its whole forward graph alive until the last block was done)
        with single_thread(), torch.no_grad():
            return fn(blk)[:n].cpu()

    if device.type != "cpu":
        return [fn(blk)[:n].cpu() for blk, n in blocks]
    if workers <= 1 or len(blocks) <= 1:
        return [one(item) for item in blocks]
    with ThreadPoolExecutor(min(workers, len(blocks)), thread_name_prefix="anomaly-vae-score") as pool:
        return list(pool.map(one, blocks))


def _finite(scores: np.ndarray, what: str) -> np.ndarray:
    """``scores`` with NaN, infinity and anything above ``SCORE_MAX`` (below -``SCORE_MAX``) capped."""
    bad = ~np.isfinite(scores) | (np.abs(scores) > SCORE_MAX)
    if bad.any():
        log.warning("%d %s beyond what float arithmetic can represent reported as %g nats", int(bad.sum()), what,
                    SCORE_MAX)
        scores = np.where(np.isnan(scores), SCORE_MAX, np.clip(scores, -SCORE_MAX, SCORE_MAX))
    return scores


def block_scores(model: VAE, x: torch.Tensor, score: str, noise: torch.Tensor) -> torch.Tensor:
    """The scores of one batch ``x`` (B, *event) as a float32 tensor (B,), uncapped: the torch
    computation behind ``score_samples`` (which runs it per fixed block and caps the result), and
    the one ``onnx`` traces into its graph, so that the two cannot drift apart. A model with a pair
    (``model.members``) scores the sum of its networks' scores, each with the same noise."""
    return _summed_over_members(model, lambda net: _network_scores(net, x, score, noise))


def _summed_over_members(model: VAE, fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """``fn(network)`` summed over ``model.members`` (the model alone, or the two networks of a pair)."""
    first, *others = model.members
    out = fn(first)
    for other in others:
        out = out + fn(other)
    return out


def _network_scores(model: VAE, x: torch.Tensor, score: str, noise: torch.Tensor) -> torch.Tensor:
    """``block_scores`` of one network."""
    if score == "reconstruction":
        return -model(x).log_px  # z = posterior mean
    p = model(x, noise.unsqueeze(1))  # the same K draws for every row: z (K, B, k)
    if score == "elbo":
        return -p.log_px.mean(dim=0) + p.kl
    # iwae: -log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x); log_w (K, B) the log importance weights
    log_w = p.log_weights
    k = torch.tensor(float(noise.shape[0]))
    return -(torch.logsumexp(log_w, dim=0) - torch.log(k))


@torch.no_grad()
def score_samples(model: VAE, x: torch.Tensor, score: str, noise: torch.Tensor, workers: int = 1) -> np.ndarray:
    """Anomaly score of each row of ``x`` (N, *event): float64 array (N,), higher = more anomalous,
    always finite (see the module docstring). ``workers``: blocks scored at once on the CPU.

    ``"elbo"``: -ELBO = -E_q[log p(x|z)] + KL(q(z|x) || p(z)) with the expectation over the fixed
    noise; ``"reconstruction"``: -log p(x | z = posterior mean); ``"iwae"``: the importance-weighted
    estimate of -log p(x) with K = len(noise) samples (Burda et al. 2016). All in nats.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    device = next(model.parameters()).device
    noise = noise.to(device)
    was_training = model.training
    model.eval()
    try:
        out = _run_blocks(lambda blk: block_scores(model, blk, score, noise), x, device, workers)
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0)
    return _finite(torch.cat(out).double().numpy(), "score(s)")


@torch.no_grad()
def feature_scores(model: VAE, x: torch.Tensor, workers: int = 1) -> np.ndarray:
    """Per-element -log p(x | z = posterior mean): float64 array (N, *event) whose sum over the
    event dimensions is the ``"reconstruction"`` score (before capping, see ``SCORE_MAX``); a pair's
    is the sum of its networks'."""
    device = next(model.parameters()).device

    def per_element(blk: torch.Tensor) -> torch.Tensor:
        return _summed_over_members(model, lambda net: -net(blk).log_px_elements)  # z = posterior mean

    was_training = model.training
    model.eval()
    try:
        out = _run_blocks(per_element, x, device, workers)
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, *x.shape[1:]))
    return _finite(torch.cat(out).double().numpy(), "feature score(s)")
