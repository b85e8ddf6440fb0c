"""Detection quality: VAEAnomalyDetector beside IsolationForest, KNN and PyOD's VAE, on the same
splits, under the one-class protocols of ../shared/datasets/README.md.

    python benchmarks/quality.py                              # everything: tables, mixed, Fashion-MNIST, MNIST
    python benchmarks/quality.py --only tables --seeds 0,1,2  # the 10 ADBench tables and the mixed table
    python benchmarks/quality.py --only fashion-mnist --classes 0,1 --no-pyod   # a quick look
    python benchmarks/quality.py --ablation default,steps,ensemble --only tables --jobs 2

Datasets (``--only``, repeatable): ``adbench`` (the 10 ADBench Classical tables), ``mixed`` (a
mixed-type table with heavy-tailed and string columns built from 6_cardio, see
``datasets.make_mixed``), ``tables`` (both), ``fashion-mnist``, ``mnist``, and ``sklearn`` (one-class
tasks from scikit-learn's bundled digits, wine and breast cancer data, ``datasets.SKLEARN``: tables no
default was chosen on, a check that a rule generalises).

Ablation mode runs a list of configurations of the detector side by side on the same splits; a
configuration is a name from ``ablations.CONFIGS`` or ``name={"param": value, ...}`` (JSON
constructor arguments). ``--jobs N`` runs N fits at once, each on one thread (fit seconds are then
per thread; quote fit times from a run with ``--jobs 1``).

Writes a Markdown table (``--out``; default benchmarks/results/quality.md, or
benchmarks/results/ablation.md in ablation mode): AUROC per dataset and detector, the mean, and fit
seconds (mean, median, max).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablations  # noqa: E402
import datasets  # noqa: E402
import noisy_inputs  # noqa: E402
import vampprior  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASELINES = ("IsolationForest", "KNN (k=5)", "PyOD VAE")
IMAGE_SETS = ("fashion-mnist", "mnist")


def knn_scores(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k).fit(train)
    return nn.kneighbors(test)[0].mean(axis=1)


# -- splits: (dataset, split) -> what each detector sees ------------------------------------------------
@lru_cache(maxsize=4)
def _images(name: str) -> tuple[np.ndarray, ...]:
    return datasets.load_images(name)


@lru_cache(maxsize=16)
def _table(name: str) -> tuple[Any, np.ndarray]:
    if name.startswith("sk_"):
        return datasets.load_sklearn(name)
    return datasets.make_mixed() if name == datasets.MIXED else datasets.load_adbench(name)


def split(dataset: str, key: int, test_size: int | None) -> dict[str, Any]:
    """One split: ``ours_train/ours_test`` (what the detector is given: the raw table, a DataFrame,
    or uint8 images), ``train/test`` (the baselines' standardised or flat [0, 1] features), ``y``."""
    if dataset in IMAGE_SETS:
        Xtr, ytr, Xte, yte = _images(dataset)
        m = ytr == key
        idx = np.arange(len(Xte))
        if test_size and test_size < len(Xte):
            idx = np.sort(np.random.RandomState(1000 + key).choice(len(Xte), test_size, replace=False))
        return {"ours_train": Xtr[m], "ours_test": Xte[idx], "train": Xtr[m].reshape(m.sum(), -1) / 255.0,
                "test": Xte[idx].reshape(len(idx), -1) / 255.0, "y": (yte[idx] != key).astype(int)}
    X, y = _table(dataset)
    tr, te = datasets.adbench_split(y, key)
    if dataset == datasets.MIXED:
        feats = datasets.baseline_features(X, tr)
        return {"ours_train": X.iloc[tr].reset_index(drop=True), "ours_test": X.iloc[te].reset_index(drop=True),
                "train": feats[tr], "test": feats[te], "y": y[te]}
    mean, std = X[tr].mean(0), X[tr].std(0)
    std[std == 0] = 1.0
    Xs = (X - mean) / std  # baselines: standardised on the training half, as the protocol says
    return {"ours_train": X[tr], "ours_test": X[te], "train": Xs[tr], "test": Xs[te], "y": y[te]}


def run_one(task: tuple[str, int, str, dict[str, Any] | None, int | None, int | None]) -> tuple[str, int, str, float, float, dict[str, np.ndarray]]:
    """Fit and score one detector on one split: (dataset, key, detector, AUROC, fit seconds, arrays),
    ``arrays``: the test scores, the labels and (ours) the calibration scores, for ``--save-scores``."""
    dataset, key, name, params, test_size, threads = task
    s = split(dataset, key, test_size)
    seed = key if dataset not in IMAGE_SETS else 0
    t = time.perf_counter()
    if params is not None:  # ours
        from anomaly_vae import VAEAnomalyDetector

        kw = {"random_state": seed, **params}
        if threads:
            kw.setdefault("n_threads", threads)
        proto = {k: kw.pop(k) for k in list(kw) if k.startswith("_")}  # prototypes of rules, see ablations.py
        train_x, test_x, jac = ablations.prototype_data(proto, s["ours_train"], s["ours_test"])
        if "_steps" in proto:
            kw["epochs"] = ablations.epochs_for_steps(proto["_steps"], len(train_x), kw)
        if "_select_hidden" in proto:  # the early-stopped network's width chosen by held-out ELBO (label-free)
            kw["hidden_sizes"] = ablations.select_hidden(
                lambda k: _fit(VAEAnomalyDetector, k, train_x, f"{dataset} {key} {name} select"), kw,
                proto["_select_hidden"])
        floor = (ablations.marginal_floor(proto["_floor"], bool(proto.get("_floor_constant_only")))
                 if "_floor" in proto else contextlib.nullcontext())
        latent = ablations.latent_size(*proto["_latent"]) if "_latent" in proto else contextlib.nullcontext()
        runs = ablations.run_settings(proto["_runs"]) if "_runs" in proto else contextlib.nullcontext()
        consts = ablations.module_constants(proto["_module"]) if "_module" in proto else contextlib.nullcontext()
        vamp = vampprior.vamp_prior(proto["_vamp"]) if "_vamp" in proto else contextlib.nullcontext()
        noise = noisy_inputs.noisy_inputs(proto["_noise"]) if "_noise" in proto else contextlib.nullcontext()
        with floor, latent, runs, consts, vamp, noise:  # the prototypes' patches hold for this fit and its scoring only
            members = []
            first = seed + int(proto.get("_seed", 0))  # ``_seed``: another model seed on the same split
            for m in range(int(proto.get("_members", 1))):
                kw_m = {**kw, "random_state": first if m == 0 else 1000 * (seed + 1) + m}
                members.append(_fit(VAEAnomalyDetector, kw_m, train_x, f"{dataset} {key} {name}"))
            fit_s = time.perf_counter() - t
            if "_agg" in proto:
                per = np.stack([ablations.aggregate_prior_scores(d, train_x, test_x, **proto["_agg"]) for d in members])
            else:
                per = np.stack([d.anomaly_score(test_x) for d in members])
            scores = per[0] if len(members) == 1 else -(np.logaddexp.reduce(-per, axis=0) - np.log(len(members)))
            if proto.get("_quantile_jacobian"):  # the marginal maps' change of variables (ablations.quantile_data)
                # a pair's score is the sum of its networks' -log p(mapped row): each becomes -log p(row) with the
                # change of variables, so it counts once a network; ``_jacobian_weight`` scales it further
                networks = len(members[0].model_.members)
                scores = scores + float(proto.get("_jacobian_weight", 1.0)) * networks * jac
            arrays = {"reconstruction": members[0].anomaly_score(test_x, score="reconstruction")}
            if "_background" in proto:  # the likelihood ratio: minus the background model's score
                t_back = time.perf_counter()
                noisy = ablations.perturbed_images(train_x, float(proto["_background"]), seed=1000 + seed)
                back = _fit(VAEAnomalyDetector, {**kw, "random_state": seed + 1}, noisy, f"{dataset} {key} {name} bg")
                fit_s += time.perf_counter() - t_back  # the two fits, not the scoring between them
                arrays.update(model=scores, background=back.anomaly_score(test_x))
                scores = scores - arrays["background"]
            if (len(members) == 1 and "_agg" not in proto and "_background" not in proto
                    and not proto.get("_quantile_jacobian")):  # calibration scores of the score saved, else none
                arrays["calibration"] = np.asarray(members[0].calibration_scores_)
    elif name == "IsolationForest":
        model = IsolationForest(random_state=seed).fit(s["train"])
        fit_s = time.perf_counter() - t
        scores = -model.score_samples(s["test"])
    elif name == "KNN (k=5)":
        scores = knn_scores(s["train"], s["test"])
        fit_s = time.perf_counter() - t
    elif name == "PyOD VAE":
        from pyod.models.vae import VAE

        model = VAE(random_state=seed, verbose=0).fit(s["train"])
        fit_s = time.perf_counter() - t
        scores = model.decision_function(s["test"])
    else:
        raise ValueError(name)
    if params is None:
        arrays = {}
    arrays.update(scores=np.asarray(scores, dtype=np.float64), y=np.asarray(s["y"]), fit_seconds=np.float64(fit_s))
    return dataset, key, name, float(roc_auc_score(s["y"], scores)), fit_s, arrays


def _fit(cls: Any, kw: dict[str, Any], x: Any, what: str) -> Any:
    from anomaly_vae.exceptions import CalibrationError

    # too few rows for alpha=0.01's conformal threshold (18_Ionosphere: 112; sk_wine_2: 24): a larger alpha
    alphas = [kw.get("alpha", 0.01), 0.05, 0.2]
    for alpha, larger in zip(alphas, alphas[1:]):
        try:
            return cls(**{**kw, "alpha": alpha}).fit(x)
        except CalibrationError:
            print(f"{what}: too few rows for alpha={alpha}; fitted with alpha={larger}")
    return cls(**{**kw, "alpha": alphas[-1]}).fit(x)


def file_name(name: str) -> str:
    """A detector's name as ``--save-scores`` writes it into file names (``KNN (k=5)`` -> ``KNN__k_5_``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _save(folder: str | None, dataset: str, key: int, name: str, arrays: dict[str, np.ndarray]) -> None:
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        np.savez(Path(folder) / f"{dataset}__{key}__{file_name(name)}.npz", **arrays)


def _init_worker(threads: int) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    parent = os.getppid()

    def exit_with_the_parent() -> None:  # a killed run's workers went on fitting for many minutes
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_the_parent, daemon=True).start()


# -- tables of results ----------------------------------------------------------------------------------
def render(title: str, note: str, results: dict[str, dict[str, list[tuple[float, float]]]], names: list[str]) -> str:
    """``results[dataset][detector]`` = [(AUROC, fit s) per seed or class] -> Markdown."""
    lines = [f"## {title}", "", note, "", "| dataset | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    auc = {d: {n: float(np.mean([a for a, _ in r[n]])) for n in names} for d, r in results.items()}
    for d in results:
        best = max(auc[d].values())
        lines.append(f"| {d} | " + " | ".join(
            (f"**{auc[d][n]:.3f}**" if auc[d][n] == best else f"{auc[d][n]:.3f}") for n in names) + " |")
    lines.append("| **mean AUROC** | " + " | ".join(f"**{np.mean([auc[d][n] for d in results]):.3f}**" for n in names) + " |")
    if "IsolationForest" in names:
        lines.append("| datasets below IsolationForest by > 0.02 | " + " | ".join(
            str(sum(auc[d][n] < auc[d]["IsolationForest"] - 0.02 for d in results)) for n in names) + " |")
    if "KNN (k=5)" in names:
        lines.append("| datasets at or above KNN | " + " | ".join(
            str(sum(auc[d][n] >= auc[d]["KNN (k=5)"] for d in results)) for n in names) + " |")
    fits = {n: [f for d in results for _, f in results[d][n]] for n in names}
    for label, fn in (("fit s, mean", np.mean), ("fit s, median", np.median), ("fit s, max", np.max)):
        lines.append(f"| {label} | " + " | ".join(f"{fn(fits[n]):.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


NOTES = {
    "tables": "One-class protocol: train on a random half of the normal rows; test on the other half plus all "
              "anomalies; AUROC averaged over the seeds. Baselines get features standardised on the training half "
              "(the mixed table: strings one-hot, numbers standardised); VAEAnomalyDetector gets the raw table "
              "(a DataFrame with strings for the mixed table) and prepares it itself, from the same half. Where the "
              "training half is too small for the conformal threshold at alpha = 0.01 (18_Ionosphere, 112 rows: "
              "`fit` refuses), it is fitted with alpha = 0.05 (then 0.2: sk_wine); AUROC does not use the threshold.",
    "images": "Train on the training images of one class; score the test set; anomaly = another class. Baselines "
              "see 784 flat features in [0, 1]; VAEAnomalyDetector gets the uint8 images.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["adbench", "mixed", "tables", "sklearn", *IMAGE_SETS], action="append")
    ap.add_argument("--datasets", help="comma-separated table names (a subset of the ADBench ones, or mixed_cardio)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the table splits (default 0,1,2)")
    ap.add_argument("--classes", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--test-size", type=int, help="images: score a fixed random subset of the test set (quicker ablations)")
    ap.add_argument("--ablation", help="comma-separated configurations (names in ablations.CONFIGS or name=JSON)")
    ap.add_argument("--no-baselines", action="store_true", help="ablation mode: only the configurations")
    ap.add_argument("--no-pyod", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="fits at once, one thread each (default 1: all threads)")
    ap.add_argument("--out")
    ap.add_argument("--save-scores", metavar="DIR", help="write each fit's test scores, labels and calibration "
                    "scores to DIR/<dataset>__<key>__<detector>.npz (to study combinations offline)")
    args = ap.parse_args()
    if not datasets.available():
        sys.exit(f"datasets not found at {datasets.ROOT} (set ANOMALY_VAE_DATASETS): nothing to benchmark")
    # --datasets alone names tables: no image sets unless --only asks for them too
    only = set(args.only or (["tables"] if args.datasets else ["tables", *IMAGE_SETS]))
    if "tables" in only:
        only |= {"adbench", "mixed"}
    configs = ablations.parse(args.ablation) if args.ablation else {"VAEAnomalyDetector": {}}
    baselines = [] if (args.ablation and args.no_baselines) else [
        b for b in BASELINES if not (b == "PyOD VAE" and (args.no_pyod or args.ablation))]
    names = list(configs) + baselines
    threads = 1 if args.jobs > 1 else None

    groups: dict[str, list[tuple[str, int]]] = {}
    tables = (args.datasets.split(",") if args.datasets else
              (datasets.ADBENCH if "adbench" in only else []) + ([datasets.MIXED] if "mixed" in only else [])
              + (datasets.SKLEARN if "sklearn" in only else []))
    seeds = [int(s) for s in args.seeds.split(",")]
    if tables:
        groups["tables"] = [(d, s) for d in tables for s in seeds]
    for name in IMAGE_SETS:
        if name in only:
            groups[name] = [(name, int(c)) for c in args.classes.split(",")]
    tasks = [(d, k, n, configs.get(n), args.test_size, threads) for g in groups.values() for d, k in g for n in names]
    results: dict[tuple[str, int, str], tuple[float, float]] = {}
    started = time.perf_counter()
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(1,)) as pool:
            for d, k, n, auc, fit_s, arrays in pool.imap_unordered(run_one, tasks):
                results[(d, k, n)] = (auc, fit_s)
                _save(args.save_scores, d, k, n, arrays)
                print(f"{d} {k} {n}: AUROC {auc:.3f} fit {fit_s:.1f}s", flush=True)
    else:
        for task in tasks:
            d, k, n, auc, fit_s, arrays = run_one(task)
            results[(d, k, n)] = (auc, fit_s)
            _save(args.save_scores, d, k, n, arrays)
            print(f"{d} {k} {n}: AUROC {auc:.3f} fit {fit_s:.1f}s", flush=True)

    cmd = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    parts = ["# Detection quality" if not args.ablation else "# Ablation", "", f"`{cmd}` ({time.perf_counter() - started:.0f} s)", ""]
    if args.ablation:
        parts += ["Configurations (constructor arguments on top of the defaults, `random_state` = the seed):", ""]
        parts += [f"- `{n}`: `{json.dumps(p)}`" for n, p in configs.items()] + [""]
    else:
        parts += ["`VAEAnomalyDetector()` with only `random_state` set; scikit-learn defaults for IsolationForest, "
                  "PyOD's defaults for its VAE. AUROC of the anomaly score (higher = more anomalous); fit seconds "
                  "on this machine, same run.", ""]
    for g, keys in groups.items():
        by_ds: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for d, k in keys:
            label = d if g == "tables" else (f"{k} {datasets.FMNIST_CLASSES[k]}" if g == "fashion-mnist" else str(k))
            for n in names:
                by_ds.setdefault(label, {}).setdefault(n, []).append(results[(d, k, n)])
        title = (f"Tables, one-class (mean of seeds {args.seeds})" if g == "tables" else f"{g}, one-class"
                 + (f" (test subset of {args.test_size})" if args.test_size else ""))
        parts.append(render(title, NOTES["tables" if g == "tables" else "images"], by_ds, names))
    out = Path(args.out or RESULTS / ("ablation.md" if args.ablation else "quality.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
