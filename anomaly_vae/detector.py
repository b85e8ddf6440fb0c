"""``VAEAnomalyDetector``: the scikit-learn-style estimator that composes the core modules.

Why this module is longer than the others (about 1000 lines): it is one class, the package's public
estimator, and most of its length is the documentation of its public methods. Everything with a
purpose of its own lives elsewhere and is called from here: the input rules in ``preprocessing``,
the networks and their default sizes in ``models``, the fit loop in ``training``, the scores in
``scoring``, the thresholds in ``calibration`` and the model directory in ``artifact``. What stays
is what only the estimator can do: validate its parameters, split the data, and own the mapping of
its fitted state (``fitted_state`` / ``from_fitted_state``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from . import calibration as cal
from .artifact import read_model, save_model
from .card import MAX_LAYERS, MAX_PRIOR_WORK, MAX_WIDTH
from .exceptions import ArtifactError, CalibrationError, InputError
from .io import atomic_output
from .models import ACTIVATIONS, VAE, build_model, check_marginal_floor, default_network
from .preprocessing import ImagePreprocessor, TablePreprocessor, as_table, is_image_input
from .preprocessing.marginals import MARGINALS
from .scoring import SCORE_MAX, SCORES, draw_noise
from .scoring import feature_scores as _feature_scores
from .scoring import score_samples as _score_samples
from .training import CHECKPOINT_JSON, CHECKPOINT_TENSORS, TrainConfig, checkpoint_run, train

log = logging.getLogger(__name__)

__all__ = ["VAEAnomalyDetector", "load_detector", "PAIR_UPDATES", "PAIR_PATIENCE", "PAIR_CODES", "TABLE_MARGINAL_FLOOR",
           "PAIR_HIDDEN_SIZES"]

# pair=True: the long network's training and the training rows whose codes make its prior (quality-study.md,
# sections 10, 12 and 21: measured, not tuned). The long run trains PAIR_UPDATES gradient updates at the
# default 100 epochs (scaled with ``epochs``) and keeps its best validation epoch of them all: PAIR_PATIENCE
# (epochs) is never reached. Until session 14 it was 30 epochs, which on a small table are a few dozen
# updates: the long network of a table of a few hundred rows stopped barely trained (section 21)
PAIR_UPDATES, PAIR_PATIENCE, PAIR_CODES = 3000, 2**31 - 1, 1000
PAIR_CHECKPOINT = "pair"  # a two-run pair's long run checkpoints in this folder of checkpoint_dir
PAIR_START = "start"  # in checkpoint_dir/pair: which end of the first run the long run's checkpoint started from
# ... and by which rule it runs: a long-run checkpoint of the early-stopped long run (before session 14; its
# start mark has no rule) is started again, not refused for its patience nor gone on with to another model
LONG_RULE = "to-end"
# what "auto" gives a table (quality-study.md, section 19): the marginal floor, and a pair whose long
# network has these layers, in a run of its own
TABLE_MARGINAL_FLOOR, PAIR_HIDDEN_SIZES = 0.01, (256, 128)
# the parameters a card leaves out at their "off" values (fitted_state): a card without them was fitted so,
# whatever today's defaults are
CARD_OFF_VALUES = {"marginal_floor": 0.0, "pair": False, "pair_hidden_sizes": None, "lr_schedule": "constant",
                   "marginals": "standard"}
# settings of how a fitted model runs, not of what was fitted: set_params after a fit changes them for the
# model itself, and the card records the current values (every other parameter as the fit had it)
RUNTIME_PARAMS = ("n_threads", "device", "verbose")


def _check_layers(name: str, sizes: Any, least: int) -> None:
    """``sizes`` is None or a list / tuple / 1-d array of ``least`` to ``MAX_LAYERS`` integer widths
    in 1..``MAX_WIDTH``, the card's bounds (a set or a dict would give its layers in an order of its own)."""
    if sizes is None:
        return
    if (not isinstance(sizes, (list, tuple, np.ndarray)) or not least <= len(sizes) <= MAX_LAYERS
            or not all(isinstance(h, (int, np.integer)) and not isinstance(h, (bool, np.bool_)) and 1 <= h <= MAX_WIDTH
                       for h in sizes)):
        raise ValueError(f"{name} must be None or a list of {least} to {MAX_LAYERS} layer widths, integers in "
                         f"1..{MAX_WIDTH}; got {sizes!r}")


def _long_start(folder: Path) -> str:
    """What ``folder/PAIR_START`` says ("" when there is none, or it is no regular file)."""
    mark = folder / PAIR_START
    try:
        return mark.read_text()[:200] if mark.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return ""


def _long_run_start(folder: Path) -> str | None:
    """The first run's epochs (as the mark writes them) after which the long run checkpointed in
    ``folder`` started, when it runs by today's rule (``LONG_RULE``); else None."""
    mark = _long_start(folder)
    return mark.split("-")[0] if mark.endswith(f"-{LONG_RULE}") else None


def _start_long_checkpoint(folder: Path, first_epochs: int, generator: torch.Generator) -> None:
    """Keep the long run's checkpoint in ``folder`` only if it started where this fit's long run starts:
    after the first run's ``first_epochs`` epochs, with the random generator in this state (the long
    run's draws follow from it), by today's rule (``LONG_RULE``). Otherwise (the first run trained on
    since, in this fit or another, no record of where it started, or a long run stopped early by the
    rule before session 14) its files are removed and the start is recorded afresh."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: a pair's long run checkpoints there; remove it, or give another "
                         "checkpoint_dir")
    if (folder / PAIR_START).is_dir():  # before anything is removed: the mark could not be written over it
        raise ValueError(f"{folder / PAIR_START} is a folder: it should be the long run's start mark, a file; remove "
                         "it, or give another checkpoint_dir")
    start = f"{first_epochs}-{hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()[:32]}-{LONG_RULE}"
    if _long_start(folder) == start:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in (CHECKPOINT_JSON, CHECKPOINT_TENSORS):
        try:
            (folder / name).unlink(missing_ok=True)
        except IsADirectoryError:
            pass  # not a checkpoint; saving one there says so
    with atomic_output(folder / PAIR_START) as tmp:
        tmp.write_text(start)


def _is_auto(value: Any) -> bool:
    return isinstance(value, str) and value == "auto"


def pair_codes(n_score_samples: int) -> int:
    """The training rows whose codes make a pair's aggregate prior: ``PAIR_CODES``, fewer where
    ``n_score_samples`` x codes would pass ``card.MAX_PRIOR_WORK`` (the numbers a row's prior holds)."""
    return max(1, min(PAIR_CODES, MAX_PRIOR_WORK // max(1, n_score_samples)))


def fit_rows(n: int, n_calibration: int, n_validation: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fit's split of its ``n`` rows by its ``seed`` (``fit_info_`` holds all four): the indices of
    the (calibration, validation, training) rows."""
    perm = np.random.RandomState(seed).permutation(n)
    n_cv = n_calibration + n_validation
    return perm[:n_calibration], perm[n_calibration:n_cv], perm[n_cv:]


def pair_code_rows(n_train: int, n_score_samples: int, seed: int) -> np.ndarray:
    """Which of a fit's ``n_train`` training rows (sorted indices into them) give their codes to a
    pair's aggregate prior: ``pair_codes`` of them, drawn by the fit's ``seed``."""
    return np.sort(np.random.RandomState(seed + 2).permutation(n_train)[:pair_codes(n_score_samples)])


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads, then restore the previous setting."""
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


_CUDNN_LOCK = threading.Lock()
_cudnn: dict[str, Any] = {"fits": 0, "before": None}  # CUDA fits running now; the setting before the first


@contextlib.contextmanager
def _deterministic_cudnn(device: torch.device) -> Iterator[None]:
    """On a CUDA device, cuDNN's deterministic algorithms (its default convolution gradients are
    not: two fits of one seed differed in AUROC's third decimal), then the previous setting, once
    the last of the CUDA fits that overlap in this process has ended (the flags are process-wide)."""
    if device.type != "cuda":
        yield
        return
    with _CUDNN_LOCK:
        if _cudnn["fits"] == 0:
            _cudnn["before"] = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
        _cudnn["fits"] += 1
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        with _CUDNN_LOCK:
            _cudnn["fits"] -= 1
            if _cudnn["fits"] == 0:
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = _cudnn["before"]


class VAEAnomalyDetector(OutlierMixin, BaseEstimator):
    """Anomaly detector: a VAE fitted on normal data, with a calibrated false-alarm rate.

    ``fit`` holds out ``calibration_size`` of the data (never trained on) and sets the threshold by
    split conformal prediction so that a new normal sample is flagged with probability at most
    ``alpha``. Tables (2-D arrays, DataFrames) get a dense VAE; images ((N, H, W), (N, H, W, C) or
    (N, C, H, W) arrays) a convolutional one.

    Parameters
    ----------
    model : "auto", "dense" or "conv". "auto" picks "conv" for images and "dense" for tables.
    latent_dim : size of z; None picks 16 for images and clip(d // 2, 2, 16) for tables of d features.
    hidden_sizes : dense hidden layers; None picks (64, 32), or (256, 128) above 100 features.
    conv_channels : filters of the stride-2 convolutions; None picks 32, 64 (and more for large images).
    activation : nonlinearity of the dense network's hidden layers: "relu" (default), "tanh", "elu"
        or "leaky_relu".
    likelihood : "gaussian" (learned variance per feature, the default), "gaussian-shared",
        "gaussian-fixed" (MSE) or "bernoulli" (images only: pixels in [0, 1]; a table's standardised
        columns are not, and ``fit`` refuses it there).
    score_kind : default anomaly score: "elbo" (negative ELBO), "reconstruction" or "iwae"; all in nats.
    n_score_samples : Monte-Carlo samples for "elbo" and "iwae", drawn once at fit time and stored.
    min_scale : floor on a learned Gaussian sigma, in the units the network sees (standardised
        columns; pixels in [0, 1]). None picks 0.01 for tables and 0.05 for images (see README).
    marginal_floor : weight in [0, 1) of each numeric column's marginal N(0, 1) (standardised units)
        in its likelihood, so that one column the network predicts sharply (say, one constant in
        training) cannot dominate a score (``models.DenseVAE``). "auto" (the default):
        ``TABLE_MARGINAL_FLOOR`` (0.01) for a table's dense network, 0 (off) for images, where only
        0 is allowed. Measured in benchmarks/results/quality-study.md, sections 11 and 19.
    pair : score a table with two networks (quality-study.md, sections 10-19): the network
        early-stopped by ``epochs`` and ``patience`` as without the option, and a long network
        trained to ``PAIR_UPDATES`` gradient updates at the default ``epochs`` of 100, scaled with
        ``epochs`` (30 x ``epochs``; not stopped early: it keeps the weights of its best validation
        epoch of them all) whose prior is the aggregate posterior of up to ``PAIR_CODES`` training rows (a VampPrior
        whose pseudo-inputs are training rows). The score is the sum of the two networks' scores,
        in nats, calibrated as one score. The long network fits the many-mode tables the short one
        under-fits, the short one keeps the tables where longer training models the anomalies too.
        "auto" (the default): True for a table (a dense network) fitted with
        ``lr_schedule="constant"``, False otherwise (images; the cosine schedule, which a pair cannot
        be trained with, gives one network); True with it raises. A two-run pair (see
        ``pair_hidden_sizes``) is checkpointed: the first run where one network's checkpoint is,
        the long run in ``checkpoint_dir/pair``; the one-run pair (``pair_hidden_sizes=None``) is not.
        The second rule is a budget of updates, not of epochs: on a table of more than about 3800
        training rows (batch 128) it is fewer epochs than the first network's 100. Costs: the fit
        trains both networks; scoring is 5-10 times slower than a single network's on two cores
        (the aggregate prior's ``n_score_samples`` x codes latent densities a row;
        benchmarks/results/cli_throughput.md); an ONNX graph of a pair holds batch x
        ``n_score_samples`` x codes numbers (``onnx.onnxruntime_scorer`` feeds it blocks of rows).
        The second network fits its training rows more closely than new ones, so a
        ``contamination`` threshold (a quantile of the fit data's scores) is lower than with one
        network; the conformal threshold (calibration rows, never trained on) is not affected.
        Gaussian likelihoods only (``likelihood="bernoulli"`` is refused).
    pair_hidden_sizes : the long network's own hidden layers, trained in a run of its own after the
        first network's (which keeps ``hidden_sizes``). "auto" (the default):
        ``PAIR_HIDDEN_SIZES``, (256, 128), a narrow short network and a wide long one
        (quality-study.md, section 18). None: the long network is the first one's run trained on,
        so it has its layers (one run; the pair of model format 4). Only with a pair. Model format 5.
    alpha : target false-alarm rate of ``predict``.
    contamination : if set, the threshold is instead the (1 - contamination) quantile of the fit
        data's scores (no false-alarm guarantee).
    calibration_size, validation_size : fractions held out for calibration (from all data) and for
        early stopping (from the rest). The calibration part is raised to the size ``alpha`` needs
        (``min_calibration_size(alpha)``, 99 for 0.01) while at least half the data is left to train
        on; with less data than that, ``fit`` raises ``CalibrationError`` saying what would work.
    epochs, batch_size, learning_rate, lr_schedule, weight_decay, beta, objective, mmd_weight, kl_estimator,
    kl_warmup_epochs, grad_clip, patience : training settings, see ``training.TrainConfig``.
    max_categories : most one-hot categories per string column.
    marginals : how a table's numeric columns reach the network. "standard" (the default):
        (x - mean) / std. "kde": a column whose tails are near a normal's (``heavy_tail_ratio`` at
        most 1.5) goes through Phi^-1 of its training values' kernel-density CDF, made N(0, 1)
        (``preprocessing.marginals``), and every score adds minus the log slope of those maps, once
        per network, so it stays in nats of -log p(x) of the columns' own units (calibration
        included); others stay standardised. Study section 29: 0.961 against 0.955 mean AUROC on
        the ten ADBench tables, not yet the default. Tables only. Model format 6.
    random_state : int for a reproducible fit; global random generators are never touched.
    n_threads : torch threads while fitting; while scoring, how many blocks of rows are scored at once,
        each on one thread, so that scores do not depend on it (None: torch's thread count for conv
        models and pairs, 1 for other dense ones).
    device : "cpu" (default, reproducible), "cuda" or "auto".
    verbose : 0 silent, 1 progress bar, 2 also logs every epoch.
    checkpoint_dir : write the training state there after every epoch, and go on from a checkpoint
        found there (the same weights as a run never interrupted); see ``training.train``. With
        ``random_state=None`` a fit that finds the checkpoint of an unfinished run takes its seed
        (a finished run's is refused: the fit would only give that run's model again). A two-run pair
        checkpoints its first run there and its long run in ``checkpoint_dir/pair``.

    Attributes
    ----------
    model_ : models.VAE
        The fitted network (``DenseVAE`` or ``ConvVAE``), in eval mode.
    marginal_floor_, pair_, pair_hidden_sizes_ : float, bool, tuple of int or None
        What the fit used for ``marginal_floor``, ``pair`` and ``pair_hidden_sizes`` ("auto"
        resolved for the input; None: no pair, or a one-run pair).
    fit_params_ : dict
        ``get_params()`` as the fit had them. A ``set_params`` after the fit is for the next fit: the
        model card records these (but ``RUNTIME_PARAMS``, how the model runs, as they are now), and
        scoring uses the fit's ``score_kind`` (``score_kind_``), the score the calibration is of.
    score_kind_ : str
        The score the fit calibrated, the default of ``anomaly_score``.
    preprocessor_ : preprocessing.TablePreprocessor or preprocessing.ImagePreprocessor
        The fitted input schema (scaling, categories, image size and channels).
    input_kind_ : str
        "table" or "image".
    n_features_in_ : int
        Columns of the fitted table, or values per image (C x H x W).
    feature_names_in_ : numpy.ndarray of str
        The fitted DataFrame's column names (only when fitted on a DataFrame).
    noise_ : torch.Tensor
        The fixed standard-normal draws (n_score_samples, latent_dim) of the Monte-Carlo scores.
    calibration_scores_ : numpy.ndarray
        Scores of the held-out calibration samples (float64), the basis of the threshold and p-values.
    threshold_ : float
        Scores strictly above it are anomalies; infinite when unusable (see ``calibration_error_``).
    offset_ : float
        ``-threshold_`` (scikit-learn's ``decision_function = score_samples - offset_``).
    alpha_ : float or None
        The false-alarm rate the threshold was chosen for (None for contamination / best-F1 thresholds).
    threshold_method_ : str
        "conformal", "contamination" or "best_f1".
    calibration_error_ : str or None
        Why the threshold is infinite (too few calibration scores for ``alpha``), else None.
    best_f1_ : float
        The F1 reached by ``set_threshold_best_f1`` (only after it).
    history_ : list of dict
        Mean loss terms per epoch (``loss``, ``recon``, ``kl``, ``val_loss``, ...); of a pair, the
        long network's run.
    fit_info_ : dict
        Row counts of the splits, seed, seconds, epochs run (``epochs_run``: of the long network in
        a pair; ``epochs_run_first``: the first network's, in a pair of two runs), device.
    model_card_ : dict
        The checked ``model.json`` of a loaded model (only after ``load_detector``).
    """

    def __init__(
        self, *, model: str = "auto", latent_dim: int | None = None, hidden_sizes: tuple[int, ...] | None = None,
        conv_channels: tuple[int, ...] | None = None, activation: str = "relu", likelihood: str = "gaussian",
        score_kind: str = "elbo",
        n_score_samples: int = 16, min_scale: float | None = None, marginal_floor: float | str = "auto",
        pair: bool | str = "auto", pair_hidden_sizes: tuple[int, ...] | str | None = "auto", alpha: float = 0.01, contamination: float | None = None,
        calibration_size: float = 0.2, validation_size: float = 0.1, epochs: int = 100, batch_size: int = 128,
        learning_rate: float = 1e-3, lr_schedule: str = "constant", weight_decay: float = 0.0, beta: float = 1.0,
        objective: str = "elbo",
        mmd_weight: float = 100.0, kl_estimator: str = "analytic", kl_warmup_epochs: int = 0,
        grad_clip: float = 10.0, patience: int = 10, max_categories: int = 50, marginals: str = "standard",
        random_state: Any = None,
        n_threads: int | None = None, device: str = "cpu", verbose: int = 0, checkpoint_dir: str | None = None,
    ) -> None:
        self.model = model
        self.latent_dim = latent_dim
        self.hidden_sizes = hidden_sizes
        self.conv_channels = conv_channels
        self.activation = activation
        self.likelihood = likelihood
        self.score_kind = score_kind
        self.n_score_samples = n_score_samples
        self.min_scale = min_scale
        self.marginal_floor = marginal_floor
        self.pair = pair
        self.pair_hidden_sizes = pair_hidden_sizes
        self.alpha = alpha
        self.contamination = contamination
        self.calibration_size = calibration_size
        self.validation_size = validation_size
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_schedule = lr_schedule
        self.weight_decay = weight_decay
        self.beta = beta
        self.objective = objective
        self.mmd_weight = mmd_weight
        self.kl_estimator = kl_estimator
        self.kl_warmup_epochs = kl_warmup_epochs
        self.grad_clip = grad_clip
        self.patience = patience
        self.max_categories = max_categories
        self.marginals = marginals
        self.random_state = random_state
        self.n_threads = n_threads
        self.device = device
        self.verbose = verbose
        self.checkpoint_dir = checkpoint_dir

    # -- parameters ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        for name in ("model", "score_kind", "activation", "likelihood", "device", "marginals"):  # the training ones: TrainConfig.check
            # a str, not only equal to one: np.array("elbo") == "elbo", and it is not JSON when the model is saved
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        if self.model not in ("auto", "dense", "conv"):
            raise ValueError(f"model must be 'auto', 'dense' or 'conv', got {self.model!r}")
        if self.score_kind not in SCORES:
            raise ValueError(f"score_kind must be one of {SCORES}, got {self.score_kind!r}")
        if self.marginals not in MARGINALS:
            raise ValueError(f"marginals must be one of {MARGINALS}, got {self.marginals!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.latent_dim is not None and int(self.latent_dim) < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if self.contamination is not None:  # before training, not after it
            cal._check_contamination(self.contamination)
        if not _is_auto(self.marginal_floor):
            try:
                check_marginal_floor(self.marginal_floor, self.likelihood)
            except ValueError as err:
                raise ValueError(str(err).replace("must be a number", "must be 'auto' or a number")) from None
        if not (_is_auto(self.pair) or isinstance(self.pair, (bool, np.bool_))):
            raise ValueError(f"pair must be True, False or 'auto', got {self.pair!r}")
        if not _is_auto(self.pair) and self.pair:
            if self.model == "conv":
                raise ValueError("pair=True applies to dense networks (tables), not model='conv'")
            if self.likelihood == "bernoulli":  # standardised columns are not in [0, 1]: the long run exploits it
                raise ValueError("pair=True needs a Gaussian likelihood: table columns are standardised, not in [0, 1] "
                                 "as the bernoulli likelihood assumes")
            if self.lr_schedule != "constant":
                raise ValueError("pair=True needs lr_schedule='constant' (the short network is a snapshot of the long "
                                 "run, or its first epochs)")
            if self.checkpoint_dir is not None and self.pair_hidden_sizes is None:
                raise ValueError("pair=True with pair_hidden_sizes=None (one run, the short network a snapshot of the "
                                 "long run) cannot be checkpointed; the two-run pair (pair_hidden_sizes='auto' or "
                                 "layers of its own) can")
        # the card's bounds: a fit must not write a model that cannot be read back
        _check_layers("hidden_sizes", self.hidden_sizes, 0)
        _check_layers("conv_channels", self.conv_channels, 0)
        if not _is_auto(self.pair_hidden_sizes):
            try:
                _check_layers("pair_hidden_sizes", self.pair_hidden_sizes, 1)
            except ValueError as err:
                raise ValueError(str(err).replace("must be None or", "must be 'auto', None or")) from None
        if self.pair_hidden_sizes is not None and not _is_auto(self.pair_hidden_sizes) and not self.pair:
            raise ValueError("pair_hidden_sizes is the long network of a pair: it needs pair=True or 'auto'")
        if int(self.n_score_samples) < 1:
            raise ValueError(f"n_score_samples must be >= 1, got {self.n_score_samples}")
        if not 0.0 < float(self.calibration_size) < 1.0:
            raise ValueError(f"calibration_size must be in (0, 1), got {self.calibration_size}")
        if not 0.0 <= float(self.validation_size) < 1.0:
            raise ValueError(f"validation_size must be in [0, 1), got {self.validation_size}")
        if self.n_threads is not None and not 1 <= int(self.n_threads) <= 1024:
            raise ValueError(f"n_threads must be None or 1..1024, got {self.n_threads}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' but torch sees no CUDA device; use device='cpu'")
        cal._check_alpha(self.alpha)
        self._train_config().check()  # the training settings, before any work

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def _train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=int(self.epochs), batch_size=int(self.batch_size), learning_rate=float(self.learning_rate),
            lr_schedule=self.lr_schedule, weight_decay=float(self.weight_decay), beta=float(self.beta),
            objective=self.objective, mmd_weight=float(self.mmd_weight), kl_estimator=self.kl_estimator,
            kl_warmup_epochs=int(self.kl_warmup_epochs), grad_clip=float(self.grad_clip), patience=int(self.patience),
        )

    def _seed(self) -> int:
        rs = self.random_state
        if rs is None:
            return int(np.random.default_rng().integers(2**31 - 1))  # fresh entropy, not the global RNG
        if isinstance(rs, np.random.RandomState):
            return int(rs.randint(2**31 - 1))
        if isinstance(rs, (int, np.integer)):
            return int(rs) % (2**31 - 1)
        raise ValueError(f"random_state must be None, an int or a numpy RandomState, got {rs!r}")

    # -- input --------------------------------------------------------------------------------
    def _prepare(self, X: Any, reset: bool) -> np.ndarray:
        """Validate ``X`` and turn it into what the network takes: (N, d) or (N, C, H, W) float32."""
        return self._prepare_rows(X, reset, collect=False)[0]

    def _prepare_rows(self, X: Any, reset: bool, collect: bool) -> tuple[np.ndarray, list[str | None] | None]:
        """``_prepare``; with ``collect`` a row with a bad value is zeros plus its message in the
        second item instead of an error for the whole input."""
        if reset:
            image = is_image_input(X)
            if self.model == "conv" and not image:
                raise InputError(f"model='conv' needs images (N, H, W[, C]), got a table of shape {np.shape(X)}")
            if self.likelihood == "bernoulli" and not image:
                # standardised columns are not in [0, 1]: there the Bernoulli "likelihood" has no
                # upper bound, and training drove scores to +-1e10 nats
                raise InputError("likelihood='bernoulli' is for images (pixels in [0, 1]); a table's numeric columns "
                                 "are standardised (mean 0, sd 1), where it is not a likelihood: use a Gaussian one")
            if self.marginals != "standard" and image:
                raise InputError(f"marginals={self.marginals!r} is for tables (it maps numeric columns); "
                                 "images take marginals='standard'")
            self.input_kind_ = "image" if image else "table"
        if self.input_kind_ == "image":
            if not is_image_input(X):
                raise InputError(f"this model scores images (N, H, W[, C]), got input of shape {np.shape(X)}")
            X = np.asarray(X)
            if X.shape[0] == 0:
                raise InputError("Found array with 0 sample(s): need at least one image")
            if reset:
                self.preprocessor_ = ImagePreprocessor().fit(X)
                self.n_features_in_ = int(np.prod(X.shape[1:]))
            if collect:
                return self.preprocessor_.transform_rows(X)
            return self.preprocessor_.transform(X), None
        if is_image_input(X):
            raise InputError(f"this model scores tables (N, n_features), got input of shape {np.shape(X)}")
        if isinstance(X, pd.DataFrame):
            if X.shape[0] == 0:
                raise InputError("Found array with 0 sample(s): the table has no rows")
            if reset:
                # only records feature_names_in_ / n_features_in_: the columns are matched by name
                # later, so scikit-learn's same-order rule is deliberately not applied
                validate_data(self, X, skip_check_array=True, reset=True)
                df = X
            elif getattr(self, "feature_names_in_", None) is None:
                X = X.to_numpy()  # fitted without names: columns by position
            else:
                df = X
        if not isinstance(X, pd.DataFrame):
            # infinity passes here: the preprocessor's InputError names its row and column
            arr = validate_data(self, X, dtype=None, ensure_all_finite=False, reset=reset)
            if arr.dtype.kind not in "biufO":
                arr = arr.astype(object)
            df = as_table(arr, columns=None if reset else self.preprocessor_.names)
        if reset:
            self.preprocessor_ = TablePreprocessor(max_categories=int(self.max_categories),
                                                   marginals=self.marginals).fit(df)
        if collect:
            return self.preprocessor_.transform_rows(self.preprocessor_.select(df))
        return self.preprocessor_.transform(self.preprocessor_.select(df)), None

    def _default_model(self, x: np.ndarray, hidden_sizes: tuple[int, ...] | None = None) -> VAE:
        kind = self.model if self.model != "auto" else ("conv" if self.input_kind_ == "image" else "dense")
        return default_network(kind, x.shape[1:], input_kind=self.input_kind_, likelihood=self.likelihood,
                               latent_dim=self.latent_dim, hidden_sizes=hidden_sizes or self.hidden_sizes,
                               conv_channels=self.conv_channels, min_scale=self.min_scale, activation=self.activation,
                               categorical=(self.preprocessor_.categorical_groups() if self.input_kind_ == "table"
                                            else ()), marginal_floor=self.marginal_floor_)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        if self.model_.kind == "dense":
            t = t.reshape(t.shape[0], -1)
        return t

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None) -> "VAEAnomalyDetector":
        """Fit on normal data and calibrate the threshold.

        Parameters
        ----------
        X : DataFrame or array (n_samples, n_columns) for a table; array (N, H, W), (N, H, W, C) or
            (N, C, H, W) for images (integers 0-255 or floats in [0, 1]). Normal samples only: the
            threshold's false-alarm guarantee holds for data like these.
        y : ignored (scikit-learn's convention).

        Returns
        -------
        self

        Raises
        ------
        InputError : data that cannot be used (fewer than 10 samples, infinity, all-missing column, ...).
        CalibrationError : too few samples for ``alpha`` (see ``calibration_size``).
        TrainingDivergedError : the loss became NaN, infinite or beyond ``training.LOSS_LIMIT``, or the
            run's best loss ended far above the untrained network's (``training.DIVERGED_MARGIN``).

        A fit that raises (or is interrupted) leaves the detector as it was: a fitted one scores as before,
        and a ``RandomState`` given as ``random_state`` is where it was.
        """
        before = dict(self.__dict__)
        rs = self.random_state
        rs_state = rs.get_state() if isinstance(rs, np.random.RandomState) else None
        try:
            return self._fit(X)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            if rs_state is not None:  # the caller's generator too: a retry draws what this fit drew
                rs.set_state(rs_state)
            raise

    def _fit(self, X: Any) -> "VAEAnomalyDetector":
        self._check_params()
        fit_params = copy.deepcopy(self.get_params())
        x = self._prepare(X, reset=True)
        n = x.shape[0]
        if n < 10:
            raise InputError(f"need at least 10 samples to fit (training, validation and calibration splits), "
                             f"got {n} sample{'s' if n != 1 else ''}")
        n_cal = self._calibration_rows(n)
        self._resolve_auto()
        seed = self._seed()
        n_val = int(round(float(self.validation_size) * (n - n_cal)))
        run = checkpoint_run(self.checkpoint_dir) if self.random_state is None else None
        if run is not None and run["seed"] is not None:
            finished = run["stopped"] or run["epoch"] >= int(self.epochs)
            what = f"{run['epoch']} epochs{', early-stopped' if run['stopped'] else ''}"
            if finished and self.pair_:  # a pair's first run: the pair is finished when its long run (of this end
                # of the first run) is
                folder = Path(self.checkpoint_dir) / PAIR_CHECKPOINT
                long = checkpoint_run(folder)
                finished = (long is not None and long["seed"] == run["seed"]
                            and _long_run_start(folder) == str(run["epoch"])
                            and (long["stopped"] or long["epoch"] >= self._pair_epochs(n - n_cal - n_val)))
                if long is not None:
                    what = f"a pair: its first network {what}, its long one {long['epoch']} epochs in {folder}"
            if finished:
                # nothing left to train: taking its seed would give that run's model again, silently,
                # to a caller who asked for a random one (an ensemble of seeds, restarts)
                raise ValueError(f"the checkpoint in {self.checkpoint_dir} is of a finished run (seed {run['seed']}, "
                                 f"{what}): a fit with "
                                 f"random_state=None would not start a new one; remove it or give another "
                                 f"checkpoint_dir for a new run, random_state={run['seed']} for that run's model, or "
                                 "more epochs to train it on")
            seed = run["seed"]  # a seed drawn anew would split the rows otherwise: the unfinished run goes on
        cal_idx, val_idx, train_idx = fit_rows(n, n_cal, n_val, seed)
        start = time.perf_counter()
        device = self._device()
        with _threads(self.n_threads), _deterministic_cudnn(device), torch.random.fork_rng(devices=[]):
            # the CPU generator only (the weights are made on the CPU), restored by fork_rng; torch.manual_seed
            # would also seed every CUDA device's generator, which fork_rng(devices=[]) leaves as it finds it
            torch.default_generator.manual_seed(seed)
            self.model_ = self._default_model(x).to(device)
            t = self._tensor(x)
            x_train = t[train_idx].to(device)
            self.model_.likelihood.init_from_data(x_train)
            generator = torch.Generator().manual_seed(seed)
            first = None  # a pair of two runs: the first network's epochs
            if self.pair_:
                self.history_, first = self._train_pair(x_train, t[val_idx].to(device) if n_val else None, generator,
                                                        seed)
            else:
                self.history_ = train(
                    self.model_, x_train, t[val_idx].to(device) if n_val else None,
                    self._train_config(), generator, verbose=int(self.verbose), checkpoint_dir=self.checkpoint_dir,
                    seed=seed,
                )
            self.noise_ = draw_noise(int(self.n_score_samples), self.model_.latent_dim, seed + 1)
            self.calibration_scores_ = self._scores(t[cal_idx], fit_params["score_kind"])
            all_scores = self._scores(t, fit_params["score_kind"]) if self.contamination is not None else None
        self.fit_info_ = {"n_samples": n, "n_train": len(train_idx), "n_validation": n_val, "n_calibration": n_cal,
                          "seed": seed, "seconds": round(time.perf_counter() - start, 3),
                          "epochs_run": len(self.history_), "device": str(device)}
        if first is not None:  # a pair's two runs: history_ and epochs_run are the long network's
            self.fit_info_["epochs_run_first"] = first
        self.fit_params_, self.score_kind_ = fit_params, fit_params["score_kind"]
        if self.contamination is not None:
            self._set_threshold(cal.contamination_threshold(all_scores, self.contamination), "contamination", None)
        else:
            self.set_alpha(self.alpha)
        return self

    def _resolve_auto(self) -> None:
        """The fitted ``marginal_floor_``, ``pair_`` and ``pair_hidden_sizes_``: the parameters, with
        "auto" made what it means for this input (quality-study.md, section 19). They, not the
        parameters, are what the fit and the card use: a set_params after the fit changes neither."""
        table = self.input_kind_ == "table"  # a dense network: model="conv" on a table was refused by _prepare
        self.marginal_floor_ = ((TABLE_MARGINAL_FLOOR if table else 0.0) if _is_auto(self.marginal_floor)
                                else float(self.marginal_floor))
        if _is_auto(self.pair):  # not where a pair cannot be trained: those settings give one network
            if table and self.pair_hidden_sizes is None and self.checkpoint_dir is not None:
                raise ValueError("pair_hidden_sizes=None (the one-run pair: the short network a snapshot of the long "
                                 "run) cannot be checkpointed; give the long network layers of its own, 'auto', or "
                                 "pair=False for one network")
            self.pair_ = table and self.lr_schedule == "constant"
            if table and not self.pair_:
                log.info("pair='auto': one network, not the tables' default pair, which cannot be trained with %s "
                         "(pair=False says so without this message)",
                         f"lr_schedule={self.lr_schedule!r}")
        else:
            self.pair_ = bool(self.pair)
        if self.pair_ and not table:
            raise ValueError("pair=True applies to tables (a dense network), not to images")
        if not self.pair_ and self.pair_hidden_sizes is not None and not _is_auto(self.pair_hidden_sizes):
            raise ValueError(f"pair_hidden_sizes={self.pair_hidden_sizes!r} is the long network of a pair, and this "
                             "fit has none: pair='auto' pairs only tables fitted with lr_schedule='constant'")
        sizes = PAIR_HIDDEN_SIZES if _is_auto(self.pair_hidden_sizes) else self.pair_hidden_sizes
        self.pair_hidden_sizes_ = tuple(int(h) for h in sizes) if self.pair_ and sizes is not None else None

    def _train_pair(self, x_train: torch.Tensor, x_val: torch.Tensor | None, generator: torch.Generator,
                    seed: int) -> tuple[list[dict[str, float]], int | None]:
        """``pair=True``: one run trains ``model_``'s copy for ``PAIR_UPDATES`` x ``epochs`` / 100 updates (never
        stopped early: ``PAIR_PATIENCE``; it keeps its best validation epoch's weights) while ``model_`` keeps
        the best weights of the run's first ``epochs`` epochs (patience ``patience``), the network a fit
        without the pair ends with; then the long network's prior becomes the aggregate posterior of up to
        ``PAIR_CODES`` training rows (never calibration rows, whose scores must be like new data's) and it
        becomes ``model_``'s pair.
        Returns the long network's history and, for two runs, the first network's epochs (else None)."""
        cfg = self._train_config()
        cfg.epochs, cfg.patience = self._pair_epochs(x_train.shape[0]), PAIR_PATIENCE
        first = None
        if self.pair_hidden_sizes_ is None:
            long = copy.deepcopy(self.model_)  # the same initial weights: the short network is the run's snapshot
            history = train(long, x_train, x_val, cfg, generator, verbose=int(self.verbose),
                            snapshot=(self.model_, int(self.epochs), int(self.patience)))
        else:  # two runs: the first network as a fit without the pair trains it, then the long one
            ckpt = self.checkpoint_dir  # the first run's checkpoint where one network's is, the long one's below it
            first = len(train(self.model_, x_train, x_val, self._train_config(), generator, verbose=int(self.verbose),
                              checkpoint_dir=ckpt, seed=seed))
            if ckpt is not None:
                _start_long_checkpoint(Path(ckpt) / PAIR_CHECKPOINT, first, generator)
                self._refuse_a_longer_long_run(Path(ckpt) / PAIR_CHECKPOINT, x_train.shape[0], cfg.epochs)
            long = self._default_model(x_train[:1].cpu().numpy(), self.pair_hidden_sizes_)
            long = long.to(x_train.device)
            long.likelihood.init_from_data(x_train)
            history = train(long, x_train, x_val, cfg, generator, verbose=int(self.verbose),
                            checkpoint_dir=None if ckpt is None else Path(ckpt) / PAIR_CHECKPOINT, seed=seed)
        # the codes scored against each of the K noise draws of a row: K x M numbers a row, bounded
        rows = pair_code_rows(x_train.shape[0], int(self.n_score_samples), seed)
        with torch.no_grad():
            mu, logvar = long.encode(x_train[torch.from_numpy(rows)])
        long.set_aggregate_prior(mu, logvar)
        self.model_.attach_pair(long)
        self.model_.eval()
        return history, first

    def _pair_epochs(self, n_train: int, epochs: int | None = None) -> int:
        """The long run's epochs: ``PAIR_UPDATES`` updates at ``epochs=100`` (the default); fewer epochs
        ask for a quicker fit, of both networks. ``epochs``: another value of the setting than this one's."""
        per_epoch = -(-n_train // int(self.batch_size))
        epochs = int(self.epochs) if epochs is None else epochs
        return max(1, -(-PAIR_UPDATES * epochs // (100 * per_epoch)))

    def _refuse_a_longer_long_run(self, folder: Path, n_train: int, long_epochs: int) -> None:
        """The long run's checkpoint, kept for this end of the first run, is past the epochs this fit's
        ``epochs`` gives the long run (the first run stopped early, the same as before, and ``epochs`` is
        lower than then): refused as ``train`` refuses one, in the terms the caller set (``epochs`` and
        ``checkpoint_dir``), not the long run's own epochs (a number the caller never gave)."""
        run = checkpoint_run(folder)
        if run is None or run["epoch"] <= long_epochs:
            return
        need = max(1, (run["epoch"] - 1) * 100 * -(-n_train // int(self.batch_size)) // PAIR_UPDATES)
        while self._pair_epochs(n_train, need) < run["epoch"]:
            need += 1
        raise ValueError(f"the checkpoint in {self.checkpoint_dir} is of a pair fitted with more epochs: its long run "
                         f"(in {folder}) is at epoch {run['epoch']}, past the {long_epochs} that epochs={int(self.epochs)} "
                         f"gives it. Give epochs >= {need} to go on with it, or remove it, or give another checkpoint_dir")

    def _calibration_rows(self, n: int) -> int:
        """Rows held out for calibration: ``calibration_size`` of ``n``, raised to the number the
        conformal threshold at ``alpha`` needs as long as half the rows are left to train on; where
        that cannot be, ``fit`` fails here, before training, saying what would work."""
        n_cal = max(1, int(round(float(self.calibration_size) * n)))
        if self.contamination is not None:
            return n_cal  # the threshold comes from the training scores, not a conformal rank
        need = cal.min_calibration_size(self.alpha)
        if n_cal >= need:
            return n_cal
        most = n // 2
        if need <= most:
            return need
        raise CalibrationError(
            f"alpha={self.alpha:g} needs at least {need} held-out calibration samples, and {n} samples leave at "
            f"most {most} once half are kept for training: fit on at least {2 * need} samples, choose "
            f"alpha >= {1.0 / (most + 1):.4g}, or set contamination= (a threshold from the training scores, "
            "without the false-alarm guarantee)")

    # -- thresholds ---------------------------------------------------------------------------
    def _set_threshold(self, threshold: float, method: str, alpha: float | None) -> None:
        self.threshold_ = float(threshold)
        self.offset_ = -self.threshold_
        self.threshold_method_ = method
        self.alpha_ = alpha

    def set_alpha(self, alpha: float, *, strict: bool = False) -> "VAEAnomalyDetector":
        """Re-choose the conformal threshold for false-alarm rate ``alpha`` from the stored
        calibration scores (no retraining). Too few scores for ``alpha`` leaves the threshold
        infinite and logs why; ``predict`` then raises ``CalibrationError``. With ``strict`` it
        raises that ``CalibrationError`` at once instead, and nothing changes (a job that would
        stop anyway: its user reads the reason once, as the error)."""
        check_is_fitted(self, "calibration_scores_")
        alpha = cal._check_alpha(alpha)
        try:
            threshold = cal.conformal_threshold(self.calibration_scores_, alpha)
        except CalibrationError as err:
            if strict:
                raise
            log.warning("%s", err)
            self.calibration_error_ = str(err)
            threshold = np.inf
        else:
            self.calibration_error_ = None
        self._set_threshold(threshold, "conformal", alpha)
        return self

    def calibrate(self, X: Any, alpha: float | None = None) -> "VAEAnomalyDetector":
        """Replace the calibration scores with those of new normal data ``X`` (never trained on)
        and re-choose the threshold for ``alpha`` (default: the current one). A bad ``alpha`` or ``X``
        raises before anything changes."""
        check_is_fitted(self, "model_")
        alpha = cal._check_alpha(alpha if alpha is not None else (self.alpha_ or self.alpha))
        self.calibration_scores_ = self.anomaly_score(X)
        return self.set_alpha(alpha)

    def set_threshold_contamination(self, X: Any, contamination: float) -> "VAEAnomalyDetector":
        """Threshold at the (1 - contamination) quantile of the scores of ``X``."""
        self._set_threshold(cal.contamination_threshold(self.anomaly_score(X), contamination), "contamination", None)
        return self

    def set_threshold_best_f1(self, X: Any, y: Any) -> "VAEAnomalyDetector":
        """Threshold that maximises F1 on labelled ``X`` (``y`` true / 1 / -1 per sklearn: see below).

        ``y`` marks anomalies with True or 1; scikit-learn's -1 (anomaly) / +1 (normal) also works.
        The F1 is optimistic on the data it was chosen on: measure it on other data."""
        y = np.asarray(y)
        is_anom = (y == -1) if set(np.unique(y).tolist()) <= {-1, 1} else y.astype(bool)
        threshold, f1 = cal.best_f1_threshold(self.anomaly_score(X), is_anom)
        self._set_threshold(threshold, "best_f1", None)
        self.best_f1_ = f1
        return self

    # -- scoring ------------------------------------------------------------------------------
    def _model_device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _workers(self) -> int:
        """Blocks scored at once (each block on one thread): ``n_threads``; else torch's thread count
        for conv models and 1 for dense ones, whose forwards are many small ops that hold the GIL
        between kernels, so a second Python thread slows them down (measured on 2 cores: 116k rows/s
        with one, 98k with two), while conv kernels are long and release it, as a pair's aggregate
        prior's matrix products do (9k rows/s with one worker, 15k with two)."""
        if self.n_threads:
            return max(1, min(int(self.n_threads), os.cpu_count() or 1))  # each worker holds a block's tensors
        long_kernels = self.model_.kind == "conv" or len(self.model_.members) > 1  # a pair: its prior's products
        return torch.get_num_threads() if long_kernels else 1

    def _score_name(self, score: str | None) -> str:
        """``score``, or the fit's ``score_kind`` when None; a name not in ``SCORES`` is a ValueError."""
        score = score or self.score_kind_
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        return score

    def _scores(self, t: torch.Tensor, score: str) -> np.ndarray:
        scores = _score_samples(self.model_, t, score, self.noise_, workers=self._workers())
        jac = self._log_jacobian(t)
        return scores if jac is None else np.clip(scores + jac.sum(axis=1), -SCORE_MAX, SCORE_MAX)

    def _log_jacobian(self, t: torch.Tensor) -> np.ndarray | None:
        """Per row and column, what the marginal maps add to a score (``marginals``), once per
        network of the model (each one's score is a -log p of the mapped row); None without maps."""
        pre = self.preprocessor_
        if self.input_kind_ != "table" or not any("map" in c for c in pre.columns):
            return None
        return len(self.model_.members) * pre.log_jacobian(t.cpu().numpy())

    def anomaly_score(self, X: Any, score: str | None = None) -> np.ndarray:
        """Anomaly score of each sample, in nats: higher = more anomalous.

        A sample's score does not depend on the other samples, their order, the batch size or the
        thread count; it is always finite (see ``scoring``).

        Parameters
        ----------
        X : the same kind of data as ``fit`` (tables: columns matched by name, extra columns ignored).
        score : "elbo", "reconstruction" or "iwae"; None is ``score_kind``.

        Returns
        -------
        numpy.ndarray of float64, shape (n_samples,)

        Raises
        ------
        InputError : naming the first bad value's row and column (see ``anomaly_score_rows`` to keep going).
        """
        check_is_fitted(self, "model_")
        score = self._score_name(score)
        x = self._prepare(X, reset=False)
        return self._scores(self._tensor(x), score)

    def anomaly_score_rows(self, X: Any, score: str | None = None) -> tuple[np.ndarray, list[str | None]]:
        """``anomaly_score`` for batch jobs that must not lose a row: a row (image) with a bad value
        (a word in a numeric column, infinity, NaN pixels, ...) gets a NaN score and its message,
        and the others are scored as usual, with exactly the scores ``anomaly_score`` gives them.

        Returns ``(scores (n_samples,), errors)`` where ``errors[i]`` is None for a scored row.
        Problems of the whole input (a missing column, a wrong image size) still raise ``InputError``."""
        check_is_fitted(self, "model_")
        score = self._score_name(score)
        x, errors = self._prepare_rows(X, reset=False, collect=True)
        assert errors is not None
        good = np.array([e is None for e in errors], dtype=bool)
        scores = np.full(len(errors), np.nan)
        if good.any():
            scores[good] = self._scores(self._tensor(x if good.all() else x[good]), score)
        return scores, errors

    def preprocess(self, X: Any) -> np.ndarray:
        """``X`` validated and turned into what the network takes, the twin of ``decode``.

        Parameters
        ----------
        X : the same kind of data as ``fit``.

        Returns
        -------
        numpy.ndarray of float32 : tables (n_samples, n_features_out) (scaled, one-hot, missing
        indicators); images (n_samples, C, H, W) in [0, 1]. The first bad value raises ``InputError``.
        """
        check_is_fitted(self, "model_")
        return self._prepare(X, reset=False)

    def score_prepared(self, x: np.ndarray, score: str | None = None) -> np.ndarray:
        """Scores of an input already made by ``preprocess`` (or by the service's JSON reader), the
        same numbers ``anomaly_score`` gives for the raw rows.

        Parameters
        ----------
        x : float32 array (n_samples, n_features_out) for a table model, (n_samples, C, H, W) for images.
        score : "elbo", "reconstruction" or "iwae"; None is ``score_kind``.

        Returns
        -------
        numpy.ndarray of float64, shape (n_samples,), in nats.
        """
        check_is_fitted(self, "model_")
        score = self._score_name(score)
        x = self.check_prepared(x)
        if x.shape[0] == 0:  # as anomaly_score_rows and the ONNX scorer: no rows, no scores
            return np.zeros(0)
        return self._scores(self._tensor(np.ascontiguousarray(x)), score)

    @property
    def prepared_shape(self) -> tuple[int, ...]:
        """One sample's shape as the network takes it (what ``preprocess`` gives): (C, H, W) for
        an image model, (n_features_out,) for a table model."""
        check_is_fitted(self, "model_")
        pre = self.preprocessor_
        return (pre.channels, pre.height, pre.width) if self.input_kind_ == "image" else (pre.n_features_out,)

    def check_prepared(self, x: Any) -> np.ndarray:
        """``x`` as an array, if it is a prepared input (float32, (n_samples, *prepared_shape), with
        values ``preprocess`` can give); else an ``InputError`` saying what was expected (reason
        ``shape``) or naming the first bad sample and column. Scoring backends other than
        ``score_prepared`` (the ONNX one) check with it too."""
        x = np.asarray(x)
        expected = self.prepared_shape
        if x.dtype != np.float32 or x.shape[1:] != expected:
            raise InputError(f"a prepared input is float32 (n_samples, {', '.join(map(str, expected))}), got "
                             f"{x.dtype} {x.shape}: make it with preprocess()", reason="shape")
        self.preprocessor_.check_transformed(x)
        return x

    def score_samples(self, X: Any) -> np.ndarray:
        """scikit-learn's convention: ``-anomaly_score(X)``, lower = more abnormal."""
        return -self.anomaly_score(X)

    def check_threshold(self) -> float:
        """The threshold, after checking it is usable: ``CalibrationError`` (saying why and what to do)
        when it is infinite, e.g. too few calibration scores for ``alpha``. Faces call this before
        reading any input, so that a job without a usable threshold stops before it starts."""
        check_is_fitted(self, "threshold_")
        if not np.isfinite(self.threshold_):
            raise CalibrationError(getattr(self, "calibration_error_", None) or "the threshold is not finite")
        return self.threshold_

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for anomalies."""
        self.check_threshold()
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """+1 for normal, -1 for anomalous (score strictly above ``threshold_``).

        Parameters
        ----------
        X : the same kind of data as ``fit``.

        Returns
        -------
        numpy.ndarray of int, shape (n_samples,)

        Raises
        ------
        CalibrationError : no usable threshold (see ``check_threshold``).
        """
        self.check_threshold()
        return np.where(self.anomaly_score(X) > self.threshold_, -1, 1)

    def p_values(self, X: Any) -> np.ndarray:
        """Conformal p-values: (1 + #{calibration scores >= s}) / (n + 1); small = anomalous."""
        return self.p_values_from_scores(self.anomaly_score(X))

    def p_values_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values of scores already computed (``anomaly_score``, ``score_prepared``).

        Parameters
        ----------
        scores : array of scores in nats, any shape.

        Returns
        -------
        numpy.ndarray of float64, same shape: (1 + #{calibration scores >= s}) / (n + 1).
        """
        check_is_fitted(self, "calibration_scores_")
        return cal.conformal_p_values(scores, self.calibration_scores_)

    def feature_scores(self, X: Any) -> np.ndarray | pd.DataFrame:
        """Each feature's (column's, pixel's) share of the ``"reconstruction"`` score, in nats.

        Tables: (n_samples, n_columns), one-hot and missing-indicator parts summed into their
        column (a DataFrame when ``X`` is one); images: (n_samples, C, H, W). Rows sum to
        ``anomaly_score(X, score="reconstruction")``."""
        check_is_fitted(self, "model_")
        x = self._prepare(X, reset=False)
        t = self._tensor(x)
        per = _feature_scores(self.model_, t, workers=self._workers())
        if self.input_kind_ == "image":
            return per.reshape(x.shape)
        groups = self.preprocessor_.feature_groups()
        out = np.stack([per[:, sl].sum(axis=1) for _, sl in groups], axis=1)
        jac = self._log_jacobian(t)
        if jac is not None:  # a mapped column's share includes its map's
            out = out + jac
        if isinstance(X, pd.DataFrame):
            return pd.DataFrame(out, columns=[name for name, _ in groups], index=X.index)
        return out

    def encode(self, X: Any) -> np.ndarray:
        """Posterior means of z, (n_samples, latent_dim)."""
        check_is_fitted(self, "model_")
        x = self._tensor(self._prepare(X, reset=False))
        device = self._model_device()
        self.model_.eval()
        with torch.no_grad(), _threads(self.n_threads):
            return torch.cat([self.model_.encode(x[i : i + 1024].to(device))[0].cpu() for i in range(0, len(x), 1024)]).numpy()

    def decode(self, Z: Any) -> np.ndarray:
        """The mean of p(x | z) for each row of ``Z`` (n_samples, latent_dim), in the network's input
        space: images (n_samples, C, H, W) in [0, 1]; tables the scaled, one-hot features the
        preprocessor makes (n_samples, n_features_out)."""
        check_is_fitted(self, "model_")
        z = torch.as_tensor(np.asarray(Z, dtype=np.float32))
        if z.ndim != 2 or z.shape[1] != self.model_.latent_dim:
            raise InputError(f"Z must be (n_samples, {self.model_.latent_dim}), got shape {tuple(z.shape)}", reason="shape")
        device = self._model_device()
        self.model_.eval()
        with torch.no_grad(), _threads(self.n_threads):
            out = torch.cat([self.model_.mean(self.model_.decode(z[i : i + 1024].to(device))).cpu()
                             for i in range(0, len(z), 1024)]).numpy()
        if self.input_kind_ == "image":
            pre = self.preprocessor_
            return np.clip(out.reshape(len(z), pre.channels, pre.height, pre.width), 0.0, 1.0)
        return out

    # -- persistence --------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the model directory (``model.json`` + ``model.safetensors``); see ``artifact``."""
        save_model(path, *self.fitted_state())

    def to_onnx(self, path: str | os.PathLike[str], *, score: str | None = None, p_value: bool = True,
                prepared_input: bool | None = None) -> Path:
        """Write the scoring graph as an ONNX model (needs the ``onnx`` extra); see ``anomaly_vae.onnx``.

        Parameters
        ----------
        path : the ``.onnx`` file to write.
        score : "elbo", "reconstruction" or "iwae"; None is ``score_kind``.
        p_value : add the conformal ``p_value`` output.
        prepared_input : None: raw float64 values for an all-numeric table, ``preprocess(X)`` otherwise;
            True: always ``preprocess(X)``; False: raw values (``ExportError`` where there are none).

        Returns
        -------
        pathlib.Path : ``path``; outputs ``score`` float64 (N,), ``p_value`` float64 (N,) and
        ``is_anomaly`` bool (N,) (the last two when the calibration allows them).
        """
        from .onnx import export_onnx  # here, so that importing the package does not import onnx

        return export_onnx(self, path, score=score, p_value=p_value, prepared_input=prepared_input)

    def fitted_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The fitted state as the sections of ``model.json`` (JSON-safe: ``params``, ``architecture``,
        ``input``, ``score``, ``calibration``, ``training``) and named tensors (the network's weights,
        ``calibration.scores``, ``scoring.noise``). ``from_fitted_state`` is the inverse; ``artifact``
        writes and checks the files and knows nothing of the estimator."""
        check_is_fitted(self, "model_")
        params = {}
        now = self.get_params()
        for k in now:
            v = now[k] if k in RUNTIME_PARAMS else self.fit_params_[k]
            if isinstance(v, torch.device):
                v = str(v)  # device=torch.device("cpu") works as "cpu" does
            if isinstance(v, np.ndarray) and v.ndim == 1:
                v = v.tolist()  # hidden_sizes=np.array([16]) fits like [16]
            if isinstance(v, tuple):
                v = list(v)
            if isinstance(v, list):
                v = [x.item() if isinstance(x, np.generic) else x for x in v]
            if isinstance(v, np.generic):
                v = v.item()  # numpy scalars (np.float32(0.1), np.int64(5)) as plain JSON numbers
            if k == "random_state" and not isinstance(v, (int, type(None))):
                v = None  # a RandomState instance is not a reproducible setting; the seed used is in training
            params[k] = v
        # settings added after format 2 are left out at their "off" values, so that a model without them
        # loads in the releases that read format 2 (they refuse a parameter they do not know); the floor
        # written is the network's, so that a set_params after fit cannot make params and architecture disagree
        floor = float(getattr(self.model_, "marginal_floor", 0.0))
        params.pop("marginal_floor", None)
        if floor > 0:
            params["marginal_floor"] = floor
        if params.get("lr_schedule") == "constant":
            del params["lr_schedule"]
        if params.get("marginals") == "standard":
            del params["marginals"]
        params.pop("pair", None)
        params.pop("pair_hidden_sizes", None)
        if "pair" in self.model_.config():  # the network's, like the floor
            params["pair"] = True
            fitted = getattr(self, "pair_hidden_sizes_", None)  # the fit's, not a set_params since
            if fitted is not None:  # only then: other pairs stay format 4
                params["pair_hidden_sizes"] = list(fitted)
        cal_scores = np.asarray(self.calibration_scores_)
        names = getattr(self, "feature_names_in_", None)
        sections = {
            "params": params,
            "architecture": self.model_.config(),
            "input": {
                "kind": self.input_kind_,
                "n_features_in": int(self.n_features_in_),
                "feature_names_in": [str(c) for c in names] if names is not None else None,
                "preprocessing": self.preprocessor_.to_dict(),
            },
            "score": {"name": self.score_kind_, "units": "nats", "higher_is_more_anomalous": True,
                      "n_score_samples": int(self.noise_.shape[0])},
            "calibration": {
                "method": self.threshold_method_, "alpha": self.alpha_, "threshold": self.threshold_,
                "n": int(cal_scores.size),
                "quantiles": ({q: float(np.quantile(cal_scores, float(q))) for q in ("0.5", "0.9", "0.99")}
                              if cal_scores.size else {}),
                "error": getattr(self, "calibration_error_", None),
                "best_f1": getattr(self, "best_f1_", None),
            },
            "training": {"summary": self.fit_info_, "history": self.history_},
        }
        tensors = {f"model.{k}": v for k, v in self.model_.state_dict().items()}
        tensors["calibration.scores"] = torch.from_numpy(np.ascontiguousarray(cal_scores, dtype=np.float64))
        tensors["scoring.noise"] = self.noise_
        return sections, tensors

    @classmethod
    def from_fitted_state(cls, card: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "VAEAnomalyDetector":
        """The fitted estimator of a checked card and its tensors (``artifact.read_model``)."""
        # layer widths may be written 64.0 (the card takes whole floats): the estimator takes integers
        # a setting the card leaves out was off in that fit, whatever the default is today ("auto")
        det = cls(**{k: (tuple(int(x) if isinstance(x, float) else x for x in v) if isinstance(v, list) else v)
                     for k, v in {**CARD_OFF_VALUES, **card["params"]}.items()})
        model = build_model(card["architecture"])
        det.pair_ = "pair" in card["architecture"]
        det.pair_hidden_sizes_ = det.pair_hidden_sizes
        det._params_from_network(card["architecture"], int(tensors["scoring.noise"].shape[0]))
        det.fit_params_ = copy.deepcopy(det.get_params())
        det.score_kind_ = det.score_kind
        det.marginal_floor_ = float(getattr(model, "marginal_floor", 0.0))
        try:
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")},
                                  strict=True)
        except (RuntimeError, ValueError) as err:  # not expected after the checks: the same message if it happens
            raise ArtifactError(f"the weights do not fit the architecture in the card: {err}") from None
        model.eval()
        det.model_ = model
        inp = card["input"]
        det.input_kind_ = inp["kind"]
        det.n_features_in_ = inp["n_features_in"]
        if inp.get("feature_names_in") is not None:
            det.feature_names_in_ = np.asarray(inp["feature_names_in"], dtype=object)
        pre = inp["preprocessing"]
        det.preprocessor_ = (TablePreprocessor.from_dict(pre) if pre["kind"] == "table"
                             else ImagePreprocessor.from_dict(pre))
        det.noise_ = tensors["scoring.noise"]
        det.calibration_scores_ = tensors["calibration.scores"].numpy().astype(np.float64)
        det.history_ = card["training"]["history"]
        det.fit_info_ = card["training"]["summary"]
        c = card["calibration"]
        det._set_threshold(float(c["threshold"]), c["method"], c["alpha"])
        det.calibration_error_ = c.get("error")
        if c.get("best_f1") is not None:
            det.best_f1_ = c["best_f1"]
        det.model_card_ = card
        return det

    def _params_from_network(self, arch: dict[str, Any], n_noise: int) -> None:
        """Make the loaded params say what the network was fitted with where they contradict it: a card
        written before session 13 could record a set_params made after the fit (``latent_dim=5`` on a network
        of 2), which would refit another network. Logs each such setting and takes the network's."""
        fixes: dict[str, Any] = {}
        if self.latent_dim is not None and self.latent_dim != arch["latent_dim"]:
            fixes["latent_dim"] = arch["latent_dim"]
        if self.model not in ("auto", arch["kind"]):
            fixes["model"] = arch["kind"]
        if self.likelihood != arch["likelihood"]:
            fixes["likelihood"] = arch["likelihood"]
        if self.min_scale is not None and float(self.min_scale) != float(arch["min_scale"]):
            fixes["min_scale"] = arch["min_scale"]
        if arch["kind"] == "dense":
            if self.hidden_sizes is not None and list(self.hidden_sizes) != list(arch["hidden"]):
                fixes["hidden_sizes"] = tuple(arch["hidden"])
            if self.activation != arch["activation"]:
                fixes["activation"] = arch["activation"]
        elif self.conv_channels is not None and list(self.conv_channels) != list(arch["channels"]):
            fixes["conv_channels"] = tuple(arch["channels"])
        if int(self.n_score_samples) != n_noise:
            fixes["n_score_samples"] = n_noise
        if fixes:
            log.warning("the model card's params say %s, and the network was fitted with %s (a set_params after the "
                        "fit, which anomaly-vae recorded until session 13): taking the network's, so that a refit gives "
                        "this network; save the model again to correct its card",
                        ", ".join(f"{k}={getattr(self, k)!r}" for k in fixes),
                        ", ".join(f"{k}={v!r}" for k, v in fixes.items()))
            self.set_params(**fixes)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN is a missing value, imputed (see preprocessing)
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.non_deterministic = self.random_state is None
        return tags


def load_detector(path: str | os.PathLike[str]) -> VAEAnomalyDetector:
    """Rebuild a fitted ``VAEAnomalyDetector`` from a model directory, checked in full before
    anything is allocated (``artifact.read_model``). Raises ``ArtifactError`` (``ModelCardError``
    naming the file and field) for a bad directory."""
    return VAEAnomalyDetector.from_fitted_state(*read_model(path))
