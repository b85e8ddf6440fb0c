"""Combinations of detectors' scores, studied offline from the scores ``quality.py --save-scores``
wrote: one fit per configuration and split, then any number of ways to combine them, each scored
on the same splits (no refit, so the rules differ only in how they combine).

    python benchmarks/quality.py --only tables --jobs 2 --no-pyod --ablation default,agg_steps3k --save-scores S
    python benchmarks/combine.py S 'default' 'sum(default,agg_steps3k)' 'mix(default,agg_steps3k)' --out F

A rule is a saved detector's name (``default``, ``IsolationForest``, ``KNN (k=5)``) or
``op(a,b,...)`` over such names, ``op`` one of

- ``sum``: the sum of the scores in nats (-log of the product of the members' likelihood bounds:
  a product of experts; a fixed function of the input, so one conformal calibration still holds);
- ``mix``: -log mean exp(-score), the score of the mixture of the members' densities;
- ``max``: the largest score (anomalous when any member says so);
- ``z``: the sum of the scores each centred on its calibration median and divided by its calibration
  interquartile range (unitless: for comparison only, not a candidate for a score in nats);
- ``cmax``: the largest of the scores each centred on its calibration median (still in nats: a
  shift), ``vmax`` the same centred on the validation rows' median (``members.py`` saves them: rows
  the calibration does not use), and ``zmax``: the largest of the ``z`` rule's scaled scores
  (unitless); all "anomalous when any member says so" with the members put on a common footing
  first (section 27: the two terms of a network's score, saved by ``members.py``);
- ``sel_{kind}``, with candidates split by ``|`` (``sel_noise(sum(short,long)|cmax(long_rec,long_kl))``):
  on each split, the candidate whose scores best separate the held-out normal rows from the rows
  ``members.py --synthetic`` made from them (``kind`` one of ``perm``, ``swap``, ``noise``; ``sel``
  alone: the mean over the kinds); ``selv_{kind}``: the validation rows only (section 28: a choice
  of the score per table without labels). The choices are listed under the table.

A member may carry a weight, ``2*long_kl``: its scores (after the op's centring) times 2.

Writes the table ``quality.py`` writes (AUROC per dataset, its mean, the tables below
IsolationForest by more than 0.02, and the fit seconds of the members added up). ``--more F``
adds the saved scores of other splits (``quality.py --seeds 3,4,5 --save-scores F``).

``--against REF`` adds a paired table: for each other rule and dataset, the mean AUROC difference
to ``REF`` over the splits, the worst split's, and the paired t statistic, with the datasets where
a rule is worse or better than ``REF`` beyond the splits' noise (two-sided, 5 %). It is what "wins
on every dataset" can be checked with: a difference of 0.004 on one dataset is a loss only when
the splits agree on it.

    python benchmarks/combine.py S default pair_mf1e-2_h256 --more S345 --against default
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

OPS = ("sum", "mix", "max", "z", "cmax", "vmax", "zmax")


def load(folder: str) -> dict[tuple[str, int], dict[str, dict[str, np.ndarray]]]:
    """{(dataset, key): {saved name: arrays}} from ``quality.py --save-scores``."""
    out: dict[tuple[str, int], dict[str, dict[str, np.ndarray]]] = defaultdict(dict)
    for f in sorted(Path(folder).glob("*.npz")):
        dataset, key, name = f.stem.split("__", 2)
        with np.load(f) as z:
            out[(dataset, int(key))][name] = {k: z[k] for k in z.files}
    if not out:
        raise SystemExit(f"no saved scores in {folder}")
    return out


def _iqr_scaled(arrays: dict[str, np.ndarray], part: str = "scores") -> np.ndarray:
    cal = arrays.get("calibration")
    if cal is None:
        raise KeyError("calibration")
    q1, med, q3 = np.percentile(cal, [25, 50, 75])
    return (arrays[part] - med) / ((q3 - q1) or 1.0)


def _centred(arrays: dict[str, np.ndarray], part: str = "scores", by: str = "calibration") -> np.ndarray:
    rows = arrays.get(by)
    if rows is None or not len(rows):
        raise KeyError(by)
    return arrays[part] - np.median(rows)


CHOICES: dict[str, Counter[str]] = defaultdict(Counter)  # sel rules: {rule: {candidate: splits it was chosen on}}


def _select(op: str, inner: str, saved: dict[str, dict[str, np.ndarray]], part: str) -> tuple[np.ndarray, float]:
    """``sel_{kind}(a|b|...)``: the candidate rule whose scores best separate the held-out normal rows
    (validation and calibration) from ``members.py --synthetic``'s rows of that kind (AUROC; ``sel`` alone:
    the mean over the kinds saved), on this split; its scores. ``selv_{kind}``: the validation rows
    only, and only the synthetic rows made from them (the calibration rows left to the calibration, as
    a rule in the package would have to; ``noise`` and ``swap`` only: ``perm`` mixes the rows). Label-free:
    no test label is read."""
    candidates = [c.strip() for c in inner.split("|")]
    own = op.startswith("selv")
    kind = op[5:] if own else op[4:]
    kinds = [kind] if kind else sorted(
        {k[len("synthetic_"):] for arrays in saved.values() for k in arrays if k.startswith("synthetic_")})
    if not kinds or (own and "perm" in kinds):
        raise KeyError(f"synthetic rows for {op}")

    def separation(rule: str) -> float:
        val, cal = (evaluate(rule, saved, held)[0] for held in ("validation", "calibration"))
        normal = val if own else np.concatenate([val, cal])
        out = []
        for k in kinds:
            synth = evaluate(rule, saved, f"synthetic_{k}")[0]
            if own:  # members.synthetic_rows tiles the validation rows, then the calibration rows
                synth = synth[np.arange(len(synth)) % (len(val) + len(cal)) < len(val)]
            y = np.r_[np.zeros(len(normal)), np.ones(len(synth))]
            out.append(roc_auc_score(y, np.r_[normal, synth]))
        return float(np.mean(out))

    best = max(candidates, key=separation)  # the first of equals
    CHOICES[f"{op}({inner})"][best] += 1
    return evaluate(best, saved, part)


def evaluate(rule: str, saved: dict[str, dict[str, np.ndarray]], part: str = "scores") -> tuple[np.ndarray, float]:
    """(scores of ``part``: the test rows' by default, fit seconds of the members) of ``rule`` on one split;
    KeyError if a member (or that part of it) is missing."""
    m = re.fullmatch(r"(\w+)\((.+)\)", rule)
    if m and m.group(1).startswith("sel"):
        return _select(m.group(1), m.group(2), saved, part)
    if not m or m.group(1) not in OPS:
        arrays = saved[quality.file_name(rule)]
        return arrays[part], float(arrays.get("fit_seconds", np.nan))
    op, tokens = m.group(1), [re.fullmatch(r"(?:([0-9.]+)\*)?(.+)", n.strip()) for n in m.group(2).split(",")]
    members = [saved[quality.file_name(t.group(2))] for t in tokens]  # type: ignore[union-attr]
    weights = np.array([float(t.group(1) or 1.0) for t in tokens])[:, None]  # type: ignore[union-attr]
    fit = float(sum(a.get("fit_seconds", np.nan) for a in members))
    scale = {"z": _iqr_scaled, "zmax": _iqr_scaled, "cmax": _centred,
             "vmax": lambda a, p: _centred(a, p, "validation")}.get(op, lambda a, p: a[p])
    per = weights * np.stack([scale(a, part) for a in members])
    if op in ("sum", "z"):
        return per.sum(axis=0), fit
    if op == "mix":
        return -(np.logaddexp.reduce(-per, axis=0) - np.log(len(per))), fit
    return per.max(axis=0), fit


def merge(have: dict[str, dict[str, np.ndarray]], more: dict[str, dict[str, np.ndarray]], split: tuple[str, int],
          folder: str) -> dict[str, dict[str, np.ndarray]]:
    """One split's saved scores from two folders: only the same split (the same labels) and no name twice."""
    if have:
        y = next(iter(have.values()))["y"]
        if any(not np.array_equal(a["y"], y) for a in more.values()):
            raise SystemExit(f"{split[0]} split {split[1]} in {folder} has other labels than the one already read: "
                             "not the same split (another --test-size or version of the data?)")
        twice = sorted(set(have) & set(more))
        if twice:
            raise SystemExit(f"{split[0]} split {split[1]}: {twice} saved in {folder} and before; keep one")
    return {**have, **more}


def paired(results: dict[str, dict[str, list[tuple[float, float]]]], ref: str, names: list[str]) -> str:
    """The ``--against`` table: per dataset and rule, mean and worst AUROC difference to ``ref``
    over the splits, and the paired t statistic; then the datasets each rule loses or wins beyond noise."""
    from scipy import stats

    others = [n for n in names if n != ref]
    lines = [f"## Paired differences against `{ref}`", "",
             "AUROC of the rule minus AUROC of `" + ref + "` on the same split: mean over the splits (worst split; "
             "paired t). Worse / better: |t| above the two-sided 5 % point of Student's t with n - 1 degrees "
             "of freedom.", "",
             "| dataset | n | " + " | ".join(others) + " |", "|---|---:|" + "---:|" * len(others)]
    worse: dict[str, list[str]] = {n: [] for n in others}
    better: dict[str, list[str]] = {n: [] for n in others}
    for dataset, by_rule in results.items():
        base = np.array([a for a, _ in by_rule[ref]])
        cells = []
        for n in others:
            d = np.array([a for a, _ in by_rule[n]]) - base
            sd = d.std(ddof=1) if len(d) > 1 else 0.0
            t = d.mean() / (sd / np.sqrt(len(d))) if sd > 0 else (0.0 if d.mean() == 0 else np.sign(d.mean()) * np.inf)
            crit = stats.t.ppf(0.975, len(d) - 1) if len(d) > 1 else np.inf
            if t < -crit:
                worse[n].append(dataset)
            elif t > crit:
                better[n].append(dataset)
            cells.append(f"{d.mean():+.4f} ({d.min():+.4f}; {t:+.1f})")
        lines.append(f"| {dataset} | {len(base)} | " + " | ".join(cells) + " |")
    lines.append("| **worse beyond noise** | | " + " | ".join(f"{len(worse[n])}: {', '.join(worse[n]) or '-'}"
                                                          for n in others) + " |")
    lines.append("| **better beyond noise** | | " + " | ".join(str(len(better[n])) for n in others) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", help="what quality.py --save-scores wrote")
    ap.add_argument("rules", nargs="+", help="names or op(a,b,...) with op in " + ", ".join(OPS))
    ap.add_argument("--baselines", default="IsolationForest,KNN (k=5)", help="saved baselines to add as columns")
    ap.add_argument("--out", help="write the Markdown table here too")
    ap.add_argument("--more", action="append", default=[], metavar="FOLDER",
                    help="saved scores of other splits to add (repeatable)")
    ap.add_argument("--against", metavar="RULE", help="add the paired table against this rule (one of the rules)")
    args = ap.parse_args()
    data = load(args.folder)
    for folder in args.more:
        for split, saved in load(folder).items():
            data[split] = merge(data.get(split, {}), saved, split, folder)
    names = list(dict.fromkeys(list(args.rules) + [b for b in args.baselines.split(",") if b]))
    if args.against is not None and args.against not in names:
        raise SystemExit(f"--against {args.against!r} is not one of the rules {names}")
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for (dataset, key), saved in sorted(data.items()):
        y = next(iter(saved.values()))["y"]
        try:
            row = [(n, *evaluate(n, saved)) for n in names]
        except KeyError as e:
            print(f"{dataset} {key}: skipped, {e} not saved")
            continue
        for n, scores, fit in row:
            results.setdefault(dataset, {}).setdefault(n, []).append((float(roc_auc_score(y, scores)), fit))
    if not results:
        raise SystemExit(f"no split holds the saved scores of every rule and baseline ({names}): "
                         "see --baselines")
    seeds = sorted({k for _, k in data})
    folders = ", ".join([args.folder, *args.more])
    text = quality.render(f"Combinations (saved scores of {folders}, splits {','.join(map(str, seeds))})",
                          "AUROC of each rule on the same splits (mean over the splits); fit seconds are the "
                          "members' added up.", results, names)
    # scores saved without their fit seconds (before quality.py saved them): leave those rows out
    text = "\n".join(line for line in text.split("\n") if not (line.startswith("| fit s") and "nan" in line))
    if args.against is not None:
        text += "\n" + paired(results, args.against, names)
    if CHOICES:
        text += "\n## What the `sel` rules chose (splits)\n\n" + "\n".join(
            f"- `{rule}`: " + ", ".join(f"`{c}` {n}" for c, n in chosen.most_common()) for rule, chosen in CHOICES.items()) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
