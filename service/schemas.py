"""The service's answers as pydantic models: what ``/docs.json`` documents for the 200 answers.

``/score`` writes its body with ``score_body`` (``json.dumps`` of the ``ScoreResponse`` fields): for
one row, pydantic's validation of the service's own floats costs more than the model's forward.
``tests/test_service_http.py`` checks that the body validates as a ``ScoreResponse``.
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel, Field

__all__ = ["INSTANCES_DOC", "ImageResult", "ImagesResponse", "ScoreResponse", "score_body"]

INSTANCES_DOC = ("Rows or images to score. A table row is a list of values in the model's column order or an "
                 "object keyed by column name (null = missing value); an image is a nested list of pixels (H, W), "
                 "(H, W, C) or (C, H, W), integers 0-255 or floats in [0, 1].")


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="anomaly score per instance, nats, higher = more anomalous")
    p_values: list[float] = Field(description="conformal p-value per instance (small = anomalous)")
    is_anomaly: list[bool] = Field(description="score above the threshold")
    threshold: float
    alpha: float | None = Field(description="target false-alarm rate of the threshold (null if not set by alpha)")
    model_version: str


class ImageResult(BaseModel):
    filename: str
    score: float
    p_value: float
    is_anomaly: bool


class ImagesResponse(BaseModel):
    results: list[ImageResult]
    threshold: float
    alpha: float | None
    model_version: str


def score_body(scores: np.ndarray, p_values: np.ndarray, is_anomaly: np.ndarray, threshold: float,
               alpha: float | None, model_version: str) -> str:
    """The JSON text of a ``ScoreResponse``, without building one."""
    return json.dumps({"scores": scores.tolist(), "p_values": p_values.tolist(), "is_anomaly": is_anomaly.tolist(),
                       "threshold": threshold, "alpha": alpha, "model_version": model_version}, allow_nan=False)
