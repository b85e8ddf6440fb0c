"""JSON instances (``anomaly_vae.instances``): the JSON shape of a request's rows and images, and
the same scores as the Python API for the same rows; the values' rules are the rulebook's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import InputError, VAEAnomalyDetector
from anomaly_vae.instances import instances_to_input, score_input


def test_numeric_fast_path_is_bit_identical_to_the_dataframe_path(numeric) -> None:
    det, rows = numeric
    rows = rows.copy()
    rows.loc[[3, 7], "f03"] = np.nan  # missing values: imputed, with the indicator
    rows.loc[5, "f10"] = np.nan  # no indicator in training: imputed with a warning
    lists = [[None if pd.isna(v) else float(v) for v in r] for r in rows.to_numpy()]
    x = instances_to_input(det, lists)
    assert np.array_equal(x, det._prepare(rows, reset=False))
    assert np.array_equal(score_input(det, x), det.anomaly_score(rows))


def test_objects_in_any_key_order_and_categorical_columns(mixed) -> None:
    det, rows = mixed
    objects = [{k: (None if pd.isna(v) else v) for k, v in reversed(list(r.items()))} for r in rows.to_dict("records")]
    objects[0]["site"] = "a site never seen"  # scored, in <other>
    expected = rows.copy()
    expected.loc[0, "site"] = "a site never seen"
    assert np.array_equal(score_input(det, instances_to_input(det, objects)), det.anomaly_score(expected))
    lists = [[o[c] for c in det.preprocessor_.names] for o in objects]
    assert np.array_equal(instances_to_input(det, lists), instances_to_input(det, objects))
    numbers_as_categories = [dict(o, site=7) for o in objects[:2]]  # a number in a text column is its text
    assert np.array_equal(instances_to_input(det, numbers_as_categories),
                          det._prepare(expected.iloc[:2].assign(site="7"), reset=False))


def test_keys_beyond_the_models_columns_are_ignored(numeric) -> None:
    """As extra columns are on every face (the core's one input rulebook); the service refused them."""
    det, rows = numeric
    objects = rows.iloc[:3].to_dict("records")
    assert np.array_equal(instances_to_input(det, [dict(o, bogus=1) for o in objects]),
                          instances_to_input(det, objects))


@pytest.mark.parametrize("instances, reason, words", [
    ([], "empty", "'instances' is empty"),
    (["row"], "shape", "instance 0: expected a list of 21 values or an object"),
    ([[1.0] * 21, [1.0] * 3], "width", "instance 1 has 3 values, the model expects 21"),
    ([{"f00": 1.0}], "missing_column", "instance 0: missing column(s) ['f01', 'f02'"),
    ([[0.0] * 20 + ["abc"]], "non_numeric", "instance 0, column 'f20': expected a number or null, got a string 'abc'"),
    ([[0.0] * 20 + [True]], "non_numeric", "got a boolean True"),
    ([[0.0] * 20 + [float("nan")]], "not_finite", "nan is not allowed (send null for a missing value)"),
    ([[float("inf")] + [0.0] * 20], "not_finite", "column 'f00': inf is not allowed"),
    ([[0.0] * 20 + [[1, 2]]], "non_numeric", "got a list"),
])
def test_bad_table_instances_name_the_instance_and_the_reason(numeric, instances, reason, words) -> None:
    det, _ = numeric  # cardio's 21 numeric columns, f00..f20
    with pytest.raises(InputError) as err:
        instances_to_input(det, instances)
    assert err.value.reason == reason
    assert words in str(err.value)


def test_images_as_nested_lists(fashion_sample) -> None:
    images, _ = fashion_sample
    det = VAEAnomalyDetector(epochs=1, latent_dim=4, random_state=0, conv_channels=(8, 16)).fit(images[:200])
    some = images[200:205]
    x = instances_to_input(det, some.tolist())  # integers 0-255
    assert np.array_equal(score_input(det, x), det.anomaly_score(some))
    floats = (some / 255.0)[..., None]  # (H, W, 1) floats in [0, 1]
    assert np.allclose(instances_to_input(det, floats.tolist()), x, atol=1e-6)
    cases = [
        ([some[0][:20].tolist()], "shape", "instance 0: images must be 28x28 pixels"),
        ([[[1, 2], [3]]], "shape", "ragged"),
        ([np.full((28, 28), 300).tolist()], "invalid_value", "0..255, found 300..300"),
        ([np.full((28, 28), np.nan).tolist()], "not_finite", "NaN or infinity"),
        ([np.full((28, 28), 1.5).tolist()], "invalid_value", "must lie in [0, 1]"),
        ([np.zeros((28, 28, 5)).tolist()], "shape", "cannot tell the channel axis"),
        (["x"], "shape", "expected an image"),
    ]
    for instances, reason, words in cases:
        with pytest.raises(InputError) as err:
            instances_to_input(det, instances)
        assert err.value.reason == reason, instances
        assert words in str(err.value)


def test_images_of_one_request_may_differ_in_layout_and_pixel_type(fashion_sample) -> None:
    """Every image valid against the OpenAPI document is scored, whatever the others of its
    request look like (a request of an (H, W) and a (1, H, W) image was refused)."""
    images, _ = fashion_sample
    det = VAEAnomalyDetector(epochs=1, latent_dim=4, random_state=0, conv_channels=(8, 16)).fit(images[:200])
    some = images[200:203]
    mixed = [some[0].tolist(), some[1][None].tolist(), (some[2][..., None] / 255.0).tolist()]
    assert np.allclose(instances_to_input(det, mixed), instances_to_input(det, some.tolist()), atol=1e-6)


@pytest.fixture(scope="module")
def image_det(fashion_sample) -> VAEAnomalyDetector:
    images, _ = fashion_sample
    return VAEAnomalyDetector(epochs=1, latent_dim=4, random_state=0, conv_channels=(8, 16)).fit(images[:200])


def _image_with(value, at=(3, 5)) -> list:
    img = np.zeros((28, 28), dtype=int).tolist()
    img[at[0]][at[1]] = value
    return img


@pytest.mark.parametrize("instance, reason, words", [
    (_image_with(None), "non_numeric", "the value at [3][5] is null; pixels must be numbers"),
    ({"pixels": [[0]]}, "shape", "got an object"),
    (_image_with({"r": 1}), "non_numeric", "the value at [3][5] is an object"),
    (_image_with("7"), "non_numeric", "the value at [3][5] is a string"),
    (_image_with(10**400), "invalid_value", "integer pixel values must lie in 0..255, found 100000... (401 digits) "
                                            "at [3][5]"),
    (_image_with(1e308), "invalid_value", "float pixel values must lie in [0, 1] (or send integers 0-255), found "
                                          "0..1e+308"),
    ([[1, 2], [3]], "shape", "rows of different lengths (a ragged list)"),
])
def test_image_instance_messages_name_the_real_problem(image_det, instance, reason, words) -> None:
    """null pixels, an object and a huge integer were all "a ragged list"; a finite 1e308 pixel
    was "NaN or infinity"."""
    with pytest.raises(InputError) as err:
        instances_to_input(image_det, [instance])
    assert err.value.reason == reason
    assert words in str(err.value)


@pytest.mark.parametrize("value, column", [(10**400, 0), (-(10**400), 20)], ids=["1e400-first", "-1e400-last"])
def test_json_integer_beyond_float64_is_an_input_error_naming_instance_and_column(numeric, mixed, value,
                                                                                  column) -> None:
    """It was an OverflowError (a 500 in the service)."""
    det, _ = numeric
    row = [0.0] * 21
    row[column] = value
    with pytest.raises(InputError) as err:
        instances_to_input(det, [[0.0] * 21, row])
    assert err.value.reason == "not_finite"
    assert f"instance 1, column 'f{column:02d}': the integer " in str(err.value)
    assert "401 digits) is beyond the range of a 64-bit float" in str(err.value)
    det, rows = mixed  # the path of tables with text columns; there a huge integer is a category's text
    record = {k: (None if pd.isna(v) else v) for k, v in rows.iloc[:1].to_dict("records")[0].items()}
    with pytest.raises(InputError, match="instance 0, column 'f02': the integer 100000"):
        instances_to_input(det, [dict(record, f02=10**400)])
    assert instances_to_input(det, [dict(record, site=10**400)]).shape[0] == 1
