"""Columnar inputs: Parquet files and Arrow IPC files (a ``datasets`` save_to_disk folder is a
folder of the latter), one record a row, read by record batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from distil import storage
from distil.data.readers.records import DeadLetter, Record, _from_mapping

ARROW_FILE_MAGIC = b"ARROW1"


def read_parquet(
    url: str,
    source: str,
    text_column: str,
    id_column: str | None,
    batch_rows: int = 1024,
    row_groups: tuple[int, int | None] | None = None,
    first_row: int = 0,
) -> Iterator[Record]:
    """The rows of ``url``, or of its row groups ``[start, end)`` (a range of it, whose first
    row is ``first_row``); the offset is the row's number in the file."""
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        columns = _columns(names, text_column, id_column)
        start, end = row_groups or (0, None)
        if columns is None:
            if start == 0:  # one record for the whole file, given by its first range
                yield DeadLetter(source, 0, "missing_text_column", f"columns: {names[:20]}")
            return
        groups = range(start, pf.num_row_groups if end is None else end)
        batches = pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=columns)
        yield from batch_records(batches, source, text_column, id_column, first_row)


def read_arrow(url: str, source: str, text_column: str, id_column: str | None) -> Iterator[Record]:
    """An Arrow IPC file, in the streaming format (what ``datasets`` writes) or the random
    access one (Feather v2); the offset is the row's number in the file."""
    import pyarrow.ipc as ipc

    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        random_access = f.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC
        f.seek(0)
        if random_access:
            reader: Any = ipc.open_file(f)
            batches: Iterable[Any] = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            reader = batches = ipc.open_stream(f)
        names = reader.schema.names
        columns = _columns(names, text_column, id_column)
        if columns is None:
            yield DeadLetter(source, 0, "missing_text_column", f"columns: {names[:20]}")
            return
        selected = (batch.select(columns) for batch in batches)
        yield from batch_records(selected, source, text_column, id_column, 0)


def _columns(names: list[str], text_column: str, id_column: str | None) -> list[str] | None:
    if text_column not in names:
        return None
    return [text_column] + ([id_column] if id_column and id_column in names else [])


def batch_records(
    batches: Iterable[Any], source: str, text_column: str, id_column: str | None, first_row: int
) -> Iterator[Record]:
    """One record per row of ``batches`` (Arrow record batches holding the text column and,
    if present, the id column); ``first_row`` is the first row's offset."""
    row = first_row
    for batch in batches:
        cols = batch.to_pydict()
        ids = cols.get(id_column) if id_column else None
        for i, text in enumerate(cols[text_column]):
            obj = {text_column: text}
            if ids is not None:
                obj[id_column] = ids[i]  # type: ignore[index]
            yield _from_mapping(obj, source, row, text_column, id_column)
            row += 1
