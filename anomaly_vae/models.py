"""The networks: ``DenseVAE`` for feature vectors and ``ConvVAE`` for C x H x W images.

Both share the same interface: ``encode(x) -> (mu, logvar)``, ``reparameterize(mu, logvar, eps)``,
``decode(z) -> params`` (the decoder's output, same shape as ``x``: a Gaussian mean or Bernoulli
logits), a ``likelihood`` sub-module that owns any learned variance, and ``config()`` returning the
constructor arguments as JSON-safe values so a saved model can be rebuilt from its weights.

``model(x, eps)`` is *the* VAE pass (``VAEPass``): encode, draw z, decode, per-element
log-likelihood, and the latent densities. Training's loss terms (``training.loss_terms``) and
every score (``scoring``) are computed from it, so the two cannot drift apart.

Why this module is longer than the others (about 450 lines): every variant of the model that a
saved file can describe is built here from its ``config()``, because the card check builds the
network on PyTorch's meta device to know which tensors a weights file must hold. So the dense
network's categorical groups, its marginal floor, its aggregate prior and its pair (a second
network whose scores add to its own, ``members``) live beside the two networks and the VAE pass
rather than in modules of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .objectives import (LOG_2PI, kl_standard_normal, log_normal, log_normal_mixture, log_standard_normal,
                         make_likelihood, mc_elbo)

__all__ = ["VAE", "VAEPass", "DenseVAE", "ConvVAE", "build_model", "default_network"]

# log-variances outside this range mean a collapsed or exploding posterior; clamping keeps exp() finite
LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


@dataclass(frozen=True)
class VAEPass:
    """One pass of a VAE over a batch ``x`` (B, *event), from ``VAE.forward``.

    ``mu``, ``logvar``: q(z|x), (B, k). ``z``: the latent codes decoded, (*S, B, k), where S is the
    sample shape of the noise (empty for one draw per row; (K,) for K draws); ``z`` is ``mu`` when
    no noise was given. ``log_px_elements``: log p(x | z) per element, (*S, B, *event).
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor
    log_px_elements: torch.Tensor
    prior_mu: torch.Tensor | None = None  # (M, k): the aggregate prior's codes; None: the N(0, I) prior
    prior_logvar: torch.Tensor | None = None

    @property
    def log_px(self) -> torch.Tensor:
        """log p(x | z) summed over the event: (*S, B)."""
        lead = self.log_px_elements.shape[: self.z.dim() - 1]
        return self.log_px_elements.reshape(*lead, -1).sum(dim=-1)

    @property
    def log_pz(self) -> torch.Tensor:
        """log p(z) under the prior (standard normal, or the aggregate posterior's mixture): (*S, B)."""
        if self.prior_mu is not None:
            return log_normal_mixture(self.z, self.prior_mu, self.prior_logvar)
        return log_standard_normal(self.z)

    @property
    def log_qz(self) -> torch.Tensor:
        """log q(z | x): (*S, B)."""
        return log_normal(self.z, self.mu, 0.5 * self.logvar).sum(dim=-1)

    @property
    def log_weights(self) -> torch.Tensor:
        """log p(x|z) + log p(z) - log q(z|x), the importance weights of IWAE: (*S, B)."""
        if self.prior_mu is not None:
            return self.log_px + self.log_pz - self.log_qz
        return mc_elbo(self.log_px, self.z, self.mu, self.logvar)

    @property
    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || p(z)): analytic under the N(0, I) prior; under the aggregate prior, which has
        no closed form, the Monte-Carlo mean of log q(z|x) - log p(z) over the drawn z: (B,)."""
        if self.prior_mu is not None:
            diff = self.log_qz - self.log_pz  # (*S, B)
            return diff.reshape(-1, diff.shape[-1]).mean(dim=0)
        return kl_standard_normal(self.mu, self.logvar)


class VAE(nn.Module):
    """Shared parts of the two networks."""

    kind = "vae"
    event_shape: tuple[int, ...]
    latent_dim: int

    def _init_likelihood(self, likelihood: str, scale: float, min_scale: float) -> None:
        self.likelihood_name = likelihood
        self.likelihood = make_likelihood(likelihood, self.event_shape, scale=scale, min_scale=min_scale)
        self._lik_args = {"likelihood": likelihood, "scale": scale, "min_scale": min_scale}

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps. ``eps`` is passed in (never drawn here) so that scoring can use
        noise fixed at fit time; it broadcasts, e.g. (K, 1, k) against (B, k) gives (K, B, k)."""
        return mu + torch.exp(0.5 * logvar) * eps

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, hidden)
        mu, logvar = self.to_mu(h), self.to_logvar(h)  # (B, k) each
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Per-element log p(x | z), same shape as ``x``."""
        return self.likelihood.log_prob(x, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) from the decoder's output (what ``decode`` reconstructs)."""
        return self.likelihood.mean(params)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> VAEPass:
        """The VAE pass over ``x`` (B, *event): encode, z = mu + sigma * eps (z = mu when ``eps`` is
        None: the posterior mean), decode, and log p(x | z) per element.

        ``eps`` is (B, k) for one draw per row (training) or (K, 1, k) for the same K draws for
        every row (scoring with noise fixed at fit time); z is then (K, B, k)."""
        mu, logvar = self.encode(x)  # (B, k)
        z = mu if eps is None else self.reparameterize(mu, logvar, eps)  # (*S, B, k)
        params = self.decode(z)  # (*S, B, *event)
        target = x if params.shape == x.shape else x.unsqueeze(0).expand_as(params)  # one op for all K draws
        return VAEPass(mu, logvar, z, self.log_likelihood(target, params), getattr(self, "prior_mu", None),
                       getattr(self, "prior_logvar", None))

    @property
    def members(self) -> tuple[VAE, ...]:
        """The networks whose scores add up to this model's score: itself, and its pair (``DenseVAE``)."""
        return (self,)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}


def _mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class DenseVAE(VAE):
    """A VAE on feature vectors: d -> hidden... -> k (mu, logvar); k -> reversed(hidden)... -> d.

    Parameters
    ----------
    n_features : d, the width of an input row (after preprocessing).
    hidden : sizes of the hidden layers of the encoder (the decoder mirrors them).
    latent_dim : k, the size of z.
    likelihood : one of ``objectives.LIKELIHOODS``.
    activation : the hidden layers' nonlinearity, one of ``ACTIVATIONS`` (relu; tanh as in Kingma &
        Welling's original MNIST experiments).
    categorical : (start, width) of each one-hot group of features (a categorical column): each
        group gets a categorical likelihood, log p(category | z) from a softmax over its outputs
        mixed with a uniform floor (``CATEGORY_FLOOR``), instead of ``likelihood``. The per-element
        log-likelihood carries the group's log p on the observed category's position (0 on the
        others), so a column's sum is its log p. Empty: every feature uses ``likelihood``.
    marginal_floor : eps in [0, 1): every other feature's likelihood becomes the mixture
        (1 - eps) p(x | z) + eps N(x; 0, 1), the second part the feature's marginal in standardised
        units. A feature the decoder predicts sharply (one constant in training, sigma at its floor)
        then costs at most about -log(eps) + x^2 / 2 nats, not x^2 / (2 sigma^2): the numeric
        counterpart of ``CATEGORY_FLOOR``. 0 (the default here) is the plain ``likelihood``.
    aggregate_prior : M > 0: the prior p(z) is the aggregate posterior of M training rows,
        (1/M) sum_m q(z | x_m), held as buffers ``prior_mu`` and ``prior_logvar`` (M, k) that
        ``set_aggregate_prior`` fills after training (a VampPrior whose pseudo-inputs are training
        rows; Tomczak and Welling 2018); 0 (the default): N(0, I).
    pair : the ``config()`` of a second network, the same as this one's but for ``aggregate_prior`` (and ``hidden``),
        held as ``second``; the model's score is then the sum of the two networks' scores
        (``members``). Built by ``VAEAnomalyDetector(pair=True)``: see its docstring.
    """

    kind = "dense"

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...] = (64, 32),
        latent_dim: int = 8,
        likelihood: str = "gaussian",
        scale: float = 1.0,
        min_scale: float = 1e-2,
        activation: str = "relu",
        categorical: tuple[tuple[int, int], ...] | list[list[int]] = (),
        marginal_floor: float = 0.0,
        aggregate_prior: int = 0,
        pair: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_marginal_floor(marginal_floor, likelihood)
        self.marginal_floor = float(marginal_floor)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        if n_features < 1:
            raise ValueError(f"n_features must be >= 1, got {n_features}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.n_features, self.hidden, self.latent_dim = int(n_features), tuple(int(h) for h in hidden), int(latent_dim)
        self.event_shape = (self.n_features,)
        last = self.hidden[-1] if self.hidden else self.n_features
        self.encoder = _mlp([self.n_features, *self.hidden], activation)
        self.to_mu = nn.Linear(last, self.latent_dim)
        self.to_logvar = nn.Linear(last, self.latent_dim)
        rev = list(reversed(self.hidden))
        self.decoder = nn.Sequential(_mlp([self.latent_dim, *rev], activation), nn.Linear(rev[-1] if rev else self.latent_dim, self.n_features))
        self._init_likelihood(likelihood, scale, min_scale)
        self.categorical = tuple((int(a), int(w)) for a, w in categorical)
        end = 0
        for a, w in self.categorical:
            if a < end or w < 1 or a + w > self.n_features:
                raise ValueError(f"categorical groups must be ordered, disjoint, at least 1 wide and inside the "
                                 f"{self.n_features} features; got {list(self.categorical)}")
            end = a + w
        if type(aggregate_prior) is not int or aggregate_prior < 0:
            raise ValueError(f"aggregate_prior must be an integer >= 0 (training codes), got {aggregate_prior!r}")
        self.aggregate_prior = int(aggregate_prior)
        if aggregate_prior:  # filled by set_aggregate_prior, or by the saved weights
            self.register_buffer("prior_mu", torch.zeros(aggregate_prior, self.latent_dim))
            self.register_buffer("prior_logvar", torch.zeros(aggregate_prior, self.latent_dim))
        if pair is not None:
            self.attach_pair(build_model(pair))

    def set_aggregate_prior(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Make the prior the mixture of the posteriors N(mu_m, exp(logvar_m)) (M, k) each (codes of
        training rows, from ``encode``): buffers, saved with the weights."""
        if mu.ndim != 2 or mu.shape != logvar.shape or mu.shape[1] != self.latent_dim or mu.shape[0] < 1:
            raise ValueError(f"the aggregate prior needs codes (M >= 1, {self.latent_dim}) for mu and logvar, got "
                             f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
        if not (torch.isfinite(mu).all() and torch.isfinite(logvar).all()):
            raise ValueError("the aggregate prior's codes must be finite")
        self.register_buffer("prior_mu", mu.detach().float().clone())
        self.register_buffer("prior_logvar", logvar.detach().float().clamp(LOGVAR_MIN, LOGVAR_MAX).clone())
        self.aggregate_prior = int(mu.shape[0])

    def attach_pair(self, second: DenseVAE) -> None:
        """Hold ``second`` as this model's pair: it must be this network but for its aggregate prior
        and its hidden layers (the input, the likelihood and the latent space, whose noise draws the
        two share at scoring, are one)."""
        mine = {k: v for k, v in self.config().items() if k not in ("pair", "hidden")}
        theirs = ({k: v for k, v in second.config().items() if k not in ("aggregate_prior", "hidden")}
                  if isinstance(second, DenseVAE) else None)
        if theirs != mine or "aggregate_prior" in mine:  # equal dicts: neither has a pair of its own
            raise ValueError("a pair is two networks of the same architecture but for their hidden layers (the "
                             f"second may have an aggregate prior, the first none); got {mine} and {second.config()}")
        self.second = second

    @property
    def members(self) -> tuple[VAE, ...]:
        second = getattr(self, "second", None)
        return (self,) if second is None else (self, second)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (..., d)

    def log_likelihood(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        out = self.likelihood.log_prob(x, params)
        if self.marginal_floor > 0:  # the categorical groups' positions are replaced below
            eps = self.marginal_floor
            marginal = (math.log(eps) - 0.5 * LOG_2PI) - 0.5 * x * x
            a, b = out + math.log1p(-eps), marginal
            # logaddexp written out: the ONNX export of torch.logaddexp is log(exp(a) + exp(b)), which
            # gives -inf for a far value (a and b below -104 in float32); this form stays finite
            out = torch.maximum(a, b) + torch.log1p(torch.exp(-torch.abs(a - b)))
        if not self.categorical:
            return out
        parts, end = [], 0
        for a, w in self.categorical:
            parts += [out[..., end:a], x[..., a : a + w] * _log_categorical(params[..., a : a + w])]
            end = a + w
        parts.append(out[..., end:])
        return torch.cat(parts, dim=-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        out = self.likelihood.mean(params)
        if not self.categorical:
            return out
        out = out.clone()
        for a, w in self.categorical:
            out[..., a : a + w] = torch.exp(_log_categorical(params[..., a : a + w]))
        return out

    def config(self) -> dict[str, Any]:
        cfg = {"kind": self.kind, "n_features": self.n_features, "hidden": list(self.hidden),
               "latent_dim": self.latent_dim, "activation": self.activation, **self._lik_args}
        if self.categorical:  # absent when empty: configs of all-numeric models are as before
            cfg["categorical"] = [list(g) for g in self.categorical]
        if self.marginal_floor > 0:  # absent when 0: configs written before the option are as before
            cfg["marginal_floor"] = self.marginal_floor
        if self.aggregate_prior:  # absent when 0, as the floor
            cfg["aggregate_prior"] = self.aggregate_prior
        second = getattr(self, "second", None)
        if second is not None:
            cfg["pair"] = second.config()
        return cfg


def check_marginal_floor(eps: Any, likelihood: str) -> None:
    """``eps`` is a number in [0, 1), and 0 for a Bernoulli likelihood (whose data is not standardised)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not 0 <= eps < 1:
        raise ValueError(f"marginal_floor must be a number in [0, 1), got {eps!r}")
    if eps > 0 and likelihood == "bernoulli":
        raise ValueError("marginal_floor mixes a Gaussian likelihood with N(0, 1); it must be 0 with likelihood='bernoulli'")


# a category's probability is at least CATEGORY_FLOOR / width: a category never seen in training
# (or one the decoder gave up on) costs at most log(width / CATEGORY_FLOOR) nats, about 7 + log(width)
CATEGORY_FLOOR = 1e-3


def _log_categorical(logits: torch.Tensor) -> torch.Tensor:
    """log of (1 - floor) * softmax(logits) + floor / width, over the last dimension."""
    w = logits.shape[-1]
    return torch.logaddexp(torch.log_softmax(logits, dim=-1) + math.log1p(-CATEGORY_FLOOR),
                           torch.full_like(logits, math.log(CATEGORY_FLOOR / w)))


def default_conv_channels(height: int, width: int) -> tuple[int, ...]:
    """32, 64, then doubling (up to 256) until the feature map is at most 8 pixels on a side."""
    channels = [32, 64]
    size = min(height, width)
    size = -(-size // 4)  # two stride-2 layers, each ceil(n / 2)
    while size > 8:
        channels.append(min(256, channels[-1] * 2))
        size = -(-size // 2)
    return tuple(channels)


class ConvVAE(VAE):
    """A convolutional VAE on C x H x W images (C = 1 or 3, H and W >= 8).

    The encoder is a stack of 3x3 stride-2 convolutions (each halves the size, rounding up), then a
    dense layer; the decoder mirrors it with transposed convolutions whose output padding is chosen
    so that any size, odd or even, comes back exactly.
    """

    kind = "conv"

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        latent_dim: int = 16,
        channels: tuple[int, ...] | None = None,
        hidden: int = 256,
        likelihood: str = "gaussian",
        scale: float = 1.0,
        min_scale: float = 1e-2,
    ) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        if height < 8 or width < 8:
            raise ValueError(f"images must be at least 8x8, got {height}x{width}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.in_channels, self.height, self.width = int(in_channels), int(height), int(width)
        self.latent_dim, self.hidden = int(latent_dim), int(hidden)
        self.channels = tuple(int(c) for c in (channels or default_conv_channels(height, width)))
        self.event_shape = (self.in_channels, self.height, self.width)

        sizes = [(self.height, self.width)]
        enc: list[nn.Module] = []
        c_in = self.in_channels
        for c in self.channels:
            enc += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.ReLU()]
            c_in = c
            h, w = sizes[-1]
            sizes.append((-(-h // 2), -(-w // 2)))
        self._feature_shape = (self.channels[-1], *sizes[-1])
        flat = self.channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, self.hidden), nn.ReLU())
        self.to_mu = nn.Linear(self.hidden, self.latent_dim)
        self.to_logvar = nn.Linear(self.hidden, self.latent_dim)

        self.from_z = nn.Sequential(nn.Linear(self.latent_dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, flat), nn.ReLU())
        dec: list[nn.Module] = []
        outs = list(reversed(self.channels[:-1])) + [self.in_channels]
        c_in = self.channels[-1]
        for i, c_out in enumerate(outs):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            pad = (h_out - (2 * h_in - 1), w_out - (2 * w_in - 1))  # 0 or 1: recovers odd sizes
            dec.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(outs) - 1:
                dec.append(nn.ReLU())
            c_in = c_out
        self.deconv = nn.Sequential(*dec)
        self._init_likelihood(likelihood, scale, min_scale)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = self.from_z(z.reshape(-1, self.latent_dim))  # (N, flat)
        x = self.deconv(h.reshape(-1, *self._feature_shape))  # (N, C, H, W)
        return x.reshape(*lead, *self.event_shape)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "in_channels": self.in_channels, "height": self.height, "width": self.width,
                "latent_dim": self.latent_dim, "channels": list(self.channels), "hidden": self.hidden, **self._lik_args}


def default_network(kind: str, event_shape: tuple[int, ...], *, input_kind: str, likelihood: str = "gaussian",
                    latent_dim: int | None = None, hidden_sizes: tuple[int, ...] | None = None,
                    conv_channels: tuple[int, ...] | None = None, min_scale: float | None = None,
                    activation: str = "relu", categorical: tuple[tuple[int, int], ...] = (),
                    marginal_floor: float = 0.0) -> VAE:
    """The network the estimator fits for inputs of ``event_shape``, its unset sizes by rule.

    Parameters
    ----------
    kind : "dense" or "conv".
    event_shape : one sample's shape after preprocessing: (d,) for a table, (C, H, W) for images.
    input_kind : "table" or "image" (the default ``min_scale``: 0.01 for tables, 0.05 for images).
    latent_dim : None picks 16 for a conv network and clip(d // 2, 2, 16) for a dense one.
    hidden_sizes : dense hidden layers; None picks (64, 32), or (256, 128) above 100 features.
    conv_channels : None picks ``default_conv_channels``.
    likelihood, min_scale, activation : as ``DenseVAE`` / ``ConvVAE``.
    categorical : the one-hot groups of a table (``TablePreprocessor.categorical_groups``), each
        given a categorical likelihood (dense only).
    marginal_floor : as ``DenseVAE``; tables only (images refuse anything but 0).

    Returns
    -------
    VAE : a freshly initialised ``DenseVAE`` or ``ConvVAE`` (the torch seed decides its weights).
    """
    if marginal_floor and input_kind != "table":
        raise ValueError(f"marginal_floor applies to tables (standardised columns), not to {input_kind} input; "
                         f"got {marginal_floor!r}")
    floor = float(min_scale) if min_scale is not None else (0.05 if input_kind == "image" else 0.01)
    if kind == "conv":
        if marginal_floor:
            raise ValueError(f"marginal_floor applies to dense networks (tables); got {marginal_floor!r} for a conv one")
        c, h, w = event_shape
        return ConvVAE(c, h, w, latent_dim=int(latent_dim or 16), min_scale=floor,
                       channels=tuple(conv_channels) if conv_channels else None, likelihood=likelihood)
    d = int(np.prod(event_shape))
    hidden = tuple(hidden_sizes) if hidden_sizes else ((256, 128) if d > 100 else (64, 32))
    latent = int(latent_dim or min(16, max(2, d // 2)))
    return DenseVAE(d, hidden=hidden, latent_dim=latent, likelihood=likelihood, min_scale=floor, activation=activation,
                    categorical=categorical, marginal_floor=marginal_floor)


def build_model(config: dict[str, Any]) -> VAE:
    """Rebuild a network from ``model.config()`` (the inverse used when loading an artifact)."""
    cfg = dict(config)
    kind = cfg.pop("kind", None)
    if kind == "dense":
        cfg["hidden"] = tuple(cfg["hidden"])
        return DenseVAE(**cfg)
    if kind == "conv":
        cfg["channels"] = tuple(cfg["channels"])
        return ConvVAE(**cfg)
    raise ValueError(f"unknown model kind {kind!r}; expected 'dense' or 'conv'")
