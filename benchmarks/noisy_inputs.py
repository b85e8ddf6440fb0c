"""``_noise``: the prototype of training on noisy inputs for ``quality.py --ablation`` (study section 26).

The pair's long network trains 3000 updates to their end and over-fits small tables (sections 2, 7 and
25: the learned prior or the codes follow the training rows). Gaussian noise added to each training
batch's numeric columns (already standardised: the noise's scale is in the columns' standard
deviations) is the classic regulariser against that, in two forms:

- ``augment``: the network sees and reconstructs x + noise, so it fits the data's density smoothed by
  N(0, sigma^2) (a kernel density's bandwidth, on a learned model);
- ``denoise``: the encoder sees x + noise and the decoder's likelihood is of the clean x (the
  denoising VAE of Im et al. 2017): the codes of nearby rows overlap, the decoder stays sharp.

Categorical one-hot groups get no noise. Validation (best-epoch choice), calibration and scoring see the
clean rows; the noise is drawn from a generator of its own, so the batches are the default's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ablations import some_runs

MODES = ("augment", "denoise")


def noise_mask(model: Any) -> Any:
    """(n_features,) booleans: the dense network's columns that get noise (all but its one-hot groups)."""
    import torch

    mask = torch.ones(model.n_features, dtype=torch.bool)
    for a, w in model.categorical:
        mask[a : a + w] = False
    return mask


@contextlib.contextmanager
def noisy_inputs(spec: dict[str, Any]) -> Iterator[None]:
    """A context manager under which the fit's training runs numbered in ``spec["runs"]`` (a pair: 0 the
    early-stopped network, 1 the long one; default [1]) train on inputs with N(0, ``spec["sigma"]``^2)
    noise (default 0.1) on their numeric columns, in ``spec["mode"]`` (``augment``, the default, or
    ``denoise``)."""
    import torch

    from anomaly_vae.models import VAEPass

    sigma, runs, mode = float(spec.get("sigma", 0.1)), set(spec.get("runs", [1])), spec.get("mode", "augment")
    if mode not in MODES or not sigma > 0:
        raise SystemExit(f"_noise: mode must be one of {MODES} and sigma > 0, got {mode!r}, {sigma!r}")

    def patched(n: int, original: Any, model: Any, x_train: Any, x_val: Any, cfg: Any, *args: Any, **kw: Any) -> Any:
        if model.kind != "dense":
            raise SystemExit("_noise: a prototype for tables (a dense network)")
        g = torch.Generator().manual_seed(104729 + n)
        numeric = noise_mask(model).to(x_train.dtype).to(x_train.device)
        plain = model.forward  # the bound method: the instance attribute below shadows it for this run

        def forward(x: Any, eps: Any = None) -> Any:
            if not model.training:  # validation, and anything after the run: the clean rows
                return plain(x, eps)
            noisy = x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device) * numeric
            if mode == "augment":
                return plain(noisy, eps)
            mu, logvar = model.encode(noisy)
            z = model.reparameterize(mu, logvar, eps)
            return VAEPass(mu, logvar, z, model.log_likelihood(x, model.decode(z)), getattr(model, "prior_mu", None),
                           getattr(model, "prior_logvar", None))

        model.forward = forward
        try:
            return original(model, x_train, x_val, cfg, *args, **kw)
        finally:
            del model.forward

    with some_runs(runs, patched):
        yield
