"""Images: listing a folder, decoding a file (Pillow, converted and resized to the model's size and
channels), and ``ImageFolderReader``, a folder in chunks with every file accounted for. Needs the
``images`` extra (Pillow)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np

from ..exceptions import InputError
from .chunks import Chunk, ChunkReader, InputKind
from .files import IMAGE_SUFFIXES, open_regular

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["list_images", "load_image", "load_images", "image_mode_info", "ImageFolderReader"]


def _pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading images needs Pillow: pip install 'anomaly-vae[images]'") from None
    return Image


def list_images(folder: str | os.PathLike[str]) -> tuple[list[Path], int]:
    """Image files under ``folder``, recursively, sorted by relative path; and how many other
    files were skipped (other extensions, hidden files).

    Listed by name only, nothing is opened: an entry with an image suffix that is not a regular
    file (a FIFO, socket or device, or a link to one) is listed, and ``load_image`` refuses it, so
    it gets an error row. Links to folders are not followed (no loops, no leaving the folder)."""
    root = Path(folder)
    found, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if not name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES:
                found.append(p)
            else:
                skipped += 1
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found, skipped


def load_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image file as float32 (C, H, W) in [0, 1], converted to ``channels`` (1 grey, 3 RGB)
    and resized (bilinear) to ``size`` = (H, W) when it differs. Pillow's decompression-bomb
    guard stays on, and its warning is an error here. Raises ``InputError`` naming the file;
    a path that is not a regular file is refused without being opened."""
    Image = _pil()
    with open_regular(Path(path)) as f:
        return _decode_image(Image, f, path, size, channels)


def _decode_image(Image: ModuleType, f: BinaryIO, path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as img:
                img.load()  # decode now: a truncated or corrupt file fails here, not later
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    a = np.asarray(img, dtype=np.float64)
                    if not np.isfinite(a).all():
                        raise InputError(f"{path}: pixel values must be finite, found NaN or infinity")
                    top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
                    img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
                img = img.convert("L" if channels == 1 else "RGB")
                if size is not None and (img.height, img.width) != tuple(size):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(f"{path}: refused, too many pixels ({err})") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: cannot decode the image ({err})") from None
    a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
    return a.astype(np.float32) / 255.0


def load_images(paths: list[Path], size: tuple[int, int], channels: int, names: list[str] | None = None) -> np.ndarray:
    """``load_image`` of every path, stacked: (N, C, H, W). The first file that cannot be read
    raises ``InputError`` naming it by its entry in ``names`` (e.g. an upload's own file name)
    instead of its path, with reason ``"bad_image"``."""
    names = names if names is not None else [str(p) for p in paths]
    images = []
    for path, name in zip(paths, names):
        try:
            images.append(load_image(path, size, channels))
        except InputError as err:
            raise InputError(str(err).replace(str(path), repr(name)), reason="bad_image") from None
    return np.stack(images)


def image_mode_info(path: Path) -> tuple[tuple[int, int], int]:
    """((H, W), channels) of an image file without decoding the pixels."""
    Image = _pil()
    try:
        with open_regular(Path(path)) as f, Image.open(f) as img:
            grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or (
                img.mode == "P" and all(len(set(c)) == 1 for c in _palette_colours(img)))
            return (img.height, img.width), 1 if grey else 3
    except InputError:
        raise
    except Exception as err:  # Pillow raises many types for unreadable files
        raise InputError(f"{path}: not an image Pillow can read ({err})") from None


def _palette_colours(img: PILImage) -> list[tuple[int, ...]]:
    pal = img.getpalette() or []
    return [tuple(pal[i : i + 3]) for i in range(0, len(pal), 3)]


class ImageFolderReader(ChunkReader):
    """Chunks of an image folder: ``batch_size`` files at a time, every file accounted for (a
    ``ChunkReader`` whose ``data`` holds only the files that could be decoded).

    Ids are the paths relative to the folder (POSIX). With ``labels_from_folders`` each file's
    label is its first-level subfolder (``root/normal/a.png`` -> ``"normal"``)."""

    format: Literal["images"] = "images"
    kind: InputKind = "image"
    columns = None

    def __init__(self, folder: str | os.PathLike[str], size: tuple[int, int] | None, channels: int,
                 batch_size: int = 256, labels_from_folders: bool = False) -> None:
        self.path = self.root = Path(folder)
        self.paths, self.skipped = list_images(self.root)
        if not self.paths:
            raise InputError(f"{self.root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder or below")
        self.size, self.channels = size, channels
        self.batch_size = int(batch_size)
        self.n_rows: int = len(self.paths)
        self.labels_from_folders = labels_from_folders

    def label_of(self, p: Path) -> str:
        parts = p.relative_to(self.root).parts
        if len(parts) < 2:
            raise InputError(f"{p}: labels come from first-level subfolders (root/LABEL/file.png), "
                             "but this file is directly in the root folder")
        return parts[0]

    def __iter__(self) -> Iterator[Chunk]:
        for start in range(0, self.n_rows, self.batch_size):
            paths = self.paths[start : start + self.batch_size]
            images: list[np.ndarray] = []
            errors: list[str | None] = []
            for p in paths:
                try:
                    images.append(load_image(p, self.size, self.channels))
                    errors.append(None)
                except InputError as err:
                    errors.append(str(err))
            data = np.stack(images) if images else None
            labels = [self.label_of(p) for p in paths] if self.labels_from_folders else None
            ids = [p.relative_to(self.root).as_posix() for p in paths]
            yield Chunk(start, ids, data, errors, labels)

    def close(self) -> None:
        pass

