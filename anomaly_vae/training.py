"""One readable fit loop: mini-batch Adam, validation split, early stopping, KL warm-up, clipping."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .exceptions import TrainingDivergedError
from .io import atomic_output
from .models import VAE
from .objectives import mmd

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "loss_terms", "CHECKPOINT_JSON", "CHECKPOINT_TENSORS", "LOSS_LIMIT", "DIVERGED_MARGIN"]

CHECKPOINT_JSON, CHECKPOINT_TENSORS = "checkpoint.json", "checkpoint.safetensors"
LR_SCHEDULES = ("constant", "cosine")
# a loss (nats a sample) no fit that is converging reaches: standardised values are within 1e6
# (preprocessing), so a feature costs at most about 5e15 nats at the smallest sigma. Beyond it the
# run has diverged, even where the loss stays finite (a marginal floor bounds the likelihood; the
# KL term then grows to 1e31 instead of the likelihood overflowing to infinity)
LOSS_LIMIT = 1e20
# nats a sample by which a run's best loss may be above the untrained network's (or |that loss|, if
# more) before the run counts as diverged: a converging run ends below where it started; one whose
# steps were too large can settle far above it with a finite loss (a stuck encoder, a huge KL, every
# column at the floor's bound) and would otherwise give a model that flags nothing useful
DIVERGED_MARGIN = 100.0


def epoch_learning_rate(cfg: "TrainConfig", epoch: int) -> float:
    """The step of epoch ``epoch`` (0-based): constant, or half a cosine from ``learning_rate``
    towards 0 over ``epochs`` (the last epoch still moves: it gets lr * (1 - cos(pi / epochs)) / 2)."""
    if cfg.lr_schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.learning_rate


@dataclass
class TrainConfig:
    epochs: int = 100  # an upper bound: early stopping usually ends training well before
    batch_size: int = 128  # small enough for many updates per epoch on a few thousand rows
    learning_rate: float = 1e-3  # Adam's usual step; stable for these small networks
    lr_schedule: str = "constant"  # or "cosine": the step decays to 0 over ``epochs`` (half a cosine)
    weight_decay: float = 0.0  # L2 penalty through Adam; 0 because early stopping regularises
    beta: float = 1.0  # KL weight: 1 is the true ELBO, the quantity the scores estimate
    objective: str = "elbo"  # "elbo" or "mmd" (InfoVAE / MMD-VAE: KL replaced by a weighted MMD)
    mmd_weight: float = 100.0  # MMD is tiny in value; Zhao et al. weight it heavily
    kl_estimator: str = "analytic"  # "analytic" (lower variance) or "mc" (log q(z|x) - log p(z) at z)
    kl_warmup_epochs: int = 0  # beta rises linearly from 0 over this many epochs
    grad_clip: float = 10.0  # max gradient norm: one bad batch cannot throw the weights away
    patience: int = 10  # epochs without validation improvement before stopping
    min_delta: float = 1e-4  # relative improvement that counts

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "beta", "mmd_weight", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)) or (name == "learning_rate" and v == 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        # a str, not only equal to one: a 0-d numpy string array compares equal, then breaks the checkpoint's JSON
        if not (isinstance(self.objective, str) and self.objective in ("elbo", "mmd")):
            raise ValueError(f"objective must be 'elbo' or 'mmd', got {self.objective!r}")
        if not (isinstance(self.lr_schedule, str) and self.lr_schedule in LR_SCHEDULES):
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not (isinstance(self.kl_estimator, str) and self.kl_estimator in ("analytic", "mc")):
            raise ValueError(f"kl_estimator must be 'analytic' or 'mc', got {self.kl_estimator!r}")
        if self.patience < 1 or self.kl_warmup_epochs < 0 or self.weight_decay < 0:
            raise ValueError("patience must be >= 1, kl_warmup_epochs and weight_decay >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def loss_terms(model: VAE, x: torch.Tensor, eps: torch.Tensor, cfg: TrainConfig, beta: float,
               prior_eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Batch means of the loss and its terms; ``eps`` (B, k) is the reparameterisation noise."""
    p = model(x, eps)  # the VAE pass: z (B, k), log p(x|z) per element
    log_px, log_pz, log_qz = p.log_px, p.log_pz, p.log_qz  # (B,) each
    kl = p.kl if cfg.kl_estimator == "analytic" else log_qz - log_pz
    terms = {"recon": -log_px.mean(), "kl": kl.mean(), "log_px": log_px.mean(), "log_pz": log_pz.mean(),
             "log_qz": log_qz.mean()}
    if cfg.objective == "mmd":
        prior = prior_eps if prior_eps is not None else torch.zeros_like(p.z)
        terms["mmd"] = mmd(p.z, prior)
        terms["loss"] = terms["recon"] + cfg.mmd_weight * terms["mmd"]
    else:
        terms["loss"] = terms["recon"] + beta * terms["kl"]
    return terms


def train(model: VAE, x_train: torch.Tensor, x_val: torch.Tensor | None, cfg: TrainConfig,
          generator: torch.Generator, verbose: int = 0,
          checkpoint_dir: str | os.PathLike[str] | None = None,
          snapshot: tuple[VAE, int, int] | None = None, seed: int | None = None) -> list[dict[str, float]]:
    """Fit ``model`` in place; returns the history (one dict of mean terms per epoch). The best
    weights by validation loss (training loss when there is no validation set) are restored.

    With ``checkpoint_dir``, the whole training state (weights, optimizer moments, random
    generator, history, early-stopping state) is written there after every epoch, and a run that
    finds a checkpoint there goes on from it: interrupted after epoch 3 and started again, it ends
    with exactly the weights of a run that was never interrupted. A checkpoint written with other
    settings or data is refused (only ``epochs`` may change, to train longer, and not with a cosine
    schedule, which spans the epochs). ``seed``, the run's seed, is written with it (``checkpoint_run``
    reads it back, so that a fit whose seed was drawn at random can resume) and must match.

    With ``lr_schedule="cosine"`` the step decays over ``epochs``: set them to the length you mean to
    train; early stopping still applies, and a run it stops early ends with a step barely decayed.

    ``snapshot=(other, epochs, patience)``: a second early-stopping rule on the same run. ``other``
    (a network of the same architecture) ends with the best weights of the run's first ``epochs``
    epochs by the same validation loss, stopped after ``patience`` epochs without improvement, as if
    ``model`` had been trained with those two settings; training goes on until both rules have
    stopped. Not with a cosine schedule (the run would not be the shorter run's prefix) or a
    checkpoint."""
    cfg.check()
    if snapshot is not None:
        if cfg.lr_schedule != "constant" or checkpoint_dir is not None:
            raise ValueError("a snapshot rule needs the constant step and no checkpoint_dir")
        if int(snapshot[1]) < 1 or int(snapshot[2]) < 1:
            raise ValueError(f"a snapshot rule needs epochs and patience >= 1, got {snapshot[1:]}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n, k = x_train.shape[0], model.latent_dim
    history: list[dict[str, float]] = []
    best, best_state, since_best, stopped, first = math.inf, None, 0, False, 0
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    # once, not every epoch: it sums over the whole training set
    fingerprint = _fingerprint(cfg, model, x_train) if ckpt is not None else None
    if ckpt is not None and (ckpt / CHECKPOINT_JSON).is_file():
        first, history, best, best_state, since_best, stopped = _load_checkpoint(ckpt, model, opt, generator, fingerprint,
                                                                                 seed)
        if first > cfg.epochs:  # its weights and best epoch are of a longer run than this one
            raise ValueError(f"the checkpoint in {ckpt} is of epoch {first}, past this run's {cfg.epochs} epochs: "
                             f"its model is a longer run's. Give epochs >= {first} to go on with it, or remove it, "
                             "or give another checkpoint_dir")
        for row in history:  # written before the step was in the history: it was the constant one
            row.setdefault("lr", epoch_learning_rate(cfg, int(row["epoch"]) - 1))
        log.info("resuming from %s after epoch %d", ckpt, first)
    snap = _Rule(int(snapshot[1]), int(snapshot[2])) if snapshot is not None else None
    last = max(cfg.epochs, snap.epochs) if snap is not None else cfg.epochs
    # the untrained network's loss, by the metric early stopping uses (not known when resuming)
    has_val = x_val is not None and x_val.shape[0] > 0
    initial = (_evaluate(model, x_val if has_val else x_train, cfg, generator_seed=2**31 - 1)
               if first == 0 and not stopped else None)
    bar = tqdm(range(first, last if not stopped else first), desc="training", unit="epoch",
               disable=verbose <= 0, leave=verbose > 1, initial=first, total=last)
    for epoch in bar:
        beta = cfg.beta * min(1.0, (epoch + 1) / cfg.kl_warmup_epochs) if cfg.kl_warmup_epochs else cfg.beta
        lr = epoch_learning_rate(cfg, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        sums: dict[str, float] = {}
        order = torch.randperm(n, generator=generator)
        for b, start in enumerate(range(0, n, cfg.batch_size)):
            x = x_train[order[start : start + cfg.batch_size]]
            # drawn on the CPU generator, whatever the device: the same draws on a GPU (and no-op moves on a CPU)
            eps = torch.randn(x.shape[0], k, generator=generator).to(x.device)
            prior = torch.randn(x.shape[0], k, generator=generator).to(x.device) if cfg.objective == "mmd" else None
            terms = loss_terms(model, x, eps, cfg, beta, prior)
            if not terms["loss"].abs() <= LOSS_LIMIT:  # NaN and infinity fail it too
                raise TrainingDivergedError(
                    f"training diverged at epoch {epoch + 1}, batch {b + 1}: loss is {terms['loss'].item():.4g} nats"
                    f"{'' if not torch.isfinite(terms['loss']) else f' a sample (beyond {LOSS_LIMIT:g})'}; "
                    f"lower learning_rate (now {cfg.learning_rate:g}) or grad_clip, or check the input scale"
                )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            for key, v in terms.items():
                sums[key] = sums.get(key, 0.0) + v.item() * x.shape[0]
        row = {"epoch": epoch + 1, "beta": beta, "lr": lr, **{key: v / n for key, v in sums.items()}}
        if has_val:
            row["val_loss"] = _evaluate(model, x_val, cfg, generator_seed=epoch)
        history.append(row)
        metric = row.get("val_loss", row["loss"])
        if verbose > 0:
            bar.set_postfix({key: f"{row[key]:.4g}" for key in ("loss", "recon", "kl", "val_loss") if key in row})
        if verbose > 1:
            log.info("epoch %d: %s", epoch + 1, row)
        # during KL warm-up the objective changes each epoch: do not compare or stop yet
        if epoch + 1 >= cfg.kl_warmup_epochs and not stopped:
            if _improves(metric, best, cfg.min_delta):
                best, since_best = metric, 0
                best_state = _copy_state(model)
            else:
                since_best += 1
                stopped = since_best >= cfg.patience
        if snap is not None:
            stopped = stopped or epoch + 1 >= cfg.epochs  # the main rule's last epoch: only the snapshot's go on
            snap.update(epoch, metric if epoch + 1 >= cfg.kl_warmup_epochs else None, model, cfg.min_delta)
        if ckpt is not None:
            _save_checkpoint(ckpt, epoch + 1, model, opt, generator, fingerprint, history, best, best_state,
                             since_best, stopped, seed)
        if stopped and (snap is None or snap.stopped):
            break
    bar.close()
    if initial is not None and math.isfinite(best) and best > initial + max(DIVERGED_MARGIN, abs(initial)):
        raise TrainingDivergedError(
            f"training diverged: its best {'validation ' if has_val else ''}loss, "
            f"{best:.4g} nats a sample, is far above the untrained network's ({initial:.4g}); lower learning_rate "
            f"(now {cfg.learning_rate:g}) or check the input scale")
    if snapshot is not None:
        snapshot[0].load_state_dict(snap.best_state)  # set at the latest when its last epoch ended
        snapshot[0].eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history


class _Rule:
    """The early-stopping state of a snapshot rule (``train``'s own rule keeps its state inline)."""

    def __init__(self, epochs: int, patience: int) -> None:
        self.epochs, self.patience = epochs, patience
        self.best, self.best_state, self.since_best, self.stopped = math.inf, None, 0, False

    def update(self, epoch: int, metric: float | None, model: VAE, min_delta: float) -> None:
        """After epoch ``epoch`` (0-based) with validation ``metric`` (None: not compared, KL warm-up)."""
        if self.stopped:
            return
        if metric is None:
            pass
        elif _improves(metric, self.best, min_delta):
            self.best, self.since_best = metric, 0
            self.best_state = _copy_state(model)
        else:
            self.since_best += 1
            self.stopped = self.since_best >= self.patience
        if epoch + 1 >= self.epochs and not self.stopped:
            self.stopped = True
            if self.best_state is None:  # its epochs all in KL warm-up: the weights of its last one, as train's rule
                self.best_state = _copy_state(model)


def _improves(metric: float, best: float, min_delta: float) -> bool:
    """Early stopping's test: ``metric`` beats ``best`` by more than ``min_delta`` of it."""
    return metric < best - min_delta * abs(best if math.isfinite(best) else metric)


def _copy_state(model: VAE) -> dict[str, torch.Tensor]:
    """A copy of the weights, as the best so far."""
    return {key: v.detach().clone() for key, v in model.state_dict().items()}


@torch.no_grad()
def _evaluate(model: VAE, x: torch.Tensor, cfg: TrainConfig, generator_seed: int) -> float:
    """Validation loss at the full objective weight, with noise that depends only on the epoch."""
    model.eval()
    g = torch.Generator().manual_seed(generator_seed)
    total = 0.0
    for start in range(0, x.shape[0], 1024):
        xb = x[start : start + 1024]
        eps = torch.randn(xb.shape[0], model.latent_dim, generator=g).to(xb.device)
        prior = (torch.randn(xb.shape[0], model.latent_dim, generator=g).to(xb.device) if cfg.objective == "mmd"
                 else None)
        total += loss_terms(model, xb, eps, cfg, cfg.beta, prior)["loss"].item() * xb.shape[0]
    value = total / x.shape[0]
    if not math.isfinite(value) or abs(value) > LOSS_LIMIT:
        raise TrainingDivergedError(f"validation loss is {value:.4g} nats a sample: training diverged; lower "
                                    "learning_rate")
    return value


# -- checkpoints ----------------------------------------------------------------------------------
def _fingerprint(cfg: TrainConfig, model: VAE, x_train: torch.Tensor) -> dict[str, Any]:
    """What must be the same for a checkpoint to go on with: settings but ``epochs`` (unless the
    step follows a schedule over them), the network, and the training data (shape and a cheap checksum)."""
    settings = cfg.to_dict()
    if cfg.lr_schedule == "constant":  # as checkpoints before the option were written: they still resume
        del settings["epochs"], settings["lr_schedule"]
    data = {"shape": list(x_train.shape), "sum": float(x_train.double().sum()), "sq": float((x_train.double() ** 2).sum())}
    return {"settings": settings, "model": model.config(), "data": data}


def _save_checkpoint(path: Path, epoch: int, model: VAE, opt: torch.optim.Optimizer, generator: torch.Generator,
                     fingerprint: dict[str, Any], history: list[dict[str, float]], best: float,
                     best_state: dict[str, torch.Tensor] | None, since_best: int, stopped: bool,
                     seed: int | None = None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best_state is not None:
        tensors.update({f"best.{k}": v.cpu().contiguous() for k, v in best_state.items()})
    state = opt.state_dict()
    for i, st in state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    meta = {"epoch": epoch, "history": history, "best": best if math.isfinite(best) else None,
            "since_best": since_best, "stopped": stopped, "param_groups": state["param_groups"],
            "fingerprint": fingerprint, "seed": seed}
    # both files to temporaries first, then renamed: a crash mid-write leaves the previous checkpoint
    # the epoch in both files: a kill between the two renames leaves a pair of files of two epochs, refused
    for name, write in ((CHECKPOINT_TENSORS, lambda f: save_file(tensors, f, metadata={"epoch": str(epoch)})),
                        (CHECKPOINT_JSON, lambda f: Path(f).write_text(json.dumps(meta)))):
        with atomic_output(path / name) as tmp:  # removed if interrupted (SIGTERM in the CLI)
            write(str(tmp))


def _valid_seed(seed: Any) -> int | None:
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**31 - 1 else None


def checkpoint_run(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """What the checkpoint in ``path`` says of its run: ``seed`` (None if written before seeds were
    kept), ``epoch`` (epochs done) and ``stopped`` (early stopping ended it). None when there is no
    checkpoint or it cannot be read (resuming then says what is wrong with it)."""
    if path is None or not (Path(path) / CHECKPOINT_JSON).is_file():  # not a FIFO or a device to read forever
        return None
    try:
        meta = _read_meta(Path(path))
        return {"seed": _valid_seed(meta.get("seed")), "epoch": int(meta["epoch"]), "stopped": bool(meta["stopped"])}
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON, or a ValueError saying it is not one (garbled, or nested past the parser)."""
    try:
        meta = json.loads((path / CHECKPOINT_JSON).read_text())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path / CHECKPOINT_JSON} is not a checkpoint ({type(err).__name__}): remove it, or give "
                         "another checkpoint_dir") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("fingerprint"), dict):
        raise ValueError(f"{path / CHECKPOINT_JSON} is not a checkpoint (no fingerprint): remove it, or give another "
                         "checkpoint_dir")
    return meta


def _load_checkpoint(path: Path, model: VAE, opt: torch.optim.Optimizer, generator: torch.Generator,
                     expected: dict[str, Any], seed: int | None = None
                     ) -> tuple[int, list[dict[str, float]], float, dict[str, torch.Tensor] | None, int, bool]:
    meta = _read_meta(path)
    theirs = _valid_seed(meta.get("seed"))
    if seed is not None and theirs is not None and theirs != seed:
        # before the data: another seed splits the rows otherwise, so the data would differ too
        raise ValueError(f"the checkpoint in {path} was written by a run with seed {theirs}, and this run's seed is "
                         f"{seed}: fit with that seed (random_state={theirs}; the command line's --seed {theirs}) to "
                         "go on with it, or remove it, or give another checkpoint_dir")
    if meta["fingerprint"] != expected:
        differ = [k for k in expected if meta["fingerprint"].get(k) != expected[k]]
        old, new = meta["fingerprint"].get("settings", {}), expected["settings"]
        changed = sorted(k for k in {*old, *new} if old.get(k) != new.get(k))
        why = f" ({', '.join(changed)})" if changed else ""
        if "epochs" in changed and "cosine" in (old.get("lr_schedule"), new.get("lr_schedule")):
            why += "; a cosine schedule spans epochs, so it resumes only with the same epochs"
        old_net, new_net = meta["fingerprint"].get("model", {}), expected["model"]
        net = [f"{k} {old_net.get(k, 'absent')} there, {new_net.get(k, 'absent')} here"
               for k in sorted({*old_net, *new_net}) if k != "pair" and old_net.get(k) != new_net.get(k)]
        if net:  # e.g. marginal_floor, "auto" since session 12: 0.01 for a table
            why += f" (the network: {'; '.join(net)}; the same settings as that run's resume it)"
        raise ValueError(f"the checkpoint in {path} was written for other {' and '.join(differ)} than this run's{why}; "
                         "remove it, or give another checkpoint_dir")
    file = path / CHECKPOINT_TENSORS
    if not file.is_file():  # missing, or a FIFO or a device that reading would wait on forever
        raise ValueError(f"the checkpoint in {path} cannot be resumed: {file} is missing or not a regular file; remove "
                         "the checkpoint, or give another checkpoint_dir")
    try:
        with safe_open(str(file), framework="pt") as f:
            written = (f.metadata() or {}).get("epoch")
        if written is not None and written != str(meta["epoch"]):
            raise ValueError(f"its tensors are of epoch {written} and {CHECKPOINT_JSON} of epoch {meta['epoch']} (a "
                             "write interrupted between the two files)")
        tensors = load_file(str(file))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, i, name = key.split(".", 2)
                opt_state.setdefault(int(i), {})[name] = v
        opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        generator.set_state(tensors["generator"])
        best = float(meta["best"]) if meta["best"] is not None else math.inf
        epoch, history, since_best, stopped = int(meta["epoch"]), list(meta["history"]), int(meta["since_best"]), \
            bool(meta["stopped"])
        if not all(isinstance(row, dict) for row in history):
            raise ValueError("its history is not a list of epochs")
    except (KeyError, TypeError, ValueError, RuntimeError, OSError, SafetensorError) as err:
        problem = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise ValueError(f"the checkpoint in {path} cannot be resumed ({type(err).__name__}: {problem}); remove it, or "
                         "give another checkpoint_dir") from None
    return epoch, history, best, best_state, since_best, stopped
