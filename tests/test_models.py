import numpy as np
import pandas as pd
import pytest
import torch

from anomaly_vae import ConvVAE, DenseVAE, VAEAnomalyDetector
from anomaly_vae.models import build_model, default_network


@pytest.mark.parametrize("c,h,w", [(1, 8, 8), (1, 28, 28), (3, 28, 28), (1, 64, 64), (3, 64, 64), (3, 9, 13), (1, 31, 17)])
def test_conv_vae_round_trips_any_size(c, h, w):
    m = ConvVAE(c, h, w, latent_dim=4)
    x = torch.rand(2, c, h, w)
    mu, logvar = m.encode(x)
    assert mu.shape == logvar.shape == (2, 4)
    z = m.reparameterize(mu, logvar, torch.zeros(2, 4))
    assert torch.equal(z, mu)  # zero noise gives the mean
    assert m.decode(z).shape == (2, c, h, w)
    assert m.decode(torch.zeros(5, 2, 4)).shape == (5, 2, c, h, w)  # leading sample dimension


def test_dense_vae_shapes_and_rebuild_from_config():
    m = DenseVAE(10, hidden=(16, 8), latent_dim=3, likelihood="gaussian-shared")
    x = torch.randn(4, 10)
    mu, _ = m.encode(x)
    assert m.decode(mu).shape == (4, 10)
    clone = build_model(m.config())
    clone.load_state_dict(m.state_dict())
    assert torch.equal(clone.decode(mu), m.decode(mu))


@pytest.mark.parametrize("kwargs,match", [
    ({"in_channels": 2, "height": 28, "width": 28}, "in_channels must be 1 or 3"),
    ({"in_channels": 1, "height": 7, "width": 28}, "at least 8x8"),
    ({"in_channels": 1, "height": 28, "width": 28, "latent_dim": 0}, "latent_dim must be >= 1"),
])
def test_conv_vae_rejects_bad_shapes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvVAE(**kwargs)


def test_detector_on_64x64_colour_images():
    rng = np.random.default_rng(0)
    # smooth colour blobs: a real-looking but synthetic structure is enough to check the plumbing
    yy, xx = np.mgrid[0:64, 0:64]
    centres = rng.uniform(16, 48, size=(60, 2))
    imgs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 80.0)
    imgs = np.stack([imgs, imgs * 0.5, 1 - imgs], axis=-1).astype(np.float32)  # (N, 64, 64, 3)
    det = VAEAnomalyDetector(epochs=1, alpha=0.2, random_state=0).fit(imgs)
    assert det.model_.config()["height"] == 64 and det.model_.in_channels == 3
    assert det.anomaly_score(imgs[:3]).shape == (3,)


def test_dense_model_can_be_forced_on_images(fashion_sample):
    images, labels = fashion_sample
    det = VAEAnomalyDetector(model="dense", epochs=1, alpha=0.2, random_state=0).fit(images[labels == 0])
    assert det.model_.kind == "dense" and det.model_.n_features == 784
    assert det.anomaly_score(images[:3]).shape == (3,)


def test_conv_model_refuses_tables():
    from anomaly_vae import InputError

    with pytest.raises(InputError, match="model='conv' needs images"):
        VAEAnomalyDetector(model="conv").fit(np.zeros((20, 5)))


def test_the_vae_pass_is_what_training_and_scoring_both_compute():
    """One pass (``model(x, eps)``): training's loss terms and the scores are read off it, so that
    -ELBO from training (beta=1) with the same noise equals the "elbo" score of one draw, and the
    "reconstruction" score is the pass at the posterior mean."""
    from anomaly_vae.objectives import kl_standard_normal, log_normal, log_standard_normal
    from anomaly_vae.scoring import score_samples
    from anomaly_vae.training import TrainConfig, loss_terms

    torch.manual_seed(0)
    m = DenseVAE(6, hidden=(8,), latent_dim=3).eval()
    x = torch.randn(5, 6)
    eps = torch.randn(1, 3)
    with torch.no_grad():
        p = m(x, eps.expand(5, 3))
        mu, logvar = m.encode(x)
        assert torch.equal(p.mu, mu) and torch.equal(p.logvar, logvar)
        assert torch.equal(p.z, mu + torch.exp(0.5 * logvar) * eps)
        by_hand = m.log_likelihood(x, m.decode(p.z))
        assert torch.equal(p.log_px_elements, by_hand) and torch.equal(p.log_px, by_hand.sum(dim=1))
        assert torch.equal(p.log_pz, log_standard_normal(p.z))
        assert torch.equal(p.log_qz, log_normal(p.z, mu, 0.5 * logvar).sum(dim=-1))
        assert torch.equal(p.kl, kl_standard_normal(mu, logvar))
        assert torch.equal(p.log_weights, p.log_px + p.log_pz - p.log_qz)
        terms = loss_terms(m, x, eps.expand(5, 3), TrainConfig(), beta=1.0)
        elbo = score_samples(m, x, "elbo", eps)
        assert np.allclose(elbo.mean(), float(terms["loss"]), rtol=1e-5)
        recon = score_samples(m, x, "reconstruction", eps)
        assert np.allclose(recon, -m(x).log_px.double().numpy(), rtol=1e-6)
        assert torch.equal(m(x).z, mu)  # no noise: the posterior mean


def test_the_vae_pass_with_k_draws_per_row_has_a_sample_dimension():
    m = ConvVAE(1, 12, 10, latent_dim=4).eval()
    x = torch.rand(3, 1, 12, 10)
    with torch.no_grad():
        p = m(x, torch.randn(7, 1, 4))
    assert p.z.shape == (7, 3, 4)
    assert p.log_px_elements.shape == (7, 3, 1, 12, 10)
    assert p.log_px.shape == p.log_pz.shape == p.log_qz.shape == (7, 3)
    assert p.kl.shape == (3,)


def test_a_categorical_column_has_a_proper_categorical_likelihood(mixed):
    """Each one-hot group is one categorical variable: over its categories p(category | z) sums to
    1, a column's per-element terms sum to its log p, and even a category never seen in training
    costs at most log(width / CATEGORY_FLOOR) nats (a Gaussian on one-hot features charged it
    thousands: a rare value of a column unrelated to anomalies drowned the others)."""
    import math

    from anomaly_vae.models import CATEGORY_FLOOR

    det, rows = mixed
    groups = det.preprocessor_.categorical_groups()
    assert groups == det.model_.categorical and len(groups) == 1
    a, w = groups[0]
    x = torch.from_numpy(det.preprocess(rows.iloc[:5]))
    with torch.no_grad():
        params = det.model_.decode(det.model_.encode(x)[0])
        log_p = []
        for c in range(w):  # the same rows with each category in turn
            xc = x.clone()
            xc[:, a : a + w] = 0.0
            xc[:, a + c] = 1.0
            el = det.model_.log_likelihood(xc, params)
            assert torch.all(el[:, a : a + w][xc[:, a : a + w] == 0] == 0)  # only the observed position
            log_p.append(el[:, a : a + w].sum(dim=1))
    log_p = torch.stack(log_p)  # (w, 5)
    assert torch.allclose(torch.logsumexp(log_p, dim=0), torch.zeros(5), atol=1e-5)
    assert (-log_p).max() <= math.log(w / CATEGORY_FLOOR) + 1e-4
    unseen = rows.iloc[:5].copy()
    unseen["site"] = "a place never seen"
    cost = det.feature_scores(unseen)["site"].to_numpy()
    assert np.all(cost > 0) and np.all(cost <= math.log(w / CATEGORY_FLOOR) + 1e-4)
    # the decoder's mean of a group is its category probabilities
    means = det.decode(np.zeros((3, det.model_.latent_dim)))[:, a : a + w]
    assert np.allclose(means.sum(axis=1), 1.0, atol=1e-5) and (means > 0).all()


def test_categorical_groups_must_fit_the_features():
    from anomaly_vae.models import DenseVAE

    for bad in ([(0, 0)], [(3, 3)], [(0, 3), (2, 2)]):
        with pytest.raises(ValueError, match="categorical groups"):
            DenseVAE(5, categorical=bad)


def test_the_marginal_floor_is_the_stated_mixture_and_bounds_a_sharp_column():
    """marginal_floor=eps: each numeric feature's log p is log((1 - eps) N(x; loc, sigma) + eps N(x; 0, 1)),
    exactly (against float64), so a feature the decoder predicts sharply (sigma at its floor) costs
    about -log(eps) + x^2 / 2 nats instead of x^2 / (2 sigma^2); categorical groups are untouched."""
    import math

    torch.manual_seed(0)
    plain = DenseVAE(6, latent_dim=2, categorical=[(3, 3)])
    floored = DenseVAE(6, latent_dim=2, categorical=[(3, 3)], marginal_floor=1e-3)
    floored.load_state_dict(plain.state_dict())  # the floor adds no weights
    x = torch.tensor([[0.1, -2.0, 40.0, 0.0, 1.0, 0.0], [3.0, 0.0, -1e5, 1.0, 0.0, 0.0]])
    params = plain.decode(torch.zeros(2, 2))
    with torch.no_grad():
        a, b = plain.log_likelihood(x, params).double(), floored.log_likelihood(x, params).double()
    xs = x.double()
    expected = np.logaddexp(a.numpy() + math.log1p(-1e-3), math.log(1e-3) - 0.5 * math.log(2 * math.pi) - 0.5 * xs.numpy() ** 2)
    np.testing.assert_allclose(b[:, :3].numpy(), expected[:, :3], rtol=1e-5)
    assert torch.equal(a[:, 3:], b[:, 3:])  # the one-hot group keeps its categorical likelihood
    assert (b[:, :3] >= a[:, :3] + math.log1p(-1e-3) - 1e-5).all()  # never much below the plain likelihood
    # a sharp column (sigma at its floor of 0.01) and a value 40 standard units away
    sharp = DenseVAE(1, latent_dim=1, min_scale=0.01, marginal_floor=1e-3)
    with torch.no_grad():
        sharp.likelihood.raw_scale.fill_(-30.0)  # sigma = 0.01 + softplus(-30): the floor
        cost = -sharp.log_likelihood(torch.tensor([[40.0]]), torch.zeros(1, 1)).item()
    assert cost == pytest.approx(-math.log(1e-3) + 0.5 * math.log(2 * math.pi) + 800.0, rel=1e-6)
    assert build_model(floored.config()).marginal_floor == 1e-3 and "marginal_floor" not in plain.config()


@pytest.mark.parametrize("eps", [-0.1, 1.0, 2, float("nan"), "0.001", True, np.array(1e-3)])
def test_the_marginal_floor_must_be_a_number_in_0_1(eps):
    with pytest.raises(ValueError, match="marginal_floor must be a number in"):
        DenseVAE(3, marginal_floor=eps)
    with pytest.raises(ValueError, match="marginal_floor must be 'auto' or a number in"):  # before any work
        VAEAnomalyDetector(marginal_floor=eps, epochs=1).fit(np.random.RandomState(0).normal(size=(60, 3)))
    with pytest.raises(ValueError, match="marginal_floor must be 'auto' or a number in"):
        VAEAnomalyDetector(marginal_floor=None, epochs=1).fit(np.random.RandomState(0).normal(size=(60, 3)))


def test_the_marginal_floor_is_refused_where_it_means_nothing(fashion_sample):
    with pytest.raises(ValueError, match="bernoulli"):
        DenseVAE(3, likelihood="bernoulli", marginal_floor=1e-3)
    for model in ("auto", "dense"):  # pixels in [0, 1] are not standardised: N(0, 1) is not their marginal
        with pytest.raises(ValueError, match="marginal_floor applies to tables"):
            VAEAnomalyDetector(model=model, marginal_floor=1e-3, epochs=1, alpha=0.1).fit(fashion_sample[0][:100])
    with pytest.raises(ValueError, match="dense networks"):
        default_network("conv", (1, 8, 8), input_kind="table", marginal_floor=1e-3)


def test_a_column_constant_in_training_does_not_drown_the_score_with_a_floor(cancer):
    """The failure the floor is for: a column constant in training (sigma driven to its floor) and
    a normal row with another value there. Without the floor that one column costs ~x^2 / (2 * 0.01^2)
    nats and outranks every real anomaly; with it, about -log(eps) + x^2 / 2."""
    from sklearn.metrics import roc_auc_score

    train, rest, anomalous = cancer
    train = train.assign(flag=0.0)
    rest = rest.assign(flag=0.0)
    rest.iloc[:10, rest.columns.get_loc("flag")] = 3.0  # normal rows, one odd value in the constant column
    test = pd.concat([rest, anomalous.assign(flag=0.0)])
    y = np.r_[np.zeros(len(rest)), np.ones(len(anomalous))]
    kw = dict(epochs=30, alpha=0.05, random_state=0, pair=False)  # one network: the bound is per network
    plain = VAEAnomalyDetector(marginal_floor=0.0, **kw).fit(train)
    floored = VAEAnomalyDetector(marginal_floor=1e-3, **kw).fit(train)
    plain_cost = plain.feature_scores(rest.iloc[:10])["flag"].to_numpy()
    floor_cost = floored.feature_scores(rest.iloc[:10])["flag"].to_numpy()
    assert plain_cost.min() > 1e4  # sigma at 0.01: ~45,000 nats for one value
    assert floor_cost.max() < -np.log(1e-3) + 0.5 * np.log(2 * np.pi) + 4.5 + 1e-3
    assert roc_auc_score(y, floored.anomaly_score(test)) > roc_auc_score(y, plain.anomaly_score(test)) + 0.02


# -- the aggregate prior and the pair ---------------------------------------------------------------
def test_the_aggregate_prior_is_the_mixture_of_the_codes_posteriors():
    """log p(z) = log (1/M) sum_m N(z; mu_m, exp(logvar_m)), against a float64 sum over components
    (the package computes it from matrix products), including narrow components and far z."""
    from anomaly_vae.objectives import log_normal_mixture

    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(50, 4, generator=g) * 2, torch.rand(50, 4, generator=g) * 8 - 11  # sigma 0.004..0.2
    z = torch.cat([torch.randn(3, 7, 4, generator=g) * 2, mu[:1].expand(1, 7, 4) + 1e-3, torch.full((1, 7, 4), 40.0)])
    zd, md, lv = z.double().unsqueeze(-2), mu.double(), logvar.double()
    comp = (-0.5 * (np.log(2 * np.pi) + lv + (zd - md) ** 2 / lv.exp())).sum(-1)
    expected = torch.logsumexp(comp, dim=-1) - np.log(50)
    got = log_normal_mixture(z, mu, logvar)
    assert got.shape == (5, 7) and got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, rtol=1e-6, atol=1e-3)


def test_a_network_with_an_aggregate_prior_scores_the_elbo_under_that_prior():
    torch.manual_seed(0)
    net = DenseVAE(5, hidden=(8,), latent_dim=3)
    x = torch.randn(6, 5)
    with torch.no_grad():
        codes = net.encode(torch.randn(20, 5))
    net.set_aggregate_prior(*codes)
    eps = torch.randn(4, 1, 3)
    p = net(x, eps)
    from anomaly_vae.objectives import log_normal_mixture

    assert torch.allclose(p.log_pz, log_normal_mixture(p.z, *codes))
    assert torch.allclose(p.kl, (p.log_qz - p.log_pz).mean(0))
    assert torch.allclose(p.log_weights, p.log_px + p.log_pz - p.log_qz)
    assert net.config()["aggregate_prior"] == 20 and "aggregate_prior" not in DenseVAE(5).config()
    rebuilt = build_model(net.config())
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt(x, eps).kl, p.kl)


@pytest.mark.parametrize("mu,logvar,match", [
    (torch.zeros(4, 2), torch.zeros(4, 2), r"codes \(M >= 1, 3\)"),
    (torch.zeros(0, 3), torch.zeros(0, 3), r"codes \(M >= 1, 3\)"),
    (torch.zeros(4, 3), torch.zeros(5, 3), r"codes \(M >= 1, 3\)"),
    (torch.full((4, 3), float("nan")), torch.zeros(4, 3), "must be finite"),
])
def test_aggregate_prior_codes_are_checked(mu, logvar, match):
    with pytest.raises(ValueError, match=match):
        DenseVAE(5, latent_dim=3).set_aggregate_prior(mu, logvar)


@pytest.mark.parametrize("bad", [-1, 2.0, True, "10"])
def test_aggregate_prior_size_must_be_a_count(bad):
    with pytest.raises(ValueError, match="aggregate_prior must be an integer"):
        DenseVAE(5, aggregate_prior=bad)


def test_a_pair_is_one_architecture_twice():
    first, second = DenseVAE(5, latent_dim=3), DenseVAE(5, latent_dim=3, aggregate_prior=7)
    first.attach_pair(second)
    assert first.members == (first, second) and second.members == (second,)
    cfg = first.config()
    assert cfg["pair"] == {**DenseVAE(5, latent_dim=3).config(), "aggregate_prior": 7}
    rebuilt = build_model(cfg)
    assert rebuilt.config() == cfg and set(rebuilt.state_dict()) == set(first.state_dict())
    for other in (DenseVAE(5, latent_dim=2), DenseVAE(5, latent_dim=3, marginal_floor=0.01),
                  ConvVAE(1, 8, 8, latent_dim=3)):
        with pytest.raises(ValueError, match="a pair is two networks of the same architecture"):
            DenseVAE(5, latent_dim=3).attach_pair(other)
    with pytest.raises(ValueError, match="a pair is two networks"):  # the first network has the plain prior
        DenseVAE(5, latent_dim=3, aggregate_prior=2).attach_pair(DenseVAE(5, latent_dim=3))
    wide = DenseVAE(5, hidden=(16, 8), latent_dim=3, aggregate_prior=7)  # its own layers: allowed
    first = DenseVAE(5, latent_dim=3)
    first.attach_pair(wide)
    rebuilt = build_model(first.config())
    assert rebuilt.config()["pair"]["hidden"] == [16, 8] and set(rebuilt.state_dict()) == set(first.state_dict())
