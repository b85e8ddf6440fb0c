"""Every plot kind renders a PNG of the expected size from a tiny model, deterministically, and
`anomaly-vae plot` draws them from a model directory and data."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly_vae import VAEAnomalyDetector
from anomaly_vae import plots

PIL = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")
EXE = str(Path(sys.executable).parent / "anomaly-vae")


@pytest.fixture(scope="module")
def image_det(fashion_sample) -> tuple[VAEAnomalyDetector, np.ndarray, np.ndarray]:
    images, labels = fashion_sample
    det = VAEAnomalyDetector(epochs=2, latent_dim=2, conv_channels=(8, 16), alpha=0.1, random_state=0)
    det.fit(images[labels == 0])
    return det, images[:200], labels[:200]


@pytest.fixture(scope="module")
def table_det(cardio: pd.DataFrame) -> tuple[VAEAnomalyDetector, pd.DataFrame]:
    X = cardio.drop(columns=["label"])
    det = VAEAnomalyDetector(epochs=3, latent_dim=4, random_state=0).fit(X.iloc[:1000])
    return det, cardio.iloc[1000:1400]


def png(fig, path: Path) -> tuple[int, int]:
    fig.savefig(path)
    plots.pyplot().close(fig)
    with PIL.open(path) as im:
        return im.size


def test_every_image_kind_renders_at_its_size(image_det, tmp_path: Path) -> None:
    det, images, labels = image_det
    figures = {
        "latent": (plots.latent_figure(det, images, labels), (700, 600)),
        "grid": (plots.grid_figure(det, n=8), (400, 400)),
        "morph": (plots.morph_figure(det, images[0], images[1], steps=6), (880, 180)),
        "reconstructions": (plots.reconstructions_figure(det, images, n=3), (750, 440)),
        "scores": (plots.scores_figure(det, images, labels), (800, 450)),
        "roc": (plots.roc_figure(det.anomaly_score(images), labels != 0, det.threshold_), (500, 500)),
        "history": (plots.history_figure(det), (1100, 400)),
    }
    for name, (fig, size) in figures.items():
        assert png(fig, tmp_path / f"{name}.png") == size, name


def test_latent_map_of_a_larger_latent_uses_principal_components(table_det, tmp_path: Path) -> None:
    det, rows = table_det
    fig = plots.latent_figure(det, rows.drop(columns=["label"]), rows["label"].tolist())
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("principal component 1 of z (") and "4-D latent space" in ax.get_title()
    assert png(fig, tmp_path / "latent.png") == (700, 600)
    fig = plots.features_figure(det, rows.drop(columns=["label"]).iloc[[3]])
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    contrib = det.feature_scores(rows.drop(columns=["label"]).iloc[[3]]).iloc[0]
    assert labels[-1] == contrib.idxmax()  # the largest bar on top
    assert png(fig, tmp_path / "features.png")[0] == 800


def test_two_d_grid_walks_the_latent_plane_and_is_deterministic(image_det, tmp_path: Path) -> None:
    det, images, _ = image_det
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    png(plots.grid_figure(det, n=5), a)
    png(plots.grid_figure(det, n=5), b)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    mosaic = plots.tile_images(det.decode(np.zeros((4, 2))), 2, 2)
    assert mosaic.shape == (57, 57)


def test_kinds_that_need_images_refuse_a_table_model(table_det) -> None:
    det, rows = table_det
    from anomaly_vae import AnomalyVAEError

    for call in (lambda: plots.grid_figure(det), lambda: plots.reconstructions_figure(det, rows)):
        with pytest.raises(AnomalyVAEError, match="draws images, and this model scores tables"):
            call()


def test_draw_dispatches_by_kind_and_refuses_options_that_do_not_fit(image_det, table_det, tmp_path: Path) -> None:
    det, images, labels = image_det
    assert png(plots.draw("grid", det, n=5), tmp_path / "grid.png") == png(plots.grid_figure(det, n=5), tmp_path / "g.png")
    assert png(plots.draw("morph", det, images[:4], pair=(1, 3), n=6), tmp_path / "morph.png") == (880, 180)
    assert [k for k in plots.KINDS if not plots.needs_data(k)] == list(plots.MODEL_ONLY_KINDS) == ["grid", "history"]
    refused = [
        (lambda: plots.draw("latent", det), "plot latent needs DATA"),
        (lambda: plots.draw("morph", det, images[:3], pair=(0, 3)), r"--pair 0 3: DATA has 3 samples \(0..2\)"),
        (lambda: plots.draw("roc", det, images[:3]), "plot roc needs labels"),
        (lambda: plots.draw("features", table_det[0], table_det[1].drop(columns=["label"]), row=400),
         r"--row 400: DATA has 400 rows"),
    ]
    for call, message in refused:
        with pytest.raises(plots.PlotOptionError, match=message):
            call()
    with pytest.raises(ValueError, match="kind must be one of"):
        plots.draw("pie", det, images)


def test_plot_command_draws_every_kind(image_det, table_det, tmp_path: Path, cli_here) -> None:
    """The first case through the installed executable, the others in this process (``cli_here``:
    44 s -> about 7 s)."""
    import matplotlib.pyplot as plt

    open_before = len(plt.get_fignums())
    det, images, labels = image_det
    root = tmp_path / "images"
    for i in range(40):
        folder = root / ("normal" if labels[i] == 0 else f"class{labels[i]}")
        folder.mkdir(parents=True, exist_ok=True)
        PIL.fromarray(images[i]).save(folder / f"{i:03d}.png")
    det.save(tmp_path / "imodel")
    tdet, rows = table_det
    tdet.save(tmp_path / "tmodel")
    rows.to_csv(tmp_path / "rows.csv", index=False)
    cases = [
        ("imodel", "latent", root), ("imodel", "grid", None), ("imodel", "morph", root),
        ("imodel", "reconstructions", root), ("imodel", "scores", root), ("imodel", "roc", root),
        ("imodel", "history", None), ("tmodel", "features", tmp_path / "rows.csv"),
        ("tmodel", "scores", tmp_path / "rows.csv"),
    ]
    for k, (model, kind, data) in enumerate(cases):
        out = tmp_path / "figs" / f"{model}-{kind}.png"
        args = ["plot", str(tmp_path / model), kind, *([str(data)] if data else []), "--out", str(out)]
        if model == "tmodel":
            args += ["--label-column", "label"]
        r = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300) if k == 0 else cli_here(*args)
        assert r.returncode == 0, (kind, r.stderr)
        assert f"wrote {out} ({kind}," in r.stdout
        with PIL.open(out) as im:
            assert im.size[0] >= 400 and im.size[1] >= 150
    r = cli_here("plot", tmp_path / "tmodel", "grid", "--out", tmp_path / "x.png")
    assert r.returncode == 1 and "draws images, and this model scores tables" in r.stderr
    r = cli_here("plot", tmp_path / "imodel", "latent", "--out", tmp_path / "x.png")
    assert r.returncode == 2 and "plot latent needs DATA" in r.stderr
    assert not (tmp_path / "x.png").exists()
    assert len(plt.get_fignums()) == open_before  # each figure closed once written (20 open is a warning)
