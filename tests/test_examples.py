"""The example scripts run end to end on the real MNIST / Fashion-MNIST files, with tiny settings
(slow: needs ../shared/datasets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, shared_or_skip

EXAMPLES = {
    "01_mnist_2d_latent.py": ["01_mnist_latent.png", "01_mnist_decoded_point.png", "01_mnist_grid.png"],
    "02_binarized_mnist_bernoulli.py": ["02_bernoulli_prior_samples.png"],
    "03_conv_elbo_vs_mmd.py": ["03_fashion-mnist_latent_maps.png", "03_mnist_grids.png", "03_mnist_mmd-vae_morph.png",
                               "03_fashion-mnist_mc_elbo_history.png"],
    "04_beta_tradeoff.py": ["04_beta_morphs.png"],
    "05_image_anomalies.py": ["05_scores.png", "05_reconstructions.png"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXAMPLES))
def test_example_runs_with_tiny_settings(script: str, tmp_path: Path) -> None:
    shared_or_skip("mnist")
    shared_or_skip("fashion-mnist")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--quick", "--limit", "600", "--epochs", "2",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    from PIL import Image

    for name in EXAMPLES[script]:
        with Image.open(tmp_path / name) as im:
            assert im.size[0] >= 250 and im.size[1] >= 100, name
            assert len(im.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2, name  # a picture, not a blank
    numbers = json.loads((tmp_path / f"{script[:-3]}.json").read_text())
    assert numbers["seconds"] > 0
    if script.startswith("03"):
        assert "resumed from the checkpoint of epoch 1, trained to epoch 2" in r.stdout
    if script.startswith("05"):
        assert 0.5 < numbers["auroc"] <= 1.0
