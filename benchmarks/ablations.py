"""Named configurations of VAEAnomalyDetector for ``quality.py --ablation`` (constructor
arguments on top of the defaults). The study in results/quality-study.md says which won.

Keys starting with ``_`` are rules prototyped here, in the benchmark, before any went into the
package: ``_steps`` (epochs for about that many gradient updates), ``_members`` (an ensemble of
seeds), ``_tails`` (asinh of heavy-tailed columns), ``_agg`` (the aggregate-posterior prior at
scoring), ``_floor`` (each numeric column's marginal N(0, 1) mixed into its likelihood; with
``_floor_constant_only``, only for the columns constant in training; the package's
``marginal_floor`` option since), ``_background`` (images: the likelihood ratio against a model
of perturbed images), ``_select_hidden`` (the early-stopped network's layers chosen by held-out
ELBO), ``_latent`` (the latent size as a multiple of the input's width), ``_seed`` (another model
seed on the same split), ``_runs`` (training settings of one of a pair's two runs), ``_module``
(the pair's constants), ``_vamp`` (a long network trained under a VampPrior, in vampprior.py),
``_noise`` (the long network trained on noisy inputs, in noisy_inputs.py), ``_quantile`` and
``_kde`` (each numeric column made normal by its training rows' ranks or by a kernel density's CDF,
``quantile_data`` and ``kde_data``) with ``_quantile_jacobian`` (their change of variables added to
the score once for each network of the model, so it is in the columns' own units; ``_jacobian_weight``
scales it). None of them won across the board; see the study."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

# the tables' defaults before session 12 (one network, no floor); since, "auto" gives a table
# pair=True, marginal_floor=0.01, pair_hidden_sizes=(256, 128) (quality-study.md, section 19)
SINGLE: dict[str, Any] = {"pair": False, "marginal_floor": 0.0}

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},  # the package's defaults, whatever they are
    "single": SINGLE,  # the defaults up to session 11 (the saved scores' "default" before session 12)
    # training length (issue 12: "early stopping on 9 validation rows stops after a few epochs")
    "long": {"epochs": 1000, "patience": 50},
    "steps1k": {"_steps": 1000, "patience": 20},
    "steps3k": {"_steps": 3000, "patience": 30},
    "steps3k_noval": {"_steps": 3000, "validation_size": 0},
    "steps3k_wd": {"_steps": 3000, "patience": 30, "weight_decay": 0.001},
    # the Gaussian's floor
    "min_scale_0.1": {"min_scale": 0.1},
    "steps3k_ms0.1": {"_steps": 3000, "patience": 30, "min_scale": 0.1},
    "steps3k_ms0.3": {"_steps": 3000, "patience": 30, "min_scale": 0.3},
    # heavy tails: asinh of the columns whose 1-99% range is more than 3x a normal's for their IQR, or all
    "tails3": {"_tails": 3},
    "tails_all": {"_tails": "all"},
    # ensembles of seeds, combined as a mixture: -log mean exp(-score)
    "ens5": {"_members": 5},
    "steps3k_ms0.1_ens3": {"_steps": 3000, "patience": 30, "min_scale": 0.1, "_members": 3},
    # the prior replaced at scoring by the aggregate posterior of (up to 1000) training rows
    "agg": {"_agg": {}},
    "agg_mix0.1": {"_agg": {"mix": 0.1}},
    "agg_inflate0.1": {"_agg": {"inflate": 0.1}},
    "agg_steps3k": {"_steps": 3000, "patience": 30, "_agg": {}},
    # images: a fit under 60 s a class
    "img_e10": {"epochs": 10},
    "img_e20": {"epochs": 20},
    "img_e20_lr3e-3": {"epochs": 20, "learning_rate": 0.003},
    "img_e20_agg": {"epochs": 20, "_agg": {}},
    # images: cheaper per image (fewer channels, so a dense layer of 32 x 7 x 7 instead of 64 x 7 x 7) or
    # fewer, larger steps
    "img_c16": {"conv_channels": [16, 32]},
    "img_b256": {"batch_size": 256, "learning_rate": 0.002},
    "img_c16_b256": {"conv_channels": [16, 32], "batch_size": 256, "learning_rate": 0.002},
    # session 6, tables: one sigma for every column (the metric KNN uses), with longer training and the
    # aggregate prior; a smaller latent space, the IWAE score, a heavier KL (beta), stronger weight decay
    "shared": {"likelihood": "gaussian-shared"},
    "shared_s3k": {"likelihood": "gaussian-shared", "_steps": 3000, "patience": 30},
    "shared_agg": {"likelihood": "gaussian-shared", "_agg": {}},
    "shared_s3k_agg": {"likelihood": "gaussian-shared", "_steps": 3000, "patience": 30, "_agg": {}},
    "s3k_l4": {"_steps": 3000, "patience": 30, "latent_dim": 4},
    "s3k_l2": {"_steps": 3000, "patience": 30, "latent_dim": 2},
    "s3k_iwae": {"_steps": 3000, "patience": 30, "score_kind": "iwae"},
    "s3k_b1.25": {"_steps": 3000, "patience": 30, "beta": 1.25},
    "s3k_b1.5": {"_steps": 3000, "patience": 30, "beta": 1.5},
    "s3k_b2": {"_steps": 3000, "patience": 30, "beta": 2.0},
    "s3k_b1.5_agg": {"_steps": 3000, "patience": 30, "beta": 1.5, "_agg": {}},
    "s3k_b2_agg": {"_steps": 3000, "patience": 30, "beta": 2.0, "_agg": {}},
    "s3k_wd1e-2": {"_steps": 3000, "patience": 30, "weight_decay": 0.01},
    # session 6, images: fewer epochs with the step decaying to 0 (lr_schedule="cosine")
    "img_cos30": {"epochs": 30, "lr_schedule": "cosine"},
    "img_cos50": {"epochs": 50, "lr_schedule": "cosine"},
    "img_c16_cos30": {"conv_channels": [16, 32], "epochs": 30, "lr_schedule": "cosine"},
    "img_c16_cos50": {"conv_channels": [16, 32], "epochs": 50, "lr_schedule": "cosine"},
    # session 9, images: the likelihood ratio of Ren et al. (2019): score = -ELBO of the model minus
    # -ELBO of a background model, the same recipe fitted on the training images with each pixel
    # replaced by a uniform random value with probability mu (it learns the background statistics
    # and not the semantics; their difference keeps the semantics)
    "img_c16_lr0.2": {"conv_channels": [16, 32], "_background": 0.2},
    # session 7, tables: each numeric column's Gaussian mixed with the column's marginal N(0, 1) (standardised
    # units) at weight eps, in training and scoring: a column the decoder predicts sharply (one constant in
    # training) costs at most about -log(eps) + x^2 / 2 nats instead of x^2 / (2 sigma^2)
    "floor1e-3": {"_floor": 1e-3},
    "floor1e-2": {"_floor": 1e-2},
    "floor1e-3_agg_s3k": {"_floor": 1e-3, "_steps": 3000, "patience": 30, "_agg": {}},
    "floor1e-2_agg_s3k": {"_floor": 1e-2, "_steps": 3000, "patience": 30, "_agg": {}},
    "agg_s3k_mf1e-2": {"marginal_floor": 0.01, "_steps": 3000, "patience": 30, "_agg": {}},
    "mf1e-2": {"marginal_floor": 0.01},
    # session 8: the pair of sections 10 and 12 built into the package (one run, the codes of training rows only)
    "pair": {"pair": True},
    "pair_mf1e-2": {"pair": True, "marginal_floor": 0.01},
    # session 9: the pair with wider or narrower networks (both members; the tables' default is (64, 32))
    "pair_mf1e-2_h128": {"pair": True, "marginal_floor": 0.01, "hidden_sizes": [128, 64]},
    "pair_mf1e-2_h32": {"pair": True, "marginal_floor": 0.01, "hidden_sizes": [32, 16]},
    "pair_mf1e-2_h256": {"pair": True, "marginal_floor": 0.01, "hidden_sizes": [256, 128]},
    "pair_mf1e-2_h512": {"pair": True, "marginal_floor": 0.01, "hidden_sizes": [512, 256]},
    # the long member alone, wide (prototype: the aggregate prior at scoring), for combine.py's
    # sum(floor1e-2, floor1e-2_agg_s3k_h256): a narrow early-stopped member and a wide long one
    "floor1e-2_agg_s3k_h256": {"_floor": 1e-2, "_steps": 3000, "patience": 30, "_agg": {}, "hidden_sizes": [256, 128]},
    # session 11: that sum built into the package, pair_hidden_sizes (the long network's own layers, its own run)
    "pair_mf1e-2_ph256": {"pair": True, "marginal_floor": 0.01, "pair_hidden_sizes": [256, 128]},
    "h128": {"hidden_sizes": [128, 64]},
    # session 12: the default pair with the floor only on the columns constant in the fit's rows (the failure
    # the floor is for; section 17b traced the pair's mammography loss to the floor on every column)
    "pair_cfloor1e-2": {"pair": True, "marginal_floor": 0.0, "pair_hidden_sizes": [256, 128], "_floor": 1e-2,
                        "_floor_constant_only": True},
    # the same floor on the columns constant in the training rows only (none in the shared ADBench tables)
    "floor_const1e-2": {"_floor": 1e-2, "_floor_constant_only": True},
    "floor_const1e-3": {"_floor": 1e-3, "_floor_constant_only": True},
    # session 13: the default pair with its early-stopped network's layers chosen by held-out ELBO
    "pair_sel": {"_select_hidden": [[64, 32], [256, 128]]},
    "pair_sel3": {"_select_hidden": [[32, 16], [64, 32], [256, 128]]},
}
# every configuration written before session 12 measured changes to the defaults of its day: it keeps them
# (one network and no floor unless it says otherwise; a pair without pair_hidden_sizes was the one-run pair)
for _name, _cfg in list(CONFIGS.items()):
    if _name not in ("default", "single", "pair_mf1e-2_ph256", "pair_cfloor1e-2", "pair_sel", "pair_sel3"):
        CONFIGS[_name] = {**SINGLE, **({"pair_hidden_sizes": None} if _cfg.get("pair") else {}), **_cfg}
# since session 14, on top of the package's defaults of the day (the pair on a table)
CONFIGS.update({
    # a latent size of d (both networks), capped, instead of clip(d // 2, 2, 16)
    "latent_d": {"_latent": [1.0, 32]},
    "seed100": {"_seed": 100},  # the default with another model seed, for combine.py's ensembles
    "beta0.5": {"beta": 0.5},
    # training settings of one of the pair's runs only (``_runs``: TrainConfig fields of the first run, then the long one)
    "long_beta0.5": {"_runs": [{}, {"beta": 0.5}]},
    "short_beta0.5": {"_runs": [{"beta": 0.5}, {}]},
    "iwae": {"score_kind": "iwae"},  # the pair scored by the importance-weighted bound (16 samples)
    "ns64": {"n_score_samples": 64},  # the ELBO averaged over 64 draws instead of 16
    "latent_q": {"_latent": [0.25, 16]},  # a quarter of the width instead of half
    # ``_module``: the package's pair constants (anomaly_vae.detector) replaced for the fit
    "long6k": {"_module": {"PAIR_UPDATES": 6000}},
    "long_nostop": {"_module": {"PAIR_PATIENCE": 100000}},
    "codes4k": {"_module": {"PAIR_CODES": 4000}},
    # session 22: rank-Gauss (each value's normal score among the training rows) of the numeric columns
    # with at least that many distinct values, before the detector (``quantile_data``)
    "quantile": {"_quantile": 2},
    "quantile10": {"_quantile": 10},
    "quantile_single": {**SINGLE, "_quantile": 2},
    # the same with the values at 51 quantile levels as knots, and its score made a score of the row as it
    # was (the change of variables, once for each of the pair's networks; quality.py)
    "quantile_k50": {"_quantile": [2, 50]},
    "quantile_k50_jac": {"_quantile": [2, 50], "_quantile_jacobian": True},
    "quantile20_k50_jac": {"_quantile": [20, 50], "_quantile_jacobian": True},
    # the marginal made normal through a Gaussian KDE's CDF (smooth, ``kde_data``), with the Jacobian
    "kde_jac": {"_kde": 2, "_quantile_jacobian": True},
    "kde20_jac": {"_kde": 20, "_quantile_jacobian": True},
    "kde_light3_jac": {"_kde": [2, 3], "_quantile_jacobian": True},  # heavy-tailed columns left standardised
    "kde20_light3_jac": {"_kde": [20, 3], "_quantile_jacobian": True},
    "kde_light1.5_jac": {"_kde": [2, 1.5], "_quantile_jacobian": True},  # only near-normal tails mapped
    # the same rule built into the package (marginals="kde": maps stored as knots, Jacobian in every score)
    "marginals_kde": {"marginals": "kde"},
    "kde_jac_half": {"_kde": 2, "_quantile_jacobian": True, "_jacobian_weight": 0.5},  # once for the pair (an error, kept to compare)
    # the long run without early stopping (its best validation epoch of all PAIR_UPDATES updates), and the
    # first run's patience at least this many updates (10 epochs are 10 updates on a table of 128 rows)
    "nostop_p100": {"_module": {"PAIR_PATIENCE": 100000}, "_runs": [{"_patience_updates": 100}]},
    "nostop_p300": {"_module": {"PAIR_PATIENCE": 100000}, "_runs": [{"_patience_updates": 300}]},
})


def parse(spec: str) -> dict[str, dict[str, Any]]:
    """``"a,b,name={...}"`` -> {name: params}; names from CONFIGS, or inline JSON after ``=``."""
    out: dict[str, dict[str, Any]] = {}
    depth, cur, items = 0, "", []
    for ch in spec:  # split on commas outside braces
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    for item in filter(None, (i.strip() for i in items)):
        if "=" in item:
            name, js = item.split("=", 1)
            out[name] = json.loads(js)
        elif item in CONFIGS:
            out[item] = CONFIGS[item]
        else:
            raise SystemExit(f"unknown configuration {item!r}; known: {', '.join(CONFIGS)} (or name={{json}})")
    return out


# -- prototypes: rules tried in the benchmark before any of them went into the package ----------------------
@contextlib.contextmanager
def setattrs(target: Any, values: dict[str, Any]) -> Iterator[None]:
    """``target``'s attributes named in ``values`` set for the block, the old ones put back after it:
    a prototype's patch holds for one fit and its scoring only."""
    old = {k: getattr(target, k) for k in values}
    for k, v in values.items():
        setattr(target, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(target, k, v)


def some_runs(runs: set[int], run: Any) -> Any:
    """A context manager under which the fit's training runs numbered in ``runs`` (a pair: 0 the
    early-stopped network, 1 the long one) are ``run(n, train, model, x_train, x_val, cfg, *args, **kw)``
    instead of ``train(model, x_train, ...)``, ``train`` the package's; the others are the package's."""
    from anomaly_vae import detector

    original = detector.train
    calls = [0]

    def patched(model: Any, x_train: Any, x_val: Any, cfg: Any, *args: Any, **kw: Any) -> Any:
        n = calls[0]
        calls[0] += 1
        if n not in runs:
            return original(model, x_train, x_val, cfg, *args, **kw)
        return run(n, original, model, x_train, x_val, cfg, *args, **kw)

    return setattrs(detector, {"train": patched})


def marginal_floor(eps: float, constant_only: bool = False) -> Any:
    """``_floor``: a context manager under which every dense VAE's numeric columns have the likelihood
    (1 - eps) N(x; loc(z), sigma^2) + eps N(x; 0, 1) (categorical groups unchanged); with
    ``constant_only`` (``_floor_const``), only the columns constant in the training rows."""
    import math

    import torch

    from anomaly_vae import detector, models

    original = models.DenseVAE.log_likelihood
    original_default = detector.VAEAnomalyDetector._default_model

    def default_model(self: Any, x: Any, hidden_sizes: Any = None) -> Any:
        model = original_default(self, x, hidden_sizes)
        if hidden_sizes is None or not hasattr(self, "_proto_floor_mask"):  # the fit's rows (a pair's long
            self._proto_floor_mask = torch.from_numpy(x.reshape(len(x), -1).std(axis=0) == 0)  # network: 1 row)
        model._floor_mask = self._proto_floor_mask
        return model

    def patched(self: Any, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        out = original(self, x, params)
        numeric = torch.ones(x.shape[-1], dtype=torch.bool)
        for a, w in self.categorical:
            numeric[a:a + w] = False
        if constant_only:
            numeric &= self._floor_mask
        floor = math.log(eps) - 0.5 * math.log(2 * math.pi) - 0.5 * x ** 2
        return torch.where(numeric, torch.logaddexp(out + math.log1p(-eps), floor), out)

    stack = contextlib.ExitStack()
    stack.enter_context(setattrs(models.DenseVAE, {"log_likelihood": patched}))
    stack.enter_context(setattrs(detector.VAEAnomalyDetector, {"_default_model": default_model}))
    return stack


def latent_size(mult: float, cap: int) -> Any:
    """``_latent``: a context manager under which a dense network's latent size, where unset, is
    clip(int(mult * d), 2, cap) for d input features (the package: clip(d // 2, 2, 16))."""
    import numpy as np

    from anomaly_vae import detector

    original = detector.default_network

    def patched(kind: str, event_shape: Any, **kw: Any) -> Any:
        if kind == "dense" and kw.get("latent_dim") is None:
            d = int(np.prod(event_shape))
            kw["latent_dim"] = min(int(cap), max(2, int(mult * d)))
        return original(kind, event_shape, **kw)

    return setattrs(detector, {"default_network": patched})


def run_settings(runs: list[dict[str, Any]]) -> Any:
    """``_runs``: a context manager under which the n-th training run of a fit (a pair: 0 the
    early-stopped network, 1 the long one) has ``runs[n]``'s ``TrainConfig`` fields replaced."""
    import dataclasses

    def patched(n: int, original: Any, model: Any, x_train: Any, x_val: Any, cfg: Any, *args: Any, **kw: Any) -> Any:
        fields = dict(runs[n])
        least = fields.pop("_patience_updates", None)  # patience of at least this many updates
        if least is not None:
            per_epoch = -(-len(x_train) // int(cfg.batch_size))
            fields["patience"] = max(int(cfg.patience), -(-int(least) // per_epoch))
        return original(model, x_train, x_val, dataclasses.replace(cfg, **fields), *args, **kw)

    return some_runs({n for n, fields in enumerate(runs) if fields}, patched)


def module_constants(values: dict[str, Any]) -> Any:
    """``_module``: a context manager under which ``anomaly_vae.detector``'s constants named in
    ``values`` (``PAIR_UPDATES``, ``PAIR_PATIENCE``, ``PAIR_CODES``) have those values."""
    from anomaly_vae import detector

    return setattrs(detector, values)


def epochs_for_steps(steps: int, n: int, kw: dict[str, Any]) -> int:
    """Epochs giving about ``steps`` gradient updates on ``n`` rows (70% of them train by default)."""
    n_train = max(1, int(n * (1 - kw.get("calibration_size", 0.2)) * (1 - kw.get("validation_size", 0.1))))
    per_epoch = -(-n_train // int(kw.get("batch_size", 128)))
    return max(1, -(-int(steps) // per_epoch))


def prototype_data(proto: dict[str, Any], train: Any, test: Any) -> tuple[Any, Any, Any]:
    """(train, test, Jacobian term of the test rows or None). ``_quantile`` and ``_kde``: the marginal
    maps (``quantile_data``, ``kde_data``), with their Jacobian term; ``_tails``: numeric columns whose
    tails are heavy (rule ``_tails``) go through asinh((x - median) / scale), the scale from the
    interquartile range, fitted on ``train``."""
    rule = proto.get("_tails")
    if proto.get("_quantile") is not None:
        return quantile_data(proto["_quantile"], train, test)
    if proto.get("_kde") is not None:
        return kde_data(proto["_kde"], train, test)
    if not rule:
        return train, test, None
    import numpy as np
    import pandas as pd

    tr = pd.DataFrame(train).copy()
    te = pd.DataFrame(test).copy()
    for c in tr.columns:
        if not pd.api.types.is_numeric_dtype(tr[c]):
            continue
        v = tr[c].to_numpy(float)
        q = np.quantile(v, [0.01, 0.25, 0.5, 0.75, 0.99])
        iqr = q[3] - q[1]
        scale = iqr / 1.349 if iqr > 0 else (v.std() or 1.0)
        heavy = (q[4] - q[0]) / (2 * 2.326 * scale)  # 1 for a normal column
        if rule == "all" or heavy > float(rule):
            tr[c] = np.arcsinh((v - q[2]) / scale)
            te[c] = np.arcsinh((te[c].to_numpy(float) - q[2]) / scale)
    return (tr if isinstance(train, pd.DataFrame) else tr.to_numpy()), (te if isinstance(test, pd.DataFrame) else te.to_numpy()), None


def _map_columns(train: Any, test: Any, column_map: Any) -> tuple[Any, Any, Any]:
    """Each numeric column of ``train`` and ``test`` through the map ``column_map(sorted finite training
    values)`` returns (None: left as it is), a function of values giving (z, log dz/dx); missing values
    stay missing. Returns the tables (as they came: DataFrame or array) and, for the test rows, minus
    the log slopes summed over the mapped columns: the change of variables that makes a score of a
    mapped row (nats) a score of the row as it was (``_quantile_jacobian``)."""
    import numpy as np
    import pandas as pd

    tr = pd.DataFrame(train).copy()
    te = pd.DataFrame(test).copy()
    jac = np.zeros(len(te))
    for c in tr.columns:
        if not pd.api.types.is_numeric_dtype(tr[c]):
            continue
        v = tr[c].to_numpy(float)
        finite = np.sort(v[~np.isnan(v)])
        g = column_map(finite)
        if g is None:
            continue
        xt = te[c].to_numpy(float)
        z_train, _ = g(np.nan_to_num(v, nan=finite[len(finite) // 2]))
        z_test, log_slope = g(np.nan_to_num(xt, nan=finite[len(finite) // 2]))
        jac -= np.where(np.isnan(xt), 0.0, log_slope)
        tr[c] = np.where(np.isnan(v), np.nan, z_train)
        te[c] = np.where(np.isnan(xt), np.nan, z_test)
    return ((tr if isinstance(train, pd.DataFrame) else tr.to_numpy()),
            (te if isinstance(test, pd.DataFrame) else te.to_numpy()), jac)


def _robust_scale(finite: Any) -> float:
    import numpy as np

    q1, q3 = np.quantile(finite, [0.25, 0.75])
    return float((q3 - q1) / 1.349) if q3 > q1 else float(finite.std() or 1.0)


def quantile_data(rule: Any, train: Any, test: Any) -> tuple[Any, Any, Any]:
    """``_quantile``: each numeric column with at least ``min_distinct`` distinct training values goes
    through its training rows' normal scores (rank-Gauss): the normal quantile of a value's mid-rank,
    ties sharing one, interpolated linearly between knots and continued linearly past the training
    range with slope 1 / (IQR / 1.349), so a value far beyond the range stays far. ``rule`` is
    ``min_distinct`` (every distinct value a knot) or ``[min_distinct, knots]``: the values at
    ``knots`` + 1 equally spaced quantile levels (0 to 1), so the map's slope is a histogram's density.
    Returns what ``_map_columns`` returns (the slope at a knot is its right segment's; at the last,
    the last segment's). On a column of few distinct values the slopes are no density (the mass
    sits on the knots): the ``_jac`` variants of section 29 were also run with ``min_distinct`` 20."""
    import numpy as np
    from scipy.stats import norm

    min_distinct, n_knots = (rule, None) if not isinstance(rule, (list, tuple)) else rule

    def column_map(finite: np.ndarray) -> Any:
        values, counts = np.unique(finite, return_counts=True)
        if len(values) < max(2, int(min_distinct)):
            return None
        mid = (np.cumsum(counts) - counts / 2) / counts.sum()
        if n_knots is None:
            knots, z = values, norm.ppf(mid)
        else:
            knots = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, int(n_knots) + 1), method="inverted_cdf"))
            # a knot's level: where its value's mass is centred (a value many rows share is one knot)
            z = norm.ppf(np.interp(knots, values, mid))
        scale = _robust_scale(finite)
        log_slopes = np.log(np.concatenate([[1 / scale], np.diff(z) / np.diff(knots), [1 / scale]]))

        def g(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = np.interp(x, knots, z)
            out = np.where(x > knots[-1], z[-1] + (x - knots[-1]) / scale, out)
            out = np.where(x < knots[0], z[0] + (x - knots[0]) / scale, out)
            seg = np.searchsorted(knots, x, side="right")  # 0: below the first knot, len(knots): past the last
            seg = np.where(x == knots[-1], len(knots) - 1, seg)  # the last knot closes the last segment
            return out, log_slopes[seg]

        return g

    return _map_columns(train, test, column_map)


def kde_normal_scores(x: Any, centres: Any, h: float) -> tuple[Any, Any]:
    """``_kde``'s map of one column: z = the normal quantile of ``x``'s CDF under a Gaussian KDE
    (``centres``, bandwidth ``h``), computed in log space so a value far past the data keeps a finite
    z (about (x - max) / h there), and log dz/dx = log f(x) - log phi(z), f the KDE's density."""
    import numpy as np
    from scipy.special import log_ndtr, logsumexp, ndtri_exp

    # past 30 bandwidths from the data the map goes on as a line with its slope there: further out,
    # log f and log phi(z) are both about -(x - edge)^2 / 2h^2 and their difference is float noise
    lo, hi = centres[0] - 30 * h, centres[-1] + 30 * h
    x, inverse = np.unique(x, return_inverse=True)  # each distinct value once (tables repeat values)
    x_all, x = x, np.clip(x, lo, hi)
    z = np.empty(len(x))
    logslope = np.empty(len(x))
    m = len(centres)
    for a in range(0, len(x), 256):
        u = (x[a:a + 256, None] - centres[None, :]) / h
        log_f = logsumexp(-0.5 * u * u, axis=1) - np.log(m * h * np.sqrt(2 * np.pi))
        log_cdf = logsumexp(log_ndtr(u), axis=1) - np.log(m)
        log_sf = logsumexp(log_ndtr(-u), axis=1) - np.log(m)
        zz = np.where(log_cdf < np.log(0.5), ndtri_exp(np.minimum(log_cdf, 0.0)), -ndtri_exp(np.minimum(log_sf, 0.0)))
        z[a:a + 256] = zz
        logslope[a:a + 256] = log_f - (-0.5 * zz * zz - 0.5 * np.log(2 * np.pi))
    return (z + (x_all - x) * np.exp(logslope))[inverse], logslope[inverse]


def heavy_tail_ratio(finite: Any) -> float:
    """The 1-99 % range of a column over a normal's with its IQR (1 for a normal column; ``_tails``'s rule)."""
    import numpy as np

    q = np.quantile(finite, [0.01, 0.25, 0.75, 0.99])
    iqr = q[2] - q[1]
    return float((q[3] - q[0]) / (2 * 2.326 * iqr / 1.349)) if iqr > 0 else float("inf")


def kde_data(rule: Any, train: Any, test: Any) -> tuple[Any, Any, Any]:
    """``_kde``: each numeric column with at least ``rule`` distinct training values (or ``rule`` =
    ``[min_distinct, max_heavy]``: and a ``heavy_tail_ratio`` of at most ``max_heavy``) goes through
    z = Phi^-1(F(x)), F the CDF of a Gaussian KDE of its training values (Silverman's bandwidth,
    0.9 min(sd, IQR / 1.349) n^-1/5; at most 2000 centres, the training values' quantiles): the
    marginal made normal, smoothly, with linear tails past the data. Returns what ``_map_columns``
    returns."""
    import numpy as np

    min_distinct, max_heavy = (rule, None) if not isinstance(rule, (list, tuple)) else rule

    def column_map(finite: np.ndarray) -> Any:
        if len(np.unique(finite)) < max(2, int(min_distinct)):
            return None
        if max_heavy is not None and heavy_tail_ratio(finite) > float(max_heavy):
            return None  # a heavy-tailed column stays standardised (the detector's own scaling)
        h = 0.9 * (min(float(finite.std()), _robust_scale(finite)) or float(finite.std())) * len(finite) ** -0.2
        if not h > 0:
            return None
        centres = finite if len(finite) <= 2000 else np.quantile(finite, (np.arange(2000) + 0.5) / 2000)
        return lambda x: kde_normal_scores(x, centres, h)

    return _map_columns(train, test, column_map)


def aggregate_prior_scores(det: Any, train: Any, test: Any, n_exemplars: int = 1000, inflate: float = 0.0,
                           mix: float = 0.0) -> Any:
    """-ELBO of ``test`` under the fitted decoder and encoder with the prior replaced by the
    aggregate posterior of the training rows: p(z) = 1/M sum_m N(z; mu_m, sigma_m^2 + inflate^2)
    (``mix`` > 0: that much weight on N(0, I)). Monte-Carlo over the detector's fixed noise."""
    import math

    import numpy as np
    import torch

    model = det.model_
    with torch.no_grad():
        xtr = torch.from_numpy(np.asarray(det.preprocess(train)))
        if model.kind == "dense":
            xtr = xtr.reshape(len(xtr), -1)
        idx = np.random.RandomState(0).permutation(len(xtr))[:n_exemplars]
        mu_e, lv_e = model.encode(xtr[idx])
        var_e = torch.exp(lv_e) + inflate ** 2  # (M, k)
        xte = torch.from_numpy(np.asarray(det.preprocess(test)))
        if model.kind == "dense":
            xte = xte.reshape(len(xte), -1)
        out = []
        for start in range(0, len(xte), 512):
            p = model(xte[start:start + 512], det.noise_.unsqueeze(1))  # z (K, B, k)
            z = p.z.unsqueeze(-2)  # (K, B, 1, k)
            comp = (-0.5 * (math.log(2 * math.pi) + torch.log(var_e) + (z - mu_e) ** 2 / var_e)).sum(-1)  # (K,B,M)
            log_pz = torch.logsumexp(comp, dim=-1) - math.log(len(idx))
            if mix > 0:
                log_pz = torch.logaddexp(log_pz + math.log(1 - mix), p.log_pz + math.log(mix))
            out.append(-(p.log_px + log_pz - p.log_qz).mean(0))
        return torch.cat(out).double().numpy()


def perturbed_images(images: Any, mu: float, seed: int) -> Any:
    """``images`` (uint8) with each pixel replaced by a uniform random value in [0, 255] with
    probability ``mu``: the background model's training set (Ren et al. 2019, section 4)."""
    import numpy as np

    if not 0.0 <= float(mu) <= 1.0:
        raise ValueError(f"mu is a probability in [0, 1], got {mu!r}")
    x = np.array(images, copy=True)
    if x.dtype != np.uint8:  # float pixels in [0, 1] would all become 0
        raise ValueError(f"perturbed_images takes uint8 images (0-255 levels), got {x.dtype}")
    rng = np.random.default_rng(seed)
    hit = rng.random(x.shape) < mu
    x[hit] = rng.integers(0, 256, size=int(hit.sum()), dtype=np.uint8)
    return x


def select_hidden(fit: Any, kw: dict[str, Any], candidates: Any) -> list[int]:
    """``_select_hidden``: the early-stopped network's layers, chosen among ``candidates`` by the best
    held-out (validation) loss of a fit of one network of each, with the configuration's seed (so the
    same rows) and floor: label-free model selection by ELBO on normal rows. The pair's first network
    is such a fit bit for bit, so the chosen one is the pair's first member."""
    best, best_loss = None, float("inf")
    for sizes in candidates:
        one = {k: v for k, v in kw.items() if k not in ("pair", "pair_hidden_sizes")}
        det = fit({**one, "pair": False, "hidden_sizes": list(sizes)})
        loss = min(row.get("val_loss", row["loss"]) for row in det.history_)
        if loss < best_loss:
            best, best_loss = list(sizes), loss
        print(f"  _select_hidden {list(sizes)}: best validation loss {loss:.4f}", file=sys.stderr)
    print(f"  _select_hidden chose {best}", file=sys.stderr)
    return best
