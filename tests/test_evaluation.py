"""Detection metrics on labelled data (``anomaly_vae.evaluation``): the numbers the demo,
``train --label-column`` and ``evaluate`` report, checked by hand."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomaly_vae import VAEAnomalyDetector
from anomaly_vae.evaluation import anomaly_labels, default_normal_label, evaluate_scores
from anomaly_vae.exceptions import InputError


def test_metrics_by_hand():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
    y = np.array([False, False, True, True, True, False])
    m = evaluate_scores(scores, y, threshold=0.3, alpha=0.05)
    # flagged: 0.4 (normal), 0.35, 0.8, 0.9 (anomalous)
    assert m["n"] == 6 and m["n_normal"] == 3 and m["n_anomalous"] == 3
    assert m["false_alarm_rate"] == pytest.approx(1 / 3)
    assert m["detection_rate"] == 1.0
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["confusion"] == {"normal": {"flagged": 1, "not_flagged": 2}, "anomalous": {"flagged": 3, "not_flagged": 0}}
    assert m["auroc"] == pytest.approx(roc_auc_score(y, scores)) == pytest.approx(8 / 9)
    assert m["alpha"] == 0.05 and m["threshold"] == 0.3


def test_a_score_equal_to_the_threshold_is_not_flagged():
    m = evaluate_scores(np.array([1.0, 2.0]), np.array([False, True]), threshold=2.0, alpha=None)
    assert m["detection_rate"] == 0.0 and m["false_alarm_rate"] == 0.0 and m["precision"] is None


def test_one_class_gives_no_auroc_rather_than_an_error():
    m = evaluate_scores(np.array([1.0, 2.0, 3.0]), np.zeros(3, dtype=bool), threshold=2.5, alpha=0.01)
    assert m["auroc"] is None and m["average_precision"] is None
    assert m["detection_rate"] is None and m["false_alarm_rate"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("labels, normal", [
    (["normal", "attack", "normal"], "normal"),
    ([0, 1, 0], "0"),
    ([0.0, 1.0], "0.0"),
    (["0", "1"], "0"),
    ([False, True], "False"),
])
def test_default_normal_label(labels, normal):
    assert default_normal_label(labels) == normal


def test_default_normal_label_refuses_to_guess():
    with pytest.raises(InputError, match="pass --normal-label"):
        default_normal_label(["cat", "dog"])


def test_labels_compare_as_text_and_floats_read_from_csv_match_integers():
    y = anomaly_labels([0, 1.0, "0", 0.0, 2], normal_label=0)
    assert y.tolist() == [False, True, False, False, True]


def test_a_missing_label_names_its_row():
    with pytest.raises(InputError, match="row 2: the label is missing"):
        anomaly_labels(["normal", "attack", None], "normal")
    with pytest.raises(InputError, match="row 0: the label is missing"):
        anomaly_labels([float("nan")], "normal")


def test_a_string_column_unrelated_to_the_anomalies_does_not_drown_the_others(cardio):
    """Issue 12: a column of 20 host names (Zipf frequencies, unrelated to the label) used to cost a
    normal row with a rare host thousands of nats (a Gaussian per one-hot feature, its sigma at the
    floor), burying cardio's anomalies (AUROC 0.94 -> 0.84 on the benchmark's mixed table). With
    the categorical likelihood the column costs a few nats and the ranking barely moves."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.RandomState(0)
    df = cardio.drop(columns="label").copy()
    p = 1.0 / np.arange(1, 21)
    df["host"] = np.array([f"host-{i:02d}" for i in rng.choice(20, size=len(df), p=p / p.sum())], dtype=object)
    y = (cardio["label"] != "normal").to_numpy().astype(int)
    normal = rng.permutation(np.flatnonzero(y == 0))
    train, test = normal[: len(normal) // 2], np.concatenate([normal[len(normal) // 2 :], np.flatnonzero(y == 1)])
    auc = {}
    for name, data in (("without", df.drop(columns="host")), ("with", df)):
        det = VAEAnomalyDetector(epochs=30, random_state=0).fit(data.iloc[train])
        auc[name] = roc_auc_score(y[test], det.anomaly_score(data.iloc[test]))
    assert auc["without"] > 0.85
    assert auc["with"] > auc["without"] - 0.03, auc
