"""The offline combination tool of the quality study (benchmarks/combine.py) on scores saved the way
``quality.py --save-scores`` saves them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.fixture
def saved(tmp_path):
    import quality

    rng = np.random.RandomState(0)
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    a = 5.0 * y + rng.uniform(size=50)  # a member that separates perfectly
    b = rng.normal(size=50)  # and one that does not
    for key in (0, 1):
        quality._save(str(tmp_path), "tab", key, "a", {"scores": a, "y": y, "calibration": rng.normal(size=30),
                                                       "fit_seconds": np.float64(2.0)})
        quality._save(str(tmp_path), "tab", key, "KNN (k=5)", {"scores": b, "y": y, "fit_seconds": np.float64(0.5)})
    return tmp_path, a, b


def test_the_rules_combine_the_saved_scores_as_documented(saved):
    import combine
    import quality

    folder, a, b = saved
    data = combine.load(str(folder))
    assert sorted(data) == [("tab", 0), ("tab", 1)]
    split = data[("tab", 0)]
    assert np.array_equal(combine.evaluate("a", split)[0], a)
    assert np.array_equal(combine.evaluate("KNN (k=5)", split)[0], b)  # names with odd characters
    total, fit = combine.evaluate("sum(a,KNN (k=5))", split)
    assert np.allclose(total, a + b) and fit == 2.5
    mix = combine.evaluate("mix(a,KNN (k=5))", split)[0]
    assert np.allclose(mix, -np.log((np.exp(-a) + np.exp(-b)) / 2))
    assert np.all(mix <= np.maximum(a, b) + 1e-12) and np.all(mix >= np.minimum(a, b))
    assert np.array_equal(combine.evaluate("max(a,KNN (k=5))", split)[0], np.maximum(a, b))
    for op in ("z", "cmax", "zmax"):
        with pytest.raises(KeyError):  # they need calibration scores, which a baseline does not save
            combine.evaluate(f"{op}(a,KNN (k=5))", split)
    cal = split["a"]["calibration"]
    quality._save(str(folder), "tab", 0, "c", {"scores": 3 * b + 1, "y": split["a"]["y"], "calibration": 3 * cal + 1})
    split = combine.load(str(folder))[("tab", 0)]
    assert np.allclose(combine.evaluate("cmax(a,c)", split)[0],  # each centred: nats still, a shift
                       np.maximum(a - np.median(cal), 3 * b + 1 - np.median(3 * cal + 1)))
    with pytest.raises(KeyError):  # vmax: only where the validation rows' scores were saved
        combine.evaluate("vmax(a,c)", split)
    quality._save(str(folder), "tab", 0, "v", {"scores": b, "y": split["a"]["y"], "validation": cal[:7]})
    quality._save(str(folder), "tab", 0, "w", {"scores": a, "y": split["a"]["y"], "validation": 2 * cal[:7]})
    assert np.allclose(combine.evaluate("vmax(v,w)", combine.load(str(folder))[("tab", 0)])[0],
                       np.maximum(b - np.median(cal[:7]), a - np.median(2 * cal[:7])))
    q1, med, q3 = np.percentile(cal, [25, 50, 75])
    zmax = combine.evaluate("zmax(a,c)", split)[0]  # each scaled: c is 3x a's spread around 3x a's median + 1
    assert np.allclose(zmax, np.maximum((a - med) / (q3 - q1), (b - med) / (q3 - q1)))
    with pytest.raises(KeyError):
        combine.evaluate("sum(a,missing)", split)


def test_the_command_writes_the_table(saved, tmp_path):
    folder, _, _ = saved
    out = tmp_path / "t.md"
    subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a", "sum(a,KNN (k=5))",
                    "--baselines", "KNN (k=5)", "--out", str(out)], check=True, capture_output=True)
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tab |"))
    aurocs = [float(c.strip(" *")) for c in row.split("|")[2:-1]]
    assert len(aurocs) == 3 and aurocs[0] == 1.0 and aurocs[2] < 0.9
    assert "| fit s, mean | 2.0 | 2.5 | 0.5 |" in text


def test_the_background_models_images_are_perturbed_at_the_rate_asked():
    """``ablations.perturbed_images`` (the likelihood-ratio prototype): about ``mu`` of the pixels
    replaced by uniform levels, the input left alone, the same images for the same seed."""
    import ablations

    images = np.full((50, 28, 28), 7, dtype=np.uint8)
    noisy = ablations.perturbed_images(images, 0.2, seed=3)
    assert noisy.dtype == np.uint8 and noisy.shape == images.shape and (images == 7).all()
    changed = (noisy != 7).mean()  # a replaced pixel keeps 7 with probability 1/256
    assert 0.19 < changed < 0.21
    assert noisy[noisy != 7].min() < 40 and noisy[noisy != 7].max() > 215  # uniform over the levels
    assert np.array_equal(noisy, ablations.perturbed_images(images, 0.2, seed=3))
    assert np.array_equal(ablations.perturbed_images(images, 0.0, seed=3), images)
    for bad, match in ((images / 255.0, "uint8"), (images, 1.5), (images, -0.1), (images, float("nan"))):
        with pytest.raises(ValueError, match=match if isinstance(match, str) else "probability"):
            ablations.perturbed_images(bad, 0.2 if isinstance(match, str) else match, seed=0)


def test_the_paired_table_counts_a_loss_only_when_the_splits_agree():
    """``--against``: a rule 0.01 below the reference on every split is worse beyond noise; one
    that loses 0.03 on one split and wins on the others is not."""
    import combine

    def splits(*aurocs):
        return [(a, 1.0) for a in aurocs]

    results = {"steady": {"ref": splits(0.90, 0.92, 0.91, 0.93), "lower": splits(0.89, 0.91, 0.90, 0.92),
                          "noisy": splits(0.87, 0.93, 0.92, 0.94)},
               "other": {"ref": splits(0.80, 0.81, 0.82, 0.83), "lower": splits(0.85, 0.86, 0.88, 0.87),
                         "noisy": splits(0.80, 0.81, 0.82, 0.83)}}
    text = combine.paired(results, "ref", ["ref", "lower", "noisy"])
    steady = next(line for line in text.splitlines() if line.startswith("| steady |"))
    assert "-0.0100 (-0.0100;" in steady and "0.0000 (-0.0300;" in steady
    assert "| **worse beyond noise** | | 1: steady | 0: - |" in text
    assert "| **better beyond noise** | | 1 | 0 |" in text


def test_more_splits_and_against_on_the_command_line(saved, tmp_path):
    import quality

    folder, a, b = saved
    more = tmp_path / "more"
    rng = np.random.RandomState(1)
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    for key in (2, 3):
        quality._save(str(more), "tab", key, "a", {"scores": 5.0 * y + rng.uniform(size=50), "y": y})
        quality._save(str(more), "tab", key, "KNN (k=5)", {"scores": rng.normal(size=50), "y": y})
    r = subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a", "--more", str(more),
                        "--baselines", "KNN (k=5)", "--against", "a"], check=True, capture_output=True, text=True)
    assert "splits 0,1,2,3" in r.stdout and "## Paired differences against `a`" in r.stdout
    assert "| tab | 4 |" in r.stdout and "1: tab" in r.stdout  # KNN below a perfect member on every split
    bad = subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a", "--against", "b"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "--against 'b' is not one of the rules" in bad.stderr
    bad = subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a"], capture_output=True, text=True)
    assert bad.returncode != 0 and "no split holds the saved scores of every rule" in bad.stderr  # no IsolationForest
    clash = tmp_path / "clash"  # split 0 again, with other labels: refused, not mixed
    quality._save(str(clash), "tab", 0, "b", {"scores": a, "y": y[::-1].copy()})
    bad = subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a", "--more", str(clash),
                          "--baselines", ""], capture_output=True, text=True)
    assert bad.returncode != 0 and "tab split 0 in" in bad.stderr and "has other labels" in bad.stderr
    twice = tmp_path / "twice"
    quality._save(str(twice), "tab", 0, "a", {"scores": a, "y": np.load(folder / "tab__0__a.npz")["y"]})
    bad = subprocess.run([sys.executable, str(BENCH / "combine.py"), str(folder), "a", "--more", str(twice),
                          "--baselines", ""], capture_output=True, text=True)
    assert bad.returncode != 0 and "['a'] saved in" in bad.stderr


def test_the_pair_taken_apart_adds_up_to_the_detectors_score(tmp_path):
    """benchmarks/members.py: the two networks' scores it saves add up to the default's own score,
    each name is the network it says, the fit's rows are rebuilt as the fit drew them, and its
    variants are what they say (on a scikit-learn table, so the default run has the data)."""
    import combine
    import members
    import quality
    import torch

    fitted = members.fit_default("sk_breast_cancer", 0)
    det, s, _ = fitted
    out = members.one_split("sk_breast_cancer", 0, fitted)
    short, long = det.model_.members
    assert getattr(short, "prior_mu", None) is None and long.prior_mu is not None  # the fit's own networks
    test = torch.from_numpy(det.preprocess(s["ours_test"]))
    assert np.allclose(out["short"]["scores"], members._elbo(short, test, det.noise_), rtol=1e-6, atol=1e-5)
    assert np.allclose(out["long"]["scores"], members._elbo(long, test, det.noise_), rtol=1e-6, atol=1e-5)
    x = torch.from_numpy(det.preprocess(s["ours_train"]))
    rows, codes = members.fit_split(det, len(x))
    assert sorted(np.concatenate(list(rows.values()))) == list(range(len(x)))
    assert [len(rows[k]) for k in ("cal", "val", "train")] == [
        det.fit_info_["n_calibration"], det.fit_info_["n_validation"], det.fit_info_["n_train"]]
    with torch.no_grad():  # the long network's prior is the codes of exactly these training rows
        mu, _ = long.encode(x[torch.from_numpy(rows["train"])][torch.from_numpy(codes)])
    assert mu.shape == long.prior_mu.shape and torch.allclose(mu, long.prior_mu, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # short_agg: the short network under the codes of the same rows, its own encoder's
        s_mu, s_logvar = short.encode(x[torch.from_numpy(rows["train"])][torch.from_numpy(codes)])
    expected = members._elbo(members._with_prior(short, s_mu, s_logvar), test, det.noise_)
    assert np.allclose(out["short_agg"]["scores"], expected, rtol=1e-6, atol=1e-5)
    default = out["default"]["scores"]
    assert np.allclose(out["short"]["scores"] + out["long"]["scores"], default, rtol=1e-5, atol=1e-4)
    assert np.allclose(out["short"]["calibration"] + out["long"]["calibration"], out["default"]["calibration"],
                       rtol=1e-5, atol=1e-4)
    assert np.array_equal(out["half_short"]["scores"], 0.5 * out["short"]["scores"])
    variants = ["long", *(f"long_s{c:g}" for c in members.SCALES)]
    assert any(np.array_equal(out["long_sel"]["scores"], out[n]["scores"]) for n in variants)
    # a wider kernel (bandwidth) of the same codes: a smaller KL for a row far from them all, so not the same scores
    for n in variants[1:]:
        assert not np.allclose(out[n]["scores"], out["long"]["scores"])
    assert not np.allclose(out["short_agg"]["scores"], out["short"]["scores"])
    for name, arrays in out.items():
        quality._save(str(tmp_path), "sk_breast_cancer", 0, name, arrays)
    split = combine.load(str(tmp_path))[("sk_breast_cancer", 0)]
    assert np.allclose(combine.evaluate("sum(short,long)", split)[0], default, rtol=1e-5, atol=1e-4)


def test_members_refuses_an_unknown_table_before_fitting(tmp_path):
    run = subprocess.run([sys.executable, str(BENCH / "members.py"), "--datasets", "sk_wine_0,fashion-mnist",
                          "--save-scores", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "fashion-mnist" in run.stderr and not list(tmp_path.iterdir())


def _fits_under(prototypes: dict) -> tuple:
    """(breast cancer's first 300 rows, the default fitted on them, {name: the same fit under the context
    manager ``prototypes[name]()``}), with the patch checked to hold inside the block only and the
    early-stopped network of each fit checked to be the default's bit for bit."""
    import torch
    from sklearn.datasets import load_breast_cancer

    from anomaly_vae import VAEAnomalyDetector, detector

    x = load_breast_cancer().data[:300]
    plain = VAEAnomalyDetector(epochs=4, random_state=0).fit(x)
    train = detector.train
    fitted = {}
    for name, prototype in prototypes.items():
        with prototype():
            assert detector.train is not train
            fitted[name] = VAEAnomalyDetector(epochs=4, random_state=0).fit(x)
        assert detector.train is train
        short = fitted[name].model_.members[0].state_dict()
        for key, value in plain.model_.members[0].state_dict().items():
            if not key.startswith("second."):  # the short network holds its pair: the long one, checked apart
                assert torch.equal(value, short[key]), (name, key)
    return x, plain, fitted


def test_the_vampprior_prototype_trains_the_long_network_only_and_leaves_the_package_as_it_was():
    """benchmarks/vampprior.py (``_vamp``, study section 25): the early-stopped network is the default's
    bit for bit, the long one is trained otherwise, scored under the learned prior's K codes with
    ``score="pseudo"``, and nothing of the prototype is left on the network or the package after it."""
    import torch
    import vampprior

    x, plain, fitted = _fits_under({score: (lambda s=score: vampprior.vamp_prior({"k": 20, "score": s}))
                                    for score in ("codes", "pseudo")})
    (_, p_long), (_, c_long), (_, s_long) = (d.model_.members for d in (plain, *fitted.values()))
    assert not torch.equal(p_long.to_mu.weight, c_long.to_mu.weight)
    assert torch.equal(c_long.to_mu.weight, s_long.to_mu.weight)  # the same training; only the prior scored differs
    assert c_long.prior_mu.shape[0] == p_long.prior_mu.shape[0] > 20 and s_long.prior_mu.shape[0] == 20
    for net in (c_long, s_long):
        assert "forward" not in vars(net) and "set_aggregate_prior" not in vars(net)
        assert not any("vamp" in name for name in net.state_dict())
    assert np.isfinite(fitted["pseudo"].anomaly_score(x[:50])).all()
    assert not np.allclose(fitted["pseudo"].anomaly_score(x[:50]), fitted["codes"].anomaly_score(x[:50]))


def test_the_noisy_inputs_prototype_perturbs_the_long_runs_numeric_columns_only():
    """benchmarks/noisy_inputs.py (``_noise``, study section 26): the early-stopped network is the
    default's bit for bit, the long one trains otherwise in each mode, the one-hot groups get no noise,
    and nothing of the prototype is left on the network or the package after it."""
    import noisy_inputs
    import pandas as pd
    import torch

    from anomaly_vae import VAEAnomalyDetector

    x, plain, fitted = _fits_under({mode: (lambda m=mode: noisy_inputs.noisy_inputs({"mode": m, "sigma": 0.3}))
                                    for mode in noisy_inputs.MODES})
    (_, p_long), (_, a_long), (_, d_long) = (d.model_.members for d in (plain, *fitted.values()))
    weights = [net.to_mu.weight for net in (p_long, a_long, d_long)]
    assert not any(torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1:])
    for net in (a_long, d_long):
        assert "forward" not in vars(net)
    for d in fitted.values():
        assert np.isfinite(d.anomaly_score(x[:50])).all()

    frame = pd.DataFrame({"a": x[:, 0], "colour": np.where(x[:, 1] > 20, "red", "blue"), "b": x[:, 2]})
    net = VAEAnomalyDetector(epochs=1, random_state=0).fit(frame).model_
    (start, width), = net.categorical
    mask = noisy_inputs.noise_mask(net)
    assert not mask[start:start + width].any() and int(mask.sum()) == net.n_features - width
    with pytest.raises(SystemExit, match="mode"):
        with noisy_inputs.noisy_inputs({"mode": "blur"}):
            pass


def test_weights_and_the_sel_rule_choose_by_the_synthetic_rows_only(saved):
    """combine.py: ``2*name`` weighs a member, and ``sel_{kind}(a|b)`` takes, on each split, the candidate
    that best separates the held-out normal rows from the synthetic ones of that kind (``sel``: over all
    saved kinds), never reading the test labels (study section 28)."""
    import combine
    import quality

    folder, a, b = saved
    rng = np.random.RandomState(1)
    y = np.r_[np.zeros(40, int), np.ones(10, int)]
    normal = rng.normal(size=20)
    # "good" separates the perm rows and not the test labels; "bad" the other way round
    for name, scores, perm, swap in (("good", b, normal + 10.0, normal), ("bad", a, normal, normal + 0.5)):
        quality._save(str(folder), "tab", 0, name, {"scores": scores, "y": y, "validation": normal[:5],
                                                   "calibration": normal[5:], "synthetic_perm": perm,
                                                   "synthetic_swap": swap})
    split = combine.load(str(folder))[("tab", 0)]
    assert np.allclose(combine.evaluate("sum(good,2*bad)", split)[0], b + 2 * a)
    assert np.allclose(combine.evaluate("cmax(0.5*good,bad)", split, "synthetic_perm")[0],
                       np.maximum(0.5 * (normal + 10.0 - np.median(normal[5:])), normal - np.median(normal[5:])))
    combine.CHOICES.clear()
    assert np.array_equal(combine.evaluate("sel_perm(bad|good)", split)[0], b)  # worse on the test labels, chosen
    assert np.array_equal(combine.evaluate("sel_swap(good|bad)", split)[0], a)
    assert np.array_equal(combine.evaluate("sel(bad|good)", split)[0], b)  # mean over kinds: 1.0 and 0.5 vs 0.5 and ~0.6
    assert dict(combine.CHOICES["sel_perm(bad|good)"]) == {"good": 1}
    with pytest.raises(KeyError):  # a baseline has no synthetic rows' scores
        combine.evaluate("sel_perm(good|KNN (k=5))", split)


def test_the_synthetic_rows_break_what_they_say_and_keep_the_rows_types():
    """members.synthetic_rows: ``perm`` keeps every column's values and breaks their pairing, ``swap``
    changes one column of each row to another held-out row's value, ``noise`` moves the numeric columns
    only; a DataFrame stays one (its string columns strings), the same seed gives the same rows."""
    import members
    import pandas as pd
    from sklearn.datasets import load_wine

    x = load_wine().data
    rows = np.arange(10, 60)
    out = members.synthetic_rows(x, rows, seed=0, cap=200)
    base = np.concatenate([x[rows]] * 4)
    assert {k: v.shape for k, v in out.items()} == {k: (200, x.shape[1]) for k in ("perm", "swap", "noise")}
    for j in range(x.shape[1]):
        assert sorted(out["perm"][:, j]) == sorted(base[:, j])
    assert (out["perm"] != base).any(axis=1).mean() > 0.9
    changed = (out["swap"] != base).sum(axis=1)
    assert changed.max() == 1 and changed.mean() > 0.8
    for j in range(x.shape[1]):  # a swapped value is one of the held-out rows' values of its column
        assert np.isin(out["swap"][:, j], x[rows, j]).all()
    assert np.abs(out["noise"] - base).mean() > 0
    assert all(np.array_equal(v, members.synthetic_rows(x, rows, seed=0, cap=200)[k]) for k, v in out.items())
    frame = pd.DataFrame({"a": x[:, 0], "colour": np.where(x[:, 1] > 2, "red", "blue")})
    got = members.synthetic_rows(frame, rows, seed=0, cap=100)
    assert all(isinstance(v, pd.DataFrame) and list(v.columns) == ["a", "colour"] for v in got.values())
    assert set(got["noise"]["colour"]) <= {"red", "blue"} and not np.allclose(got["noise"]["a"], frame["a"].iloc[rows].tolist() * 2)


@pytest.mark.parametrize("kind", ["quantile", "quantile_knots", "kde"])
def test_the_marginal_maps_are_monotone_normal_and_their_jacobian_is_their_slope(kind):
    """``ablations.quantile_data`` and ``kde_data`` (section 29): each numeric column's map is
    increasing, sends the training values to about N(0, 1), keeps a value far past the training range
    far (and farther the further it is), leaves a column with too few distinct values as it was and a
    string column alone; the returned term is minus the summed log slope of the maps at the test rows
    (checked against finite differences), so adding it to a score of the mapped row gives the row's
    score in its own units."""
    import ablations
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[:, [0, 3, 21]]  # radius, area (long right tail), worst texture
    train = pd.DataFrame({"radius": x[:, 0], "area": x[:, 1], "texture": x[:, 2], "flag": (x[:, 0] > 14).astype(float),
                          "colour": np.where(x[:, 2] > 25, "red", "blue")})
    test = train.iloc[::7].copy()
    test.loc[test.index[0], "area"] = 1e6  # far past the training range
    test.loc[test.index[1], "area"] = 2e6
    run = {"quantile": lambda a, b: ablations.quantile_data(3, a, b),
           "quantile_knots": lambda a, b: ablations.quantile_data([3, 50], a, b),
           "kde": lambda a, b: ablations.kde_data(3, a, b)}[kind]
    tr, te, jac = run(train, test)
    assert list(tr.columns) == list(train.columns) and (tr["flag"] == train["flag"]).all() and (te["colour"] == test["colour"]).all()
    for c in ("radius", "area", "texture"):
        order = np.argsort(train[c].to_numpy())
        assert np.all(np.diff(tr[c].to_numpy()[order]) >= 0)  # increasing
        assert abs(tr[c].mean()) < 0.1 and 0.85 < tr[c].std() < 1.1  # about N(0, 1) on the training rows
    far = te["area"].to_numpy()[:2]
    assert 10 < far[0] < far[1]
    # the Jacobian term, a column at a time: minus the log slope, by finite differences (a piecewise-
    # linear map's slope at a knot is its right segment's, at the last knot the last segment's; the
    # steps are below the gaps between training values), past the range too, and 0 for a missing value
    for c, e in {"radius": 1e-5, "area": 1e-3, "texture": 1e-5}.items():
        top = train[c].max()
        x = np.r_[test[c].to_numpy()[2:12], top, 1.5 * top, 10 * top, 100 * top, np.nan]
        one = train[[c]]
        at = run(one, pd.DataFrame({c: x}))
        ahead = run(one, pd.DataFrame({c: x + e}))[1][c].to_numpy()
        behind = run(one, pd.DataFrame({c: x - e}))[1][c].to_numpy()
        slope = (ahead - at[1][c].to_numpy()) / e
        slope[10] = (at[1][c].to_numpy()[10] - behind[10]) / e  # the training maximum: the segment below it
        assert np.allclose(at[2][:-1], -np.log(slope[:-1]), rtol=0, atol=1e-3), (c, at[2], -np.log(slope))
        assert at[2][-1] == 0 and np.isnan(at[1][c].to_numpy()[-1])
        assert np.isclose(at[2][13], at[2][12])  # far past the range one slope: far values keep their distance
        assert 0 < at[1][c].to_numpy()[11] < at[1][c].to_numpy()[12] < at[1][c].to_numpy()[13]
    # a two-valued column is a point mass on each knot: both values get the one segment's slope
    _, te2, jac2 = ablations.quantile_data(2, train[["flag"]], pd.DataFrame({"flag": [0.0, 1.0]}))
    assert te2["flag"].iloc[0] < te2["flag"].iloc[1] and jac2[0] == jac2[1]


def test_the_light_tails_rule_leaves_heavy_tailed_and_spiky_columns_standardised():
    """``kde_data([min_distinct, max_heavy], ...)`` (section 29's ``kde_light3_jac``): a column whose
    ``heavy_tail_ratio`` is above ``max_heavy`` (a lognormal's 4, a normal's 1; a point mass over a
    quarter of the rows: infinite) is left as it was and adds nothing to the Jacobian term."""
    import ablations
    import pandas as pd
    from sklearn.datasets import load_breast_cancer

    radius = load_breast_cancer().data[:, 0]
    assert ablations.heavy_tail_ratio(radius) < 3
    train = pd.DataFrame({"radius": radius, "tail": np.exp(1.5 * (radius - radius.mean()) / radius.std()) ** 2,
                          "spike": np.where(np.arange(len(radius)) % 5 == 0, radius, 0.0)})
    assert ablations.heavy_tail_ratio(train["tail"].to_numpy()) > 3 and ablations.heavy_tail_ratio(train["spike"].to_numpy()) == np.inf
    test = train.iloc[::5]
    tr, te, jac = ablations.kde_data([2, 3], train, test)
    assert (tr["tail"] == train["tail"]).all() and (tr["spike"] == train["spike"]).all()
    assert not np.allclose(tr["radius"], train["radius"])
    assert np.allclose(jac, ablations.kde_data(2, train[["radius"]], test[["radius"]])[2])
