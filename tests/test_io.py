"""Chunked readers: every row accounted for, whatever the chunk size, quoting or line endings."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.exceptions import InputError
from anomaly_vae.io import (ArrayReader, ChunkReader, ImageFolderReader, ResultWriter, TableReader, atomic_output,
                            data_kind, image_mode_info, list_images, load_image, open_data, read_all,
                            remove_partial_outputs)

PIL = pytest.importorskip("PIL.Image")


def rows(path: Path, batch_size: int, **kw: object) -> tuple[pd.DataFrame, list[str | None], list[int]]:
    with TableReader(path, batch_size=batch_size, **kw) as r:  # type: ignore[arg-type]
        chunks = list(r)
    return (pd.concat([c.data for c in chunks], ignore_index=True), [e for c in chunks for e in c.errors],
            [len(c) for c in chunks])


@pytest.mark.parametrize("batch_size", [1, 2, 7, 64, 10_000])
def test_chunks_give_every_row_once_in_order(cardio: pd.DataFrame, tmp_path: Path, batch_size: int) -> None:
    df = cardio.head(150)
    path = tmp_path / "t.csv"
    df.to_csv(path, index=False)
    got, errors, sizes = rows(path, batch_size)
    pd.testing.assert_frame_equal(got, df)
    assert errors == [None] * 150 and max(sizes) <= max(batch_size, 1)


def test_ids_read_as_written_in_every_block_and_a_label_id_column_keeps_its_values(tmp_path: Path) -> None:
    """'007' was 7 in a block of numbers-only ids and '007' in a block with a text id; an id column
    that is also the label column keeps the label's values (the review of the first fix: forced to
    text, label 0 became '0' and no row had the normal label)."""
    path = tmp_path / "t.csv"
    path.write_text("id,y,a\n007,0,1.5\n008,1,2.5\nx9,0,3.5\nNA,1,NA\n,0,1\n")
    with TableReader(path, batch_size=2, id_column="id") as r:
        chunks = list(r)
    # "NA" is an id (Namibia), as Spark reads it; only an empty id is missing; "NA" elsewhere is missing
    ids = [i for c in chunks for i in c.ids]
    assert ids[:4] == ["007", "008", "x9", "NA"] and pd.isna(ids[4])
    assert pd.concat([c.data for c in chunks])["a"].isna().tolist() == [False, False, False, True, False]
    with TableReader(path, batch_size=2, id_column="y", label_column="y") as r:
        assert [lab for c in r for lab in c.labels] == [0, 1, 0, 1, 0]


def test_parquet_integer_ids_with_a_null_are_kept_as_integers(tmp_path: Path) -> None:
    """Second hostile review: pandas turned an int64 id column with a null into floats (7.0,
    1.2345678901234568e+16 for 12345678901234567)."""
    path = tmp_path / "t.parquet"
    pd.DataFrame({"id": pd.array([7, None, 12345678901234567], dtype="Int64"), "a": [1.0, 2.0, 3.0]}).to_parquet(path)
    with TableReader(path, batch_size=2, id_column="id") as r:
        assert [i for c in r for i in c.ids] == [7, None, 12345678901234567]


def test_every_decimal_reads_as_python_reads_it(tmp_path: Path) -> None:
    """A CSV cell is the float that ``float()`` (and so a JSON request) gives: pandas before 3.1 read
    about one in five of these a unit in the last place off with its default parser, so a batch job
    scored them differently from the same rows sent to the service."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 3)) * 10.0 ** rng.integers(-20, 20, (4000, 3))
    path = tmp_path / "t.csv"
    path.write_text("a,b,c\n" + "".join(f"{a!r},{b!r},{c!r}\n" for a, b, c in x.tolist()))
    got, errors, _ = rows(path, 1000)
    assert errors == [None] * 4000
    np.testing.assert_array_equal(got.to_numpy(), x)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_quoted_fields_with_separators_and_newlines(tmp_path: Path, batch_size: int) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(b'\xef\xbb\xbfid,note,x\r\n1,"a, b",0.5\r\n2,"two\nlines",1.5\r\n\r\n3,"say ""hi""",2\r\n4,plain,3\r\n')
    got, errors, _ = rows(path, batch_size)
    assert got.columns.tolist() == ["id", "note", "x"]  # the byte-order mark is not part of the first name
    assert got["note"].tolist() == ["a, b", "two\nlines", 'say "hi"', "plain"]  # the blank line is not a row
    assert got["x"].tolist() == [0.5, 1.5, 2.0, 3.0] and errors == [None] * 4


def test_wrong_field_counts_are_row_errors_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n\n6,7,8,9\n10,11,12\n")
    got, errors, _ = rows(path, 2)
    assert len(got) == 4
    assert errors[1] == "line 3: expected 3 fields, found 2 (separator ',')"
    assert errors[2] == "line 5: expected 3 fields, found 4 (separator ',')"
    assert errors[0] is None and errors[3] is None
    assert got["a"].tolist()[3] == 10 and got.iloc[1].isna().all()


def test_separator_is_sniffed(tmp_path: Path) -> None:
    for sep, name in ((";", "s.csv"), ("\t", "t.txt"), ("|", "p.csv")):
        path = tmp_path / name
        path.write_text(sep.join(["a", "b"]) + "\n" + sep.join(["1.5", "x"]) + "\n")
        with TableReader(path) as r:
            assert r.sep == sep and r.columns == ["a", "b"]


def test_empty_file_and_duplicate_header(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("\n\n")
    with pytest.raises(InputError, match="the file is empty"):
        TableReader(tmp_path / "e.csv")
    (tmp_path / "d.csv").write_text("a,b,a\n1,2,3\n")
    with pytest.raises(InputError, match=r"duplicate column name\(s\) \['a'\]"):
        TableReader(tmp_path / "d.csv")


def test_categorical_columns_read_as_text_keep_leading_zeros(tmp_path: Path) -> None:
    path = tmp_path / "z.csv"
    path.write_text("zip,x\n007,1\n010,2\n")
    got, _, _ = rows(path, 10, dtypes={"zip": str})
    assert got["zip"].tolist() == ["007", "010"]


def test_read_all_refuses_unreadable_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(InputError, match="1 unreadable row"):
        read_all(TableReader(path))


def test_npy_object_arrays_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="unpickle"):
        ArrayReader(tmp_path / "o.npy")


def test_images_are_listed_sorted_and_converted(tmp_path: Path, fashion_sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = fashion_sample
    (tmp_path / "b").mkdir()
    PIL.fromarray(images[0]).save(tmp_path / "b" / "x.PNG")
    PIL.fromarray(images[1]).convert("RGB").save(tmp_path / "a.bmp")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "notes.md").write_text("")
    paths, skipped = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a.bmp", "b/x.PNG"] and skipped == 2
    grey = load_image(tmp_path / "b" / "x.PNG", None, 1)
    np.testing.assert_array_equal(grey[0], images[0].astype(np.float32) / 255)
    colour = load_image(tmp_path / "b" / "x.PNG", (14, 20), 3)
    assert colour.shape == (3, 14, 20) and colour.dtype == np.float32


def test_every_reader_says_what_it_reads(tmp_path: Path, fashion_sample: tuple[np.ndarray, np.ndarray]) -> None:
    """The ``ChunkReader`` protocol: format, kind (table or image), columns, rows and skipped files
    are typed attributes of every reader, not guessed from which attributes it happens to have."""
    images, _ = fashion_sample
    pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}).to_parquet(tmp_path / "t.parquet")
    np.save(tmp_path / "t.npy", np.zeros((3, 2)))
    np.savez(tmp_path / "i.npz", X=images[:3])
    (tmp_path / "folder").mkdir()
    for i in range(3):
        PIL.fromarray(images[i]).save(tmp_path / "folder" / f"{i}.png")
    (tmp_path / "folder" / "notes.txt").write_text("")
    expected = {
        "t.csv": ("csv", "table", ["a", "b"], None, 0),
        "t.parquet": ("parquet", "table", ["a", "b"], 3, 0),
        "t.npy": ("npy", "table", ["x0", "x1"], 3, 0),
        "i.npz": ("npz", "image", None, 3, 0),
        "folder": ("images", "image", None, 3, 1),
    }
    for name, (fmt, kind, columns, n_rows, skipped) in expected.items():
        with open_data(tmp_path / name, image_size=(28, 28)) as reader:
            assert isinstance(reader, ChunkReader)
            assert (reader.format, reader.kind, reader.columns, reader.n_rows, reader.skipped) == (
                fmt, kind, columns, n_rows, skipped), name
            assert reader.path == tmp_path / name
            assert sum(len(c) for c in reader) == 3


def test_decompression_bomb_guard_stays_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    PIL.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels > 1000: Pillow's warning, an error here
    with pytest.raises(InputError, match="too many pixels"):
        load_image(tmp_path / "big.png", None, 1)


def test_writer_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(RuntimeError):
        with ResultWriter(target) as w:
            w.write(pd.DataFrame({"a": [1]}))
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []
    with ResultWriter(target) as w:
        w.write(pd.DataFrame({"a": [1]}))
        w.write(pd.DataFrame({"a": [2]}))
        w.commit()
    assert target.read_text() == '"a"\n1\n2\n' and list(tmp_path.iterdir()) == [target]


def test_writer_partial_files_are_removed_by_a_forced_exit(tmp_path: Path) -> None:
    """A second stop signal exits without running the writers' cleanup: the CLI calls
    remove_partial_outputs() first, which must know every .part still being written."""
    w = ResultWriter(tmp_path / "out.csv")
    w.write(pd.DataFrame({"a": [1]}))
    with atomic_output(tmp_path / "m.json") as tmp:
        tmp.write_text("{")
        assert sorted(p.name.split(".")[1] for p in tmp_path.iterdir()) == ["m", "out"]
        remove_partial_outputs()
        assert list(tmp_path.iterdir()) == []
        tmp.write_text("{}")  # the block goes on and ends normally: the file appears whole
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
    w.abort()  # its .part is gone already: no error


def test_atomic_output_leaves_nothing_on_interrupt(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "m.json") as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt  # what SIGTERM becomes in the CLI
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"] and (tmp_path / "m.json").read_text() == "old"


# -- files that are not regular files ----------------------------------------------------------
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


def call_unless_blocked(fn: Callable[[], Any], fifos: list[Path], timeout: float = 10.0) -> Any:
    """fn() in a thread; if it is still running after ``timeout`` (blocked opening or reading one
    of ``fifos``), release it by opening the FIFOs' write ends, and fail."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the test's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the reader gets end of file
            except OSError:
                pass
        thread.join(timeout)
        pytest.fail(f"still blocked after {timeout} s: a FIFO was opened for reading")
    if "error" in result:
        raise result["error"]
    return result["value"]


@needs_fifo
def test_fifo_named_like_an_image_is_an_error_row_not_a_hang(tmp_path: Path, fashion_sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = fashion_sample
    PIL.fromarray(images[0]).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "x.png")
    os.symlink(tmp_path / "x.png", tmp_path / "link-to-fifo.png")
    os.symlink(os.devnull, tmp_path / "device.png")
    os.symlink(tmp_path / "a.png", tmp_path / "link-to-image.png")  # a link to a regular file is read
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.png"))
        chunks = call_unless_blocked(lambda: list(ImageFolderReader(tmp_path, (28, 28), 1)), [tmp_path / "x.png"])
    assert len(chunks) == 1
    errors = dict(zip(chunks[0].ids, chunks[0].errors))
    assert list(errors) == ["a.png", "device.png", "link-to-fifo.png", "link-to-image.png", "s.png", "x.png"]
    assert errors["a.png"] is None and errors["link-to-image.png"] is None
    assert errors["x.png"] == f"{tmp_path / 'x.png'}: not a regular file but a named pipe (FIFO); not opened"
    assert errors["link-to-fifo.png"].endswith("link-to-fifo.png: not a regular file but a named pipe (FIFO); not opened")
    assert errors["device.png"].endswith("device.png: not a regular file but a character device; not opened")
    assert errors["s.png"].endswith("s.png: not a regular file but a socket; not opened")
    assert chunks[0].data.shape == (2, 1, 28, 28)  # only the two readable files are decoded
    for fn in (load_image, lambda p, *_: image_mode_info(p)):
        with pytest.raises(InputError, match="x.png: not a regular file"):
            call_unless_blocked(lambda: fn(tmp_path / "x.png", None, 1), [tmp_path / "x.png"])


@needs_fifo
def test_fifo_as_the_input_file_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Every reader seeks or maps its file, and a read blocked on a pipe would keep a stopped job
    from exiting: a FIFO given as the input is refused by its type, before it is opened."""
    for name in ("in.csv", "in.parquet", "in.npy"):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        with pytest.raises(InputError, match=f"{name}: not a regular file but a named pipe"):
            call_unless_blocked(lambda: open_data(fifo), [fifo])
    with pytest.raises(InputError, match="not a regular file"):
        call_unless_blocked(lambda: TableReader(tmp_path / "in.csv"), [tmp_path / "in.csv"])
    assert data_kind(tmp_path) == "images"
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        data_kind(tmp_path / "in.csv" / "below")
