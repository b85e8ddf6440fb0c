"""anomaly-vae: anomaly detection by variational-autoencoder likelihood, with a calibrated
false-alarm rate."""

from ._version import __version__
from .artifact import load_detector, read_model_card
from .calibration import conformal_p_values, conformal_threshold, min_calibration_size
from .detector import VAEAnomalyDetector
from .exceptions import (
    AnomalyVAEError,
    ArtifactError,
    CalibrationError,
    InputError,
    NotFittedError,
    TrainingDivergedError,
)
from .models import ConvVAE, DenseVAE

__all__ = [
    "__version__",
    "VAEAnomalyDetector",
    "DenseVAE",
    "ConvVAE",
    "load_detector",
    "read_model_card",
    "conformal_threshold",
    "conformal_p_values",
    "min_calibration_size",
    "AnomalyVAEError",
    "ArtifactError",
    "CalibrationError",
    "InputError",
    "NotFittedError",
    "TrainingDivergedError",
]
