"""Every loss term against values computed by hand."""

import math

import pytest
import torch

from anomaly_vae.objectives import (
    BernoulliLikelihood,
    GaussianLikelihood,
    gaussian_kernel,
    kl_standard_normal,
    log_normal,
    log_standard_normal,
    make_likelihood,
    mc_elbo,
    mmd,
)

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def test_kl_of_standard_normal_to_itself_is_zero():
    assert kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]


def test_kl_mu_one_logvar_zero_is_half_per_dimension():
    kl = kl_standard_normal(torch.ones(2, 3), torch.zeros(2, 3))
    assert torch.allclose(kl, torch.tensor([1.5, 1.5]))


def test_kl_of_variance_change_by_hand():
    # KL(N(0, e) || N(0, 1)) = 0.5 * (e - 1 - 1) per dimension
    kl = kl_standard_normal(torch.zeros(1, 1), torch.ones(1, 1))
    assert kl.item() == pytest.approx(0.5 * (math.e - 2.0))


def test_log_standard_normal_by_hand():
    z = torch.tensor([[0.0, 1.0]])
    assert log_standard_normal(z).item() == pytest.approx(-2 * HALF_LOG_2PI - 0.5)


def test_log_normal_by_hand():
    # N(x=3; mu=1, sigma=2): -log(2) - 0.5 log(2 pi) - 0.5 * (2/2)^2
    v = log_normal(torch.tensor(3.0), torch.tensor(1.0), torch.log(torch.tensor(2.0)))
    assert v.item() == pytest.approx(-math.log(2) - HALF_LOG_2PI - 0.5)


def test_bernoulli_log_prob_by_hand():
    lik = BernoulliLikelihood()
    # logits 0 -> p = 0.5 for either outcome
    assert torch.allclose(lik.log_prob(torch.tensor([0.0, 1.0]), torch.zeros(2)), torch.full((2,), math.log(0.5)))
    # logit log(3) -> p(1) = 0.75
    assert lik.log_prob(torch.tensor([1.0]), torch.tensor([math.log(3.0)])).item() == pytest.approx(math.log(0.75))


def test_gaussian_fixed_variance_is_scaled_mse():
    lik = GaussianLikelihood((2,), variance="fixed", scale=1.0)
    x, loc = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    # -0.5 * (1 + 4) - 2 * 0.5 log 2 pi
    assert lik.log_prob(x, loc).sum().item() == pytest.approx(-2.5 - 2 * HALF_LOG_2PI)
    assert list(lik.parameters()) == []


def test_gaussian_learned_scale_starts_at_scale_and_has_one_parameter_per_feature():
    lik = GaussianLikelihood((3,), variance="feature", scale=0.5, min_scale=0.01)
    assert torch.allclose(lik.scale(), torch.full((3,), 0.5))
    assert lik.raw_scale.shape == (3,)
    v = lik.log_prob(torch.tensor([[0.5, 0.0, 0.0]]), torch.zeros(1, 3))
    assert v[0, 0].item() == pytest.approx(-math.log(0.5) - HALF_LOG_2PI - 0.5)


def test_gaussian_shared_scale_is_one_parameter():
    lik = make_likelihood("gaussian-shared", (1, 8, 8))
    assert lik.raw_scale.shape == (1,)


def test_learned_scale_never_below_floor():
    lik = GaussianLikelihood((2,), variance="feature", scale=1.0, min_scale=0.05)
    with torch.no_grad():
        lik.raw_scale.fill_(-1e4)
    assert torch.all(lik.scale() >= 0.05)


def test_unknown_likelihood_is_a_clear_error():
    with pytest.raises(ValueError, match="likelihood must be one of"):
        make_likelihood("poisson", (3,))


def test_gaussian_kernel_by_hand():
    a, b = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # ||a - b||^2 = 2, h^2 = dim = 2: exp(-2 / 4)
    assert gaussian_kernel(a, b).item() == pytest.approx(math.exp(-0.5))


def test_mmd_by_hand_and_zero_for_identical_samples():
    a = torch.tensor([[0.0], [1.0]])
    assert mmd(a, a).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[2.0], [3.0]])
    k = lambda d2: math.exp(-d2 / 2.0)  # noqa: E731  (h^2 = 1)
    kaa = (2 * k(0) + 2 * k(1)) / 4
    kbb = kaa
    kab = (k(4) + k(9) + k(1) + k(4)) / 4
    assert mmd(a, b).item() == pytest.approx(kaa + kbb - 2 * kab, rel=1e-5)


def test_mc_elbo_by_hand():
    # z = 0, q = N(0, 1): log p(z) = log q(z|x), so the estimate is log p(x|z) alone
    assert mc_elbo(torch.tensor([-3.0]), torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2)).item() == pytest.approx(-3.0)
    # z = 1, q = N(1, 1): log p(z) - log q(z|x) = -0.5 per dimension
    v = mc_elbo(torch.tensor([-3.0]), torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, 2))
    assert v.item() == pytest.approx(-3.0 - 1.0)


def test_mc_kl_estimate_averages_to_analytic_kl():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.tensor([[0.7, -0.3]]), torch.tensor([[0.2, -0.5]])
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 2, generator=g)
    mc = (log_normal(z, mu, 0.5 * logvar).sum(-1) - log_standard_normal(z)).mean()
    assert mc.item() == pytest.approx(kl_standard_normal(mu, logvar).item(), abs=0.01)


def test_learned_scale_starts_at_the_data_spread_with_a_floor():
    lik = GaussianLikelihood((3,), variance="feature", min_scale=0.01)
    x = torch.stack([torch.tensor([0.0, 0.0, 5.0]), torch.tensor([2.0, 0.0, 5.0])])
    lik.init_from_data(x)
    s = lik.scale()
    assert s[0].item() == pytest.approx(x[:, 0].std().item(), rel=1e-4)
    assert s[1].item() == pytest.approx(0.0101, rel=1e-3) and s[2].item() == pytest.approx(0.0101, rel=1e-3)
