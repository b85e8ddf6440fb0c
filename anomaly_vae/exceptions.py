"""Exceptions with messages that say what was wrong and what to do."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError

__all__ = ["AnomalyVAEError", "InputError", "CalibrationError", "TrainingDivergedError", "ArtifactError",
           "ModelCardError", "ExportError", "NotFittedError"]


class AnomalyVAEError(Exception):
    """Base class of this package's own errors."""


class InputError(AnomalyVAEError, ValueError):
    """Input data that cannot be used: wrong shape, missing column, non-finite value, ...

    ``reason`` is a short fixed word for what kind of problem it is ("missing_column",
    "not_finite", ...), for counting rejected requests without reading the message."""

    def __init__(self, message: str, reason: str = "invalid_input") -> None:
        super().__init__(message)
        self.reason = reason


class CalibrationError(AnomalyVAEError, ValueError):
    """No usable threshold: too few calibration samples for the alpha asked."""


class TrainingDivergedError(AnomalyVAEError, RuntimeError):
    """Training diverged: the loss became NaN, infinite or beyond ``training.LOSS_LIMIT``, or the run
    ended far above the untrained network's loss (``training.DIVERGED_MARGIN``)."""


class ArtifactError(AnomalyVAEError, ValueError):
    """A model directory that cannot be loaded: missing file, bad hash, newer format, ..."""


class ExportError(AnomalyVAEError, ValueError):
    """A fitted model that cannot be exported as asked (``anomaly_vae.onnx``): an unknown score, an
    input form the model does not have, a missing ``onnx`` package, a graph the exporter refuses."""


class ModelCardError(ArtifactError):
    """A model directory refused by the checks made before loading it (see ``anomaly_vae.card``).

    ``file`` is the file at fault; ``field`` where in it: a JSON path such as
    ``architecture.hidden[0]``, a tensor name, or None for the file as a whole."""

    def __init__(self, file: str, field: str | None, problem: str) -> None:
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")
        self.file, self.field, self.problem = file, field, problem
