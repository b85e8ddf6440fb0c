import numpy as np
import pytest
import torch

from anomaly_vae import ConvVAE, DenseVAE, VAEAnomalyDetector
from anomaly_vae.models import build_model


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
