import math

import numpy as np
import pytest
from scipy import stats

from anomaly_vae.calibration import (
    best_f1_threshold,
    conformal_p_values,
    conformal_threshold,
    contamination_threshold,
    min_calibration_size,
)
from anomaly_vae.exceptions import CalibrationError


def test_threshold_is_the_conformal_order_statistic():
    scores = np.arange(1, 100, dtype=float)  # n = 99, alpha = 0.1 -> ceil(100 * 0.9) = 90th smallest
    assert conformal_threshold(scores[::-1], 0.1) == 90.0


def test_threshold_exact_integer_rank_is_not_rounded_up():
    # n = 19, alpha = 0.05: (n+1)(1-alpha) = 19 exactly -> the largest score, not an error
    assert conformal_threshold(np.arange(19.0), 0.05) == 18.0


@pytest.mark.parametrize("alpha,need", [(0.01, 99), (0.05, 19), (0.1, 9), (0.5, 1)])
def test_min_calibration_size(alpha, need):
    assert min_calibration_size(alpha) == need
    conformal_threshold(np.arange(float(need)), alpha)  # enough
    if need > 1:
        with pytest.raises(CalibrationError, match=f"needs at least {need} calibration samples, got {need - 1}"):
            conformal_threshold(np.arange(float(need - 1)), alpha)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), "0.1"])
def test_bad_alpha_is_a_clear_error(alpha):
    with pytest.raises(ValueError, match="alpha must be a float in"):
        conformal_threshold(np.arange(10.0), alpha)


def test_p_values_by_hand():
    cal = np.array([1.0, 2.0, 3.0, 4.0])
    p = conformal_p_values(np.array([0.0, 2.0, 2.5, 10.0]), cal)
    assert p.tolist() == [5 / 5, 4 / 5, 3 / 5, 1 / 5]


def test_flagged_exactly_when_p_value_at_most_alpha():
    rng = np.random.default_rng(0)
    cal, new = rng.normal(size=500), rng.normal(size=5000)
    for alpha in (0.01, 0.05, 0.2):
        t = conformal_threshold(cal, alpha)
        assert np.array_equal(new > t, conformal_p_values(new, cal) <= alpha)


def test_false_alarm_rate_is_valid_on_exchangeable_data():
    """Marginal over calibration draws, P(flag) <= alpha and close to it: the Beta band."""
    rng = np.random.default_rng(1)
    n, alpha, reps, m = 199, 0.05, 400, 200
    rates = []
    for _ in range(reps):
        t = conformal_threshold(rng.standard_t(3, size=n), alpha)
        rates.append(np.mean(rng.standard_t(3, size=m) > t))
    k = math.ceil((n + 1) * (1 - alpha))
    expected = (n + 1 - k) / (n + 1)  # = E[false-alarm rate] exactly
    assert np.mean(rates) == pytest.approx(expected, abs=3 * np.std(rates) / math.sqrt(reps))
    assert np.mean(rates) <= alpha + 3 * np.std(rates) / math.sqrt(reps)


def test_contamination_threshold_flags_that_share():
    s = np.arange(1000.0)
    assert np.mean(s > contamination_threshold(s, 0.05)) == 0.05
    with pytest.raises(ValueError, match="contamination must be"):
        contamination_threshold(s, 0.7)


def test_best_f1_threshold_separates_perfectly_separable_scores():
    s = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    y = np.array([0, 0, 0, 1, 1])
    t, f1 = best_f1_threshold(s, y)
    assert f1 == 1.0 and 0.3 <= t < 5.0
    assert np.array_equal(s > t, y.astype(bool))


def test_best_f1_needs_both_classes():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        best_f1_threshold(np.arange(3.0), np.zeros(3))


def test_beta_band_reference():
    # sanity of the band used in the detector tests: the conformal coverage is Beta distributed
    n, alpha = 199, 0.05
    k = math.ceil((n + 1) * (1 - alpha))
    assert stats.beta(n + 1 - k, k).mean() == pytest.approx(0.05)
