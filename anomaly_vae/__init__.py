"""anomaly-vae: anomaly detection by variational-autoencoder likelihood, with a calibrated
false-alarm rate.

The public names are imported on first use (PEP 562), so that ``anomaly-vae --help`` and other
light uses do not pay for importing torch and scikit-learn."""

import importlib as _importlib
import typing as _typing

from ._version import __version__

_WHERE = {
    "VAEAnomalyDetector": "detector",
    "DenseVAE": "models",
    "ConvVAE": "models",
    "load_detector": "detector",
    "read_model_card": "artifact",
    "conformal_threshold": "calibration",
    "conformal_p_values": "calibration",
    "min_calibration_size": "calibration",
    "AnomalyVAEError": "exceptions",
    "ArtifactError": "exceptions",
    "ModelCardError": "exceptions",
    "CalibrationError": "exceptions",
    "ExportError": "exceptions",
    "InputError": "exceptions",
    "NotFittedError": "exceptions",
    "TrainingDivergedError": "exceptions",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> _typing.Any:
    if name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _typing.TYPE_CHECKING:
    from .artifact import read_model_card
    from .calibration import conformal_p_values, conformal_threshold, min_calibration_size
    from .detector import VAEAnomalyDetector, load_detector
    from .exceptions import (AnomalyVAEError, ArtifactError, CalibrationError, ExportError, InputError, ModelCardError,
                             NotFittedError, TrainingDivergedError)
    from .models import ConvVAE, DenseVAE
