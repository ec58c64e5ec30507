"""Parquet inputs: one record a row, read by row batch."""

from __future__ import annotations

from collections.abc import Iterator

from distil import storage
from distil.data.readers.records import DeadLetter, Record, _from_mapping


def read_parquet(
    url: str, source: str, text_column: str, id_column: str | None, batch_rows: int = 1024
) -> Iterator[Record]:
    import pyarrow.parquet as pq

    fs, path = storage.arrow_filesystem(url)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        if text_column not in names:
            yield DeadLetter(source, 0, "missing_text_column", f"columns: {names[:20]}")
            return
        columns = [text_column] + ([id_column] if id_column and id_column in names else [])
        row = 0
        for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            cols = batch.to_pydict()
            ids = cols.get(id_column) if id_column else None
            for i, text in enumerate(cols[text_column]):
                obj = {text_column: text}
                if ids is not None:
                    obj[id_column] = ids[i]  # type: ignore[index]
                yield _from_mapping(obj, source, row, text_column, id_column)
                row += 1
