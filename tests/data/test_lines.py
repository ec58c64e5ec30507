"""``distil.data.readers.lines``: a ``.json`` file is one JSON array or one object a line; an
array is read element by element (never whole), one record per element, and bad elements,
an array that does not close or data after it are dead letters with byte offsets."""

from __future__ import annotations

import gzip
import io
import json
import random

import pytest
from prepare_corpus import paragraph

from distil.data.readers import DeadLetter, Document, lines, read_json_array, read_records


def _array_records(data: bytes, max_bytes: int = 1 << 20) -> list:
    return list(read_json_array(io.BytesIO(data), "a.json", "text", "id", max_bytes))


def _kinds(recs: list) -> list[str]:
    return [r.text if isinstance(r, Document) else r.reason for r in recs]


TRICKY = [
    {"id": "q", "text": 'quotes " and \\ backslashes, a ] and a } and a , inside'},
    {"id": "u", "text": 'unicode é \u2603 and an escaped "quote" \\" after'},
    {"id": "n", "text": "nested values", "meta": {"a": [1, {"b": "]}"}], "c": []}},
    {"text": "no id", "list": [[[]]]},
]


@pytest.mark.parametrize("indent", [None, 2])
def test_an_array_gives_one_record_per_element_with_byte_offsets(indent, tmp_path):
    data = ("\n \t" + json.dumps(TRICKY, indent=indent) + "\n").encode()
    recs = _array_records(data)
    assert _kinds(recs) == [e["text"] for e in TRICKY]
    assert [r.doc_id for r in recs] == ["q", "u", "n", f"a.json:{recs[3].offset}"]
    for rec, element in zip(recs, TRICKY, strict=True):  # each offset is the element's start
        assert json.JSONDecoder().raw_decode(data[rec.offset :].decode())[0] == element
    # the same through read_records, for a .json file compressed or not
    (tmp_path / "a.json").write_bytes(data)
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(data))
    for name in ("a.json", "b.json.gz"):
        got = list(read_records(str(tmp_path / name), name, "auto", id_column="id"))
        assert _kinds(got) == _kinds(recs) and [r.offset for r in got] == [r.offset for r in recs]


def test_elements_split_across_read_chunks_read_the_same(monkeypatch):
    data = json.dumps(TRICKY * 5).encode()
    whole = _array_records(data)
    for size in (1, 2, 3, 7, 64):  # every structural byte and escape lands on a chunk edge
        monkeypatch.setattr(lines, "_READ", size)
        assert _array_records(data) == whole, size


def test_bad_elements_are_dead_letters_and_reading_goes_on():
    good = json.dumps({"text": "good one"})
    data = (
        f'[{good}, {{"text": "a" "b"}}, 42, {{"text": 7}}, {{"text": "  "}}, , '
        f'{{"text": "caf\xe9"}}, {{"id": 1}}, {good}]'
    ).encode("latin-1")
    recs = _array_records(data)
    assert _kinds(recs) == [
        "good one",
        "malformed_json",
        "not_an_object",
        "text_not_string",
        "empty_text",
        "malformed_json",  # the empty element between two commas
        "undecodable_utf8",
        "missing_text",
        "good one",
    ]
    # each offset is where its element starts (the empty one: at the comma that ends it)
    assert [data[r.offset : r.offset + 1] for r in recs] == [b"{"] + [b"{", b"4", b"{", b"{"] + [
        b",",
        b"{",
        b"{",
        b"{",
    ]


def test_an_empty_array_has_no_records_and_a_trailing_comma_is_one_dead_letter():
    assert _array_records(b"[]") == [] and _array_records(b" [ \n ] \n") == []
    recs = _array_records(b'[{"text": "x"},]')
    assert _kinds(recs) == ["x", "malformed_json"]


def test_an_unclosed_array_and_data_after_it_end_the_file_with_one_dead_letter():
    recs = _array_records(b'[{"text": "kept"}, {"text": "cut of')
    assert _kinds(recs) == ["kept", "malformed_json"]
    assert "no closing ]" in recs[1].detail and recs[1].offset == 19
    recs = _array_records(b'[{"text": "kept"}]\n[{"text": "second array"}]\n')
    assert _kinds(recs) == ["kept", "malformed_json"]
    assert "data after the closing ]" in recs[1].detail and recs[1].offset == 19


def test_an_element_over_the_limit_is_skipped_without_being_held():
    big = "word " * 100_000  # 500 KB
    data = json.dumps([{"text": "before"}, {"text": big}, {"text": "after"}]).encode()
    recs = _array_records(data, max_bytes=64 << 10)
    assert _kinds(recs) == ["before", "line_too_long", "after"]
    assert recs[1].offset == data.index(b'{"text": "word')


def test_json_lines_named_json_stay_json_lines_and_jsonl_never_sniffs(tmp_path):
    rows = b'{"text": "one"}\n{"text": "two"}\n'
    (tmp_path / "a.json").write_bytes(rows)
    assert _kinds(list(read_records(str(tmp_path / "a.json"), "a.json", "auto"))) == ["one", "two"]
    # an array in a .jsonl file is a JSON line that is not an object (a .jsonl is never an array)
    (tmp_path / "b.jsonl").write_bytes(b'[{"text": "one"}]\n')
    (rec,) = read_records(str(tmp_path / "b.jsonl"), "b.jsonl", "auto")
    assert isinstance(rec, DeadLetter) and rec.reason == "not_an_object"


def test_a_truncated_compressed_file_ends_with_one_dead_letter_after_its_records(tmp_path):
    import lzma

    import zstandard

    rng = random.Random(4)
    rows = [{"text": f"document {i} " + paragraph(rng, 3)} for i in range(3000)]
    array = json.dumps(rows).encode()
    lines_ = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    cases = {
        "a.json.gz": gzip.compress(array),
        "b.jsonl.zst": zstandard.ZstdCompressor().compress(lines_),
        "c.ndjson.xz": lzma.compress(lines_),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
        recs = list(read_records(str(tmp_path / name), name, "auto"))
        assert 1000 < len(recs) - 1 < 3000, (name, len(recs))
        assert all(isinstance(r, Document) for r in recs[:-1]), name
        assert recs[-1].reason == "truncated_compressed_stream", name
