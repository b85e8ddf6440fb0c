"""``_vamp``: the prototype of a VampPrior-trained network for ``quality.py --ablation`` (issue 12 names
it "the next step for VAE priors"; study section 25).

The VampPrior (Tomczak and Welling 2017) is p(z) = (1/K) sum_k q(z | u_k), the mixture of the
encoder's posteriors at K pseudo-inputs u_k learned with the network. The package's pair already
scores its long network under the aggregate posterior of the training rows' codes, a VampPrior
whose pseudo-inputs are training rows, but trains it under N(0, I): here the prior the network is
trained under is the one it is scored under (up to the pseudo-inputs)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from ablations import some_runs


@contextlib.contextmanager
def vamp_prior(spec: dict[str, Any]) -> Iterator[None]:
    """A context manager under which the fit's training runs numbered in ``spec["runs"]`` (a pair: 0 the
    early-stopped network, 1 the long one; default [1]) train with a VampPrior of ``spec["k"]`` pseudo-inputs
    (default 200, at most the run's training rows), started at that many training rows drawn with a fixed
    seed and learned with the weights (the KL term is then the Monte-Carlo log q(z|x) - log p(z), as the
    package's aggregate prior has it). ``spec["score"]``: "codes" (default: the package's scoring, the
    aggregate prior of the training rows' codes) or "pseudo" (the learned prior: the pseudo-inputs' codes
    replace the codes the detector sets); only the long run is scored under a mixture prior."""
    import torch

    k_max, runs, score = int(spec.get("k", 200)), set(spec.get("runs", [1])), spec.get("score", "codes")
    if score not in ("codes", "pseudo"):
        raise SystemExit(f"_vamp: score must be 'codes' or 'pseudo', got {score!r}")

    def patched(n: int, original: Any, model: Any, x_train: Any, x_val: Any, cfg: Any, *args: Any, **kw: Any) -> Any:
        g = torch.Generator().manual_seed(7919 + n)
        rows = torch.randperm(x_train.shape[0], generator=g)[: min(k_max, x_train.shape[0])]
        model.vamp_u = torch.nn.Parameter(x_train[rows].detach().clone())
        plain = model.forward  # the bound method: the instance attribute below shadows it for this run

        def forward(x: Any, eps: Any = None) -> Any:
            p = plain(x, eps)
            mu_u, logvar_u = model.encode(model.vamp_u)
            return dataclasses.replace(p, prior_mu=mu_u, prior_logvar=logvar_u)

        model.forward = forward
        try:
            history = original(model, x_train, x_val, cfg, *args, **kw)
            if score == "pseudo" and n == 1:
                with torch.no_grad():
                    learned = model.encode(model.vamp_u)

                def learned_prior(mu: Any, logvar: Any) -> None:  # the detector's codes, replaced once
                    del model.set_aggregate_prior
                    model.set_aggregate_prior(*learned)

                model.set_aggregate_prior = learned_prior
        finally:
            del model.forward
            del model.vamp_u
        return history

    with some_runs(runs, patched):
        yield
