"""The default pair taken apart: each of its two networks' scores, and variants of their scores that
need no new fit, saved in the format of ``quality.py --save-scores`` so that ``combine.py`` can
score any combination of them on the same splits (quality-study.md, section 22).

    python benchmarks/members.py --seeds 0,1,2 --save-scores M012
    python benchmarks/combine.py M012 default long 'sum(short_agg,long)' 'sum(half_short,long)' --against default

One fit of ``VAEAnomalyDetector()`` (the default, a pair on a table) per split; then, on the test
rows, under these names:

- ``default``: the detector's own score (the sum of the two networks' negative ELBOs), and
  ``KNN (k=5)``, on the same split;
- ``short``, ``long``: the negative ELBO of the early-stopped network alone (prior N(0, I)) and of
  the long one alone (its aggregate prior), with the fit's fixed noise; ``half_short``: half of
  ``short`` (``sum(half_short,long)`` weighs the short network by one half);
- ``short_agg``: the short network's negative ELBO under an aggregate prior of its own, made as the
  long network's is (the codes of the same training rows);
- ``long_s{c}``: the long network with its aggregate prior's variances multiplied by ``c`` (a
  kernel density of the training codes with a wider or narrower bandwidth), for ``c`` in
  ``SCALES``; ``long_sel``: the ``c`` whose mean negative ELBO on the fit's validation rows is the
  lowest (the bandwidth chosen by held-out likelihood, label-free);
- ``short_rec``, ``short_kl``, ``long_rec``, ``long_kl``: the two terms of each network's negative
  ELBO (-E_q log p(x|z) over the fixed noise, and the KL term; ``short`` is ``sum(short_rec,short_kl)``),
  and ``short_recmean``, ``long_recmean``: -log p(x | z = posterior mean), each network's
  "reconstruction" score (section 27: the terms weighed otherwise).

With ``--synthetic``, every name's arrays also hold ``synthetic_{kind}``: its scores of rows made
from the fit's held-out normal rows (validation and calibration) without labels, for a rule that
chooses among scores per table by how well each separates them from those rows (section 28,
``combine.py``'s ``sel``). The kinds (``synthetic_rows``): ``perm``, every column permuted
among the held-out rows on its own (the marginals kept, the dependencies broken); ``swap``, one
column of each row taken from another held-out row (a local break); ``noise``, Gaussian noise of
half a column's standard deviation on every numeric column.

With ``--quantile``, the fit is on the table with each numeric column rank-Gauss mapped first
(section 29, ``ablations.quantile_data``), and every name but KNN's is saved with ``q_`` in front:
with another run's standard names in the same folder, ``combine.py`` can pair the networks of the two
codings (``sum(short,q_long)``).

Every name's ``fit_seconds`` is the one fit's, so ``combine.py`` adds it once per member of a
rule: quote fit times from ``results/quality.md``. The calibration scores of each name are saved
too (``combine.py``'s ``z``, ``cmax`` and ``zmax`` rules use them), and its validation rows' scores
(``validation``). This is a research script: it reads the fitted detector's networks
(``model_.members``) and rebuilds its split of the rows from ``fit_info_`` (``detector.fit_rows``,
``pair_code_rows``).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ablations  # noqa: E402
import datasets  # noqa: E402
import quality  # noqa: E402

SCALES = (0.25, 0.5, 2.0, 4.0)


def _elbo(net: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor, block: int = 1024) -> np.ndarray:
    """Negative ELBO per row, in nats (the detector's "elbo" score of one network), ``block`` rows at a
    time (an aggregate prior holds draws x codes numbers a row)."""
    out = []
    with torch.no_grad():
        for start in range(0, x.shape[0], block):
            p = net(x[start:start + block], noise.unsqueeze(1))
            out.append((-p.log_px.mean(dim=0) + p.kl).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _parts(net: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor, block: int = 1024) -> dict[str, np.ndarray]:
    """``elbo``, what ``_elbo`` gives, from the same pass as its two terms per row, ``rec`` (-E_q log p(x|z)
    over the fixed noise) and ``kl``; and ``recmean``, -log p(x | z = posterior mean) (the
    "reconstruction" score)."""
    out: dict[str, list[np.ndarray]] = {"elbo": [], "rec": [], "kl": [], "recmean": []}
    with torch.no_grad():
        for start in range(0, x.shape[0], block):
            xb = x[start:start + block]
            p = net(xb, noise.unsqueeze(1))
            rec = -p.log_px.mean(dim=0)
            out["elbo"].append((rec + p.kl).double().numpy())
            out["rec"].append(rec.double().numpy())
            out["kl"].append(p.kl.double().numpy())
            out["recmean"].append((-net(xb).log_px).double().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def fit_split(det: object, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The fit's own split of its ``n`` rows: {"cal", "val", "train": row indices}, and the indices into
    the training rows whose codes make the long network's aggregate prior (the package's
    ``detector.fit_rows`` and ``pair_code_rows``, from what ``fit_info_`` recorded)."""
    from anomaly_vae.detector import fit_rows, pair_code_rows

    info = det.fit_info_  # type: ignore[attr-defined]
    cal, val, train = fit_rows(n, info["n_calibration"], info["n_validation"], info["seed"])
    return ({"cal": cal, "val": val, "train": train},
            pair_code_rows(len(train), int(det.n_score_samples), info["seed"]))  # type: ignore[attr-defined]


def fit_default(dataset: str, key: int, quantile: bool = False) -> tuple[object, dict[str, object], float]:
    """(the default fitted on one split's training rows, the split, fit seconds). ``quantile``: the
    split's tables for the detector (``ours_train``, ``ours_test``) rank-Gauss mapped first
    (``ablations.quantile_data``, section 29), and the detector fitted on them."""
    from anomaly_vae import VAEAnomalyDetector

    s = quality.split(dataset, key, None)
    if quantile:
        s["ours_train"], s["ours_test"], _ = ablations.quantile_data(2, s["ours_train"], s["ours_test"])
    t = time.perf_counter()
    det = quality._fit(VAEAnomalyDetector, {"random_state": key}, s["ours_train"], f"{dataset} {key}")
    return det, s, time.perf_counter() - t


def synthetic_rows(raw: object, rows: np.ndarray, seed: int, cap: int = 2000) -> dict[str, object]:
    """{kind: raw rows} made from ``raw``'s rows ``rows`` (held-out normals), at most ``cap`` each
    (see the module's docstring); ``raw`` is a table as the detector takes it (array or DataFrame)."""
    import pandas as pd

    rng = np.random.default_rng(10_000 + seed)
    frame = raw.iloc[rows].reset_index(drop=True) if isinstance(raw, pd.DataFrame) else pd.DataFrame(np.asarray(raw)[rows])
    reps = max(1, -(-cap // max(len(frame), 1)))
    base = pd.concat([frame] * reps, ignore_index=True).iloc[:cap]
    n = len(base)
    perm = base.copy()
    for c in perm.columns:
        perm[c] = base[c].to_numpy()[rng.permutation(n)]
    swap = base.copy()
    col = rng.integers(0, base.shape[1], n)
    donor = rng.integers(0, n, n)
    for j, c in enumerate(base.columns):
        hit = np.flatnonzero(col == j)
        if len(hit):
            values = swap[c].to_numpy().copy()
            values[hit] = base[c].to_numpy()[donor[hit]]
            swap[c] = values
    noise = base.copy()
    for c in noise.columns:
        if pd.api.types.is_numeric_dtype(noise[c]) and not pd.api.types.is_bool_dtype(noise[c]):
            v = noise[c].to_numpy(dtype=float)
            noise[c] = v + 0.5 * (np.nanstd(v) or 1.0) * rng.standard_normal(n)
    out = {"perm": perm, "swap": swap, "noise": noise}
    return out if isinstance(raw, pd.DataFrame) else {k: v.to_numpy() for k, v in out.items()}


def _with_prior(net: torch.nn.Module, mu: torch.Tensor, logvar: torch.Tensor) -> torch.nn.Module:
    """A copy of ``net`` whose prior is the aggregate posterior of the codes (``mu``, ``logvar``)."""
    out = copy.deepcopy(net)
    out.set_aggregate_prior(mu.clone(), logvar.clone())
    return out


def one_split(dataset: str, key: int, fitted: tuple[object, dict[str, object], float] | None = None,
              synthetic: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """{name: arrays as ``quality.py --save-scores`` writes them} for one split (``fitted``: what
    ``fit_default`` returned for it, else it fits; ``synthetic``: add the ``synthetic_{kind}`` scores)."""
    det, s, fit_s = fitted or fit_default(dataset, key)
    short, long = det.model_.members
    x = torch.from_numpy(det.preprocess(s["ours_train"]))  # a table's rows as the network takes them
    rows, codes = fit_split(det, len(x))
    x_train = x[torch.from_numpy(rows["train"])]
    with torch.no_grad():
        mu, logvar = short.encode(x_train[torch.from_numpy(codes)])
    nets = {"short": short, "long": long, "short_agg": _with_prior(short, mu, logvar)}
    for c in SCALES:
        nets[f"long_s{c:g}"] = _with_prior(long, long.prior_mu, long.prior_logvar + math.log(c))
    test = det.preprocess(s["ours_test"])
    parts = {"test": torch.from_numpy(test), "calibration": x[torch.from_numpy(rows["cal"])], "val": x[torch.from_numpy(rows["val"])]}
    if synthetic:
        held_out = np.concatenate([rows["val"], rows["cal"]])
        for kind, raw in synthetic_rows(s["ours_train"], held_out, key).items():
            parts[f"synthetic_{kind}"] = torch.from_numpy(det.preprocess(raw))
    # the two networks' scores with their terms (to weigh offline) from one pass, the variants' from _elbo
    terms = {name: {part: _parts(nets[name], xs, det.noise_) for part, xs in parts.items()}
             for name in ("short", "long")}
    scores = {name: {part: terms[name][part]["elbo"] if name in terms else _elbo(net, xs, det.noise_)
                     for part, xs in parts.items()} for name, net in nets.items()}
    scores["half_short"] = {part: 0.5 * v for part, v in scores["short"].items()}
    for name in terms:
        for term in ("rec", "kl", "recmean"):
            scores[f"{name}_{term}"] = {part: terms[name][part][term] for part in parts}
    if len(rows["val"]):  # the bandwidth with the best held-out ELBO (the long network's own, c = 1, among them)
        chosen = min(["long", *(f"long_s{c:g}" for c in SCALES)], key=lambda n: float(np.mean(scores[n]["val"])))
        scores["long_sel"] = scores[chosen]
        print(f"{dataset} {key}: long_sel is {chosen}")
    y = np.asarray(s["y"])
    out = {name: {"scores": v["test"], "calibration": v["calibration"], "validation": v["val"], "y": y,
                  "fit_seconds": np.float64(fit_s), **{p: a for p, a in v.items() if p.startswith("synthetic_")}}
           for name, v in scores.items()}
    out["default"] = {"scores": det.score_prepared(test), "calibration": np.asarray(det.calibration_scores_),
                      "y": y, "fit_seconds": np.float64(fit_s)}
    out["KNN (k=5)"] = {"scores": quality.knn_scores(s["train"], s["test"]), "y": y, "fit_seconds": np.float64(0.0)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", help="comma-separated tables (default: the 11 shared ones and the scikit-learn tasks)")
    ap.add_argument("--save-scores", metavar="DIR", required=True)
    ap.add_argument("--synthetic", action="store_true", help="also score rows made from the held-out normals (section 28)")
    ap.add_argument("--quantile", action="store_true", help="fit on the rank-Gauss mapped table and save every name "
                    "with a 'q_' in front (section 29: to pair one network of each coding offline)")
    args = ap.parse_args()
    known = datasets.ADBENCH + [datasets.MIXED] + datasets.SKLEARN
    tables = known if args.datasets is None else [d.strip() for d in args.datasets.split(",")]
    unknown = [d for d in tables if d not in known]
    if unknown or not tables:  # before any fit: a typo in the last name would otherwise end a long run
        ap.error(f"--datasets: {unknown or 'none given'}; the tables are {', '.join(known)} (the default pair is "
                 "a table's: images have one network)")
    for dataset in tables:
        for key in (int(k) for k in args.seeds.split(",")):
            t = time.perf_counter()
            fitted = fit_default(dataset, key, quantile=args.quantile)
            for name, arrays in one_split(dataset, key, fitted, synthetic=args.synthetic).items():
                if args.quantile and name != "KNN (k=5)":
                    name = f"q_{name}"
                quality._save(args.save_scores, dataset, key, name, arrays)
            print(f"{dataset} {key}: {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
