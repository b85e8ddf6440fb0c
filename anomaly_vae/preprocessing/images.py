"""Images: arrays of pixels into the (N, C, H, W) float32 in [0, 1] the network sees.

The rules are listed in the package docstring (``anomaly_vae.preprocessing``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..exceptions import InputError

log = logging.getLogger(__name__)

__all__ = ["ImagePreprocessor", "image_layout"]


def image_layout(x: np.ndarray) -> np.ndarray:
    """``x`` as (N, C, H, W): (N, H, W) gets a channel axis, (N, H, W, C) is moved channels-first.
    1 or 3 channels, first or last; anything else is an ``InputError`` (reason ``shape``)."""
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim != 4:
        raise InputError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {x.shape}",
                         reason="shape")
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return np.moveaxis(x, -1, 1)
    if x.shape[1] in (1, 3):
        return x
    raise InputError(f"cannot tell the channel axis of images of shape {x.shape}: expected 1 or 3 channels first "
                     "or last", reason="shape")


class ImagePreprocessor:
    """Images as arrays: (N, H, W), (N, H, W, C) or (N, C, H, W); integers 0-255 (any integer
    dtype) or floats in [0, 1].

    Converted to float32 (N, C, H, W). A grey model given colour images converts them to grey
    (ITU-R BT.601 luma) and a colour model given grey images repeats the channel; a different
    height or width is an error here (the command line resizes image files).
    """

    def fit(self, X: np.ndarray) -> "ImagePreprocessor":
        x = image_layout(np.asarray(X))
        self.channels, self.height, self.width = (int(v) for v in x.shape[1:])
        if self.channels not in (1, 3):
            raise InputError(f"images must have 1 or 3 channels, got {self.channels}")
        if self.height < 8 or self.width < 8:
            raise InputError(f"images must be at least 8x8 pixels, got {self.height}x{self.width}")
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """(N, C, H, W) float32 in [0, 1]; the first bad image raises ``InputError``."""
        x, errors = self.transform_rows(X)
        for i, err in enumerate(errors):
            if err is not None:
                raise InputError(f"image {i}: {err}", reason="not_finite" if "finite" in err else "invalid_value")
        return x

    def transform_rows(self, X: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Like ``transform``, but an image with bad pixels (NaN, infinity, float outside [0, 1],
        integer outside 0..255) comes back as zeros with its message instead of failing the others.
        A wrong shape or dtype is still an ``InputError`` for the whole input."""
        raw = np.asarray(X)
        if raw.dtype == object or not (np.issubdtype(raw.dtype, np.number) or raw.dtype == bool):
            raise InputError(f"images must be numeric arrays, got dtype {raw.dtype}", reason="non_numeric")
        if np.iscomplexobj(raw):
            raise InputError("images must be real numbers, got complex values", reason="non_numeric")
        x = image_layout(raw)
        if x.shape[2:] != (self.height, self.width):
            raise InputError(f"images must be {self.height}x{self.width} pixels, got {x.shape[2]}x{x.shape[3]}",
                             reason="shape")
        errors: list[str | None] = [None] * x.shape[0]
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.integer):  # 0-255 levels, as uint8 (and as JSON integers)
            flat = x.reshape(x.shape[0], -1)
            lo, hi = (flat.min(axis=1), flat.max(axis=1)) if flat.shape[1] else (np.zeros(len(flat)),) * 2
            bad = (lo < 0) | (hi > 255)
            for i in np.flatnonzero(bad):
                errors[i] = f"integer pixel values must lie in 0..255, found {lo[i]}..{hi[i]}"
            if len(flat) and not bad.all() and hi[~bad].max() <= 1:
                log.warning("integer images with values 0 and 1 only are read as 0-255 levels (nearly black); "
                            "pass floats for data in [0, 1]")
            x = np.where(bad[:, None, None, None], 0, x).astype(np.float32) / 255.0
        else:
            flat = x.reshape(x.shape[0], -1)  # checked before the float32 cast: 1e308 is finite, not inf
            finite = np.isfinite(flat).all(axis=1)
            in_range = ((flat >= 0) & (flat <= 1)).all(axis=1)
            with np.errstate(over="ignore", invalid="ignore"):
                x = x.astype(np.float32)  # the rows this overflows are the bad ones, zeroed below
            for i in np.flatnonzero(~(finite & in_range)):
                if not finite[i]:
                    errors[i] = "pixel values must be finite, found NaN or infinity"
                else:
                    errors[i] = (f"float pixel values must lie in [0, 1] (or send integers 0-255), "
                                 f"found {float(flat[i].min()):g}..{float(flat[i].max()):g}")
                x[i] = 0.0
        c = x.shape[1]
        if c != self.channels:
            if c == 3 and self.channels == 1:
                x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).astype(np.float32)
            elif c == 1 and self.channels == 3:
                x = np.repeat(x, 3, axis=1)
        return np.ascontiguousarray(x), errors

    def check_transformed(self, x: np.ndarray) -> None:
        """An ``InputError`` naming the first image of ``x`` (N, C, H, W) with a pixel that
        ``transform`` cannot have made (not finite, or outside [0, 1])."""
        bad = ~((x >= 0) & (x <= 1))  # NaN too
        if bad.any():
            i, c, r, col = (int(v) for v in np.argwhere(bad)[0])
            v = x[i, c, r, col]
            finite = bool(np.isfinite(v))
            raise InputError(f"image {i}: the prepared pixel at channel {c}, row {r}, column {col} is {v}; prepared "
                             f"pixels are {'in [0, 1]' if finite else 'finite, in [0, 1]'}",
                             reason="invalid_value" if finite else "not_finite")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "image", "channels": self.channels, "height": self.height, "width": self.width}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ImagePreprocessor":
        self = cls()
        self.channels, self.height, self.width = int(d["channels"]), int(d["height"]), int(d["width"])
        return self
