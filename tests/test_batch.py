"""Batch scoring (``batch.score_to_file``): one output row per input row, in order, nothing lost."""

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import InputError, VAEAnomalyDetector
from anomaly_vae.batch import score_to_file
from anomaly_vae.io import open_data
from anomaly_vae.io.tables import EXACT_FLOATS


@pytest.fixture(scope="module")
def table_model(cardio):
    return VAEAnomalyDetector(epochs=5, random_state=0).fit(cardio[cardio.label == "normal"].drop(columns="label"))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_extreme_value_row_is_scored_and_flagged_not_left_empty(table_model, cardio, tmp_path, suffix):
    """Issue 10.2: a row with 1e300 was written with an empty score and an empty error, exit 0; it is
    now scored (finite, huge) and flagged, and the other rows are untouched."""
    X = cardio.drop(columns="label").iloc[:40].copy()
    X.iloc[3, 0], X.iloc[7, 5], X.iloc[9, 2] = 1e300, -1e39, 1e19
    src = tmp_path / f"in{suffix}"
    X.to_csv(src, index=False) if suffix == ".csv" else X.to_parquet(src, index=False)
    with open_data(src, batch_size=16) as reader:
        summary = score_to_file(table_model, reader, tmp_path / f"out{suffix}")
    # round_trip: the written scores as Python reads them (pandas' default parser can be an ulp off)
    out = (pd.read_csv(summary.output, **EXACT_FLOATS) if suffix == ".csv"
           else pd.read_parquet(summary.output))
    assert len(out) == 40 and summary.errors == 0 and summary.scored == 40
    assert np.isfinite(out["score"]).all() and out["error"].isna().all()
    assert out["is_anomaly"].iloc[[3, 7, 9]].astype(bool).all()
    assert summary.anomalies >= 3
    np.testing.assert_array_equal(out["score"].to_numpy(), table_model.anomaly_score(X))


def test_a_huge_integer_in_an_unused_column_changes_no_other_row(cardio, tmp_path):
    """Hostile review: on pandas 2.2 / 3.0 (``make test-pandas``) one 400-digit integer made the whole
    block text, so a bool column was 'expected a number' on every row, and ids lost or kept their
    leading zeros depending on the block. Only the column that holds it is read as text now, and ids
    are read as written in every block."""
    X = cardio[cardio.label == "normal"].drop(columns="label").iloc[:, :6].copy()
    X["flag"] = np.arange(len(X)) % 3 == 0
    det = VAEAnomalyDetector(epochs=2, random_state=0).fit(X)
    rows = X.iloc[:50].copy()
    rows.insert(0, "id", [f"{i:03d}" for i in range(50)])
    rows["junk"] = ""
    rows.to_csv(tmp_path / "clean.csv", index=False)
    rows.loc[rows.index[4], "junk"] = "9" * 400
    rows.to_csv(tmp_path / "huge.csv", index=False)
    outs = []
    for name in ("clean", "huge"):
        with open_data(tmp_path / f"{name}.csv", batch_size=16, id_column="id") as reader:
            summary = score_to_file(det, reader, tmp_path / f"{name}-out.csv", id_name="id")
        assert summary.errors == 0
        outs.append(pd.read_csv(summary.output, dtype={"id": str}, **EXACT_FLOATS))
    assert outs[0]["id"].tolist() == outs[1]["id"].tolist() == [f"{i:03d}" for i in range(50)]
    np.testing.assert_array_equal(outs[0]["score"], outs[1]["score"])
    np.testing.assert_array_equal(outs[0]["score"], det.anomaly_score(X.iloc[:50]))


@pytest.mark.parametrize("batch_size", [1, 16384])
def test_integer_beyond_float64_in_a_csv_is_an_error_row_not_a_crash(table_model, cardio, tmp_path, batch_size):
    """Hostile review of issue 10: a 400-digit integer in a CSV cell raised OverflowError (a CLI
    traceback and a 500 from /score_csv), depending on how the rows were chunked."""
    lines = (tmp_path / "c.csv")
    cardio.drop(columns="label").iloc[:3].to_csv(lines, index=False)
    rows = lines.read_text().splitlines()
    cells = rows[2].split(",")
    cells[3] = "9" * 400
    lines.write_text("\n".join([rows[0], rows[1], ",".join(cells), rows[3]]) + "\n")
    with open_data(lines, batch_size=batch_size) as reader:
        summary = score_to_file(table_model, reader, tmp_path / "out.csv")
    out = pd.read_csv(summary.output, **EXACT_FLOATS)
    assert len(out) == 3 and summary.errors == 1
    assert "column 'f03'" in out["error"].iloc[1] and "beyond float64" in out["error"].iloc[1]
    assert np.isfinite(out["score"].iloc[[0, 2]]).all()


def test_csv_with_cr_only_line_ends_is_a_clear_error(tmp_path):
    """Hostile review of issue 10: old-Mac line ends gave a csv.Error traceback (and a 500)."""
    from anomaly_vae.exceptions import InputError

    src = tmp_path / "cr.csv"
    src.write_bytes(b"a,b\r1,2\r3,4\r")
    with pytest.raises(InputError, match="line 1: cannot read the header row.*LF or CRLF"):
        open_data(src).close()


def test_float_tiff_with_nan_pixels_is_an_error_not_a_black_image(tmp_path):
    """Hostile review of issue 10: a float TIFF of NaN pixels was decoded as black and scored."""
    from PIL import Image

    from anomaly_vae.exceptions import InputError
    from anomaly_vae.io import load_image

    path = tmp_path / "nan.tif"
    Image.fromarray(np.full((28, 28), np.nan, dtype=np.float32), mode="F").save(path)
    with pytest.raises(InputError, match="must be finite"):
        load_image(path, (28, 28), 1)


def test_an_output_that_is_the_input_is_refused_before_anything_is_written(table_model, cardio, tmp_path):
    """Found by the hostile review: --out equal to the input (or a link to it) replaced the data."""
    from anomaly_vae.batch import score_file

    data = tmp_path / "in.csv"
    cardio.drop(columns="label").iloc[:20].to_csv(data, index=False)
    before = data.read_bytes()
    (tmp_path / "link.csv").symlink_to(data)
    for out in (data, tmp_path / "link.csv", tmp_path / "." / "in.csv"):
        with pytest.raises(InputError, match="the output is the input file"):
            score_file(table_model, data, out)
    assert data.read_bytes() == before
