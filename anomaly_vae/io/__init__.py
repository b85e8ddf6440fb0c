"""Chunked readers and writers for the batch faces: CSV / TSV, Parquet, ``.npy`` / ``.npz`` and
image folders in; CSV or Parquet out, written to a temporary file and renamed when complete.

Every reader is a ``ChunkReader`` (``open_data`` picks it for a path) and yields ``Chunk`` objects
that account for every input row (or file), unreadable ones included, with their errors.

Modules: ``files`` (what is at a path; regular files only), ``chunks`` (the reader protocol and its
chunks), ``tables`` (CSV / TSV, Parquet), ``arrays`` (.npy / .npz), ``images`` (image files and
folders), ``readers`` (the reader for a path), ``writers`` (result files, written atomically).
"""

from .arrays import ArrayReader
from .chunks import Chunk, ChunkData, ChunkReader, InputKind, read_all
from .files import ARRAY_FORMATS, IMAGE_SUFFIXES, TABLE_FORMATS, TABLE_SUFFIXES, DataFormat, data_kind
from .images import ImageFolderReader, image_mode_info, list_images, load_image, load_images
from .readers import open_data
from .tables import NA_VALUES, TableReader
from .writers import ResultWriter, atomic_output, on_forced_exit, remove_partial_outputs

__all__ = [
    "Chunk", "ChunkData", "ChunkReader", "InputKind", "DataFormat", "TableReader", "ImageFolderReader", "ArrayReader",
    "open_data", "read_all", "data_kind", "list_images", "load_image", "load_images", "image_mode_info",
    "ResultWriter", "atomic_output", "on_forced_exit", "remove_partial_outputs", "IMAGE_SUFFIXES", "TABLE_SUFFIXES", "TABLE_FORMATS",
    "ARRAY_FORMATS", "NA_VALUES",
]
