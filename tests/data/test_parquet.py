"""``distil.data.readers.parquet``: Arrow IPC files (the streaming format ``datasets`` writes
and the random-access one) read row by row like Parquet, from a ``save_to_disk`` folder too."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.ipc as ipc

from distil.data.readers import Document, list_inputs, read_records


def _texts(recs: list) -> list[str]:
    return [r.text if isinstance(r, Document) else r.reason for r in recs]


def test_arrow_stream_and_file_formats_read_every_row(tmp_path):
    table = pa.table({"id": [f"i{k}" for k in range(50)], "text": [f"row {k}" for k in range(50)]})
    with ipc.new_stream(tmp_path / "s.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=7):
            w.write_batch(batch)
    feather.write_feather(table, tmp_path / "f.arrow", chunksize=9)
    for name in ("s.arrow", "f.arrow"):
        recs = list(read_records(str(tmp_path / name), name, "auto", id_column="id"))
        assert _texts(recs) == [f"row {k}" for k in range(50)], name
        assert [r.offset for r in recs] == list(range(50))
        assert recs[3].doc_id == "i3"
    # without the id column: file:row; without the text column: one dead letter
    recs = list(read_records(str(tmp_path / "s.arrow"), "s.arrow", "auto"))
    assert recs[4].doc_id == "s.arrow:4"
    (dead,) = read_records(str(tmp_path / "s.arrow"), "s.arrow", "auto", text_column="body")
    assert dead.reason == "missing_text_column" and "'text'" in dead.detail


def test_a_save_to_disk_folder_reads_like_load_from_disk(tmp_path):
    import datasets

    texts = [f"document number {k}" if k % 9 else "" for k in range(40)]
    ds = datasets.Dataset.from_dict({"text": texts, "n": list(range(40))}).shuffle(seed=1)
    ds = ds.select(range(30))  # an indices mapping: save_to_disk writes the rows it selects
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    urls = list_inputs([str(tmp_path / "ds")]).urls
    recs = [r for u in urls for r in read_records(u, u, "auto")]
    want = datasets.load_from_disk(str(tmp_path / "ds"))["text"]
    assert _texts(recs) == [t or "empty_text" for t in want]
