"""``distil.data.readers.delimited``: CSV/TSV corpus files through ``read_records``: one record
a data row (a quoted field over several lines kept whole), ``--text-column``/``--id-column``
by header name, and every bad row a dead letter at its byte offset."""

from __future__ import annotations

import csv
import io

from distil.data.readers import DeadLetter, Document, read_records


def _recs(tmp_path, name: str, data: bytes, **kw) -> list:
    (tmp_path / name).write_bytes(data)
    return list(read_records(str(tmp_path / name), name, "auto", **kw))


def _kinds(recs: list) -> list[str]:
    return [r.text if isinstance(r, Document) else r.reason for r in recs]


def _csv(rows: list[list[str]], delimiter: str = ",", newline: str = "\r\n") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, delimiter=delimiter, lineterminator=newline).writerows(rows)
    return buf.getvalue().encode()


def test_quoted_fields_over_several_lines_are_one_document(tmp_path):
    texts = ["one line", 'two\nlines, a "quote" and a comma', "three\r\n\r\nlines", "last"]
    data = _csv([["id", "stars", "text"]] + [[f"r{i}", "5", t] for i, t in enumerate(texts)])
    recs = _recs(tmp_path, "a.csv", data, id_column="id")
    assert _kinds(recs) == texts
    assert [r.doc_id for r in recs] == ["r0", "r1", "r2", "r3"]
    for rec in recs:  # each offset is where the row starts
        assert data[rec.offset :].startswith(f"{rec.doc_id},".encode())
    # TSV, with the default id (file:offset) and a header with a byte-order mark and spaces
    data = "\ufeff text \tx\n".encode() + _csv([[t, "1"] for t in texts], "\t", "\n")
    recs = _recs(tmp_path, "b.tsv", data)
    assert _kinds(recs) == texts and recs[0].doc_id == f"b.tsv:{len(' text  x') + 3 + 1}"


def test_bad_rows_are_dead_letters_and_the_rows_after_them_are_read(tmp_path):
    data = (
        b"id,text\r\n"
        b"1,good\r\n"
        b"2,too,many\r\n"
        b"3\r\n"
        b"4,\r\n"
        b'5,"never closed\r\n'
        b"6,after the quote\r\n"
        b"7,caf\xe9\r\n"
        b"\xff,bad id bytes\r\n"
        b',"no id, default one"\r\n'
    )
    recs = _recs(tmp_path, "a.csv", data, id_column="id")
    assert _kinds(recs) == [
        "good",
        "malformed_row",
        "malformed_row",
        "empty_text",
        "unclosed_quote",
        "after the quote",
        "undecodable_utf8",
        "undecodable_utf8",
        "no id, default one",
    ]
    assert all(data[r.offset : r.offset + 1] in b"1234567\xff," for r in recs)
    assert "bytes [" in recs[4].detail  # names the line it confined the quote to
    assert recs[-1].doc_id == f"a.csv:{recs[-1].offset}"


def test_a_header_without_the_text_column_is_one_dead_letter(tmp_path):
    recs = _recs(tmp_path, "a.csv", _csv([["id", "body"], ["1", "x"], ["2", "y"]]))
    assert len(recs) == 1 and recs[0].reason == "missing_text_column"
    assert "'body'" in recs[0].detail
    assert _kinds(_recs(tmp_path, "b.csv", _csv([["id", "body"]]), text_column="body")) == []
    assert _recs(tmp_path, "empty.csv", b"") == []


def test_a_row_over_the_limit_is_a_dead_letter(tmp_path):
    long = "word " * 2000
    data = _csv([["text"], ["short"], [long], ["after"]])
    recs = _recs(tmp_path, "a.csv", data, max_line_bytes=4096)
    assert _kinds(recs) == ["short", "line_too_long", "after"]
    assert isinstance(recs[1], DeadLetter) and recs[1].offset == len(b"text\r\nshort\r\n")
    assert f"{len(long) + 2} bytes > max_line_bytes=4096" in recs[1].detail
