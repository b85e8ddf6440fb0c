"""scikit-learn's common estimator checks, with the deliberate deviations listed and explained."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from anomaly_vae import VAEAnomalyDetector

# alpha=0.4: the checks fit on as few as 10 rows; a 20% calibration split of so few rows cannot
# support alpha=0.01 (99 scores needed; 2 calibration scores support 0.4), and predict would rightly refuse.
ESTIMATOR = VAEAnomalyDetector(epochs=2, alpha=0.4, random_state=0)

DEVIATIONS = {
    "check_dataframe_column_names_consistency":
        "columns are matched by name, so a DataFrame with the same columns in another order is "
        "scored (scikit-learn raises); see DESIGN.md 'column order free (by name)'",
}


@parametrize_with_checks([ESTIMATOR], expected_failed_checks=lambda est: DEVIATIONS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
