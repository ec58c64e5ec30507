from __future__ import annotations

import io

import pytest
from prepare_corpus import ARTICLE_1_DROP, ARTICLE_1_KEEP

from distil.data.readers import (
    DeadLetter,
    Document,
    Skipped,
    detect_format,
    list_inputs,
    read_records,
    read_text,
    wikitext_to_text,
)


def records(path, fmt="auto", **kw):
    return list(read_records(str(path), path.name, fmt, **kw))


def docs_of(recs):
    return [r for r in recs if isinstance(r, Document)]


def test_detect_format_handles_split_dump_names():
    assert detect_format("x/enwiki-latest-pages-articles1.xml-p000000010p000030302.bz2") == "wiki"
    assert detect_format("a/b.xml.bz2") == "wiki"
    assert detect_format("book.txt") == "text"
    assert detect_format("n.jsonl.gz") == "jsonl"
    assert detect_format("r.parquet") == "parquet"
    assert detect_format("manifest.json") == "jsonl"
    assert detect_format("notes.md") is None


def test_wiki_keeps_main_namespace_articles_as_plain_text(good_corpus):
    root, expected = good_corpus
    path = root / "wiki" / "enwiki-test-pages-articles1.xml-p1p30.bz2"
    recs = records(path)
    docs = docs_of(recs)
    assert [d.doc_id for d in docs] == ["1", "10", "11", "12"]
    skipped = sorted(r.reason for r in recs if isinstance(r, Skipped))
    assert skipped == ["namespace_1", "namespace_4", "redirect"]
    assert len(recs) == 7  # one record per <page>
    ada = docs[0].text
    for word in ARTICLE_1_KEEP:
        assert word in ada
    for word in ARTICLE_1_DROP:
        assert word not in ada
    assert all("must not appear" not in d.text and "''" not in d.text for d in docs)
    assert all("stub" not in d.text and d.text.strip() for d in docs)
    assert [d.offset for d in docs] == [0, 4, 5, 6]  # page ordinals


def test_wikitext_to_text_unwraps_links_and_drops_markup():
    text = wikitext_to_text("A [[b|shown]] c<ref name=x/> ''d'' {{t|e}} [[Image:x.png|cap]].")
    assert text == "A shown c d ."
    text = wikitext_to_text("'''Ada''''s ''italic'' '''''both''''' rock 'n' roll")
    assert text == "Ada's italic both rock 'n' roll"


def test_book_is_one_document_streamed_in_paragraphs(good_corpus):
    root, expected = good_corpus
    for name in ("books/book-0.txt", "books/book-1.txt"):
        recs = records(root / name)
        assert all(isinstance(r, Document) for r in recs)
        assert [r.continues for r in recs] == [False] + [True] * (len(recs) - 1)
        assert len(recs) == 8
        assert " ".join(r.text for r in recs) == expected[name][0]
        assert {r.doc_id for r in recs} == {name.split("/")[1]}


def test_jsonl_and_parquet_text_and_id_columns(good_corpus):
    root, expected = good_corpus
    js = records(root / "news.jsonl", id_column="id")
    assert [d.text for d in js] == expected["news.jsonl"]
    assert [d.doc_id for d in js[:2]] == ["n0", "n1"]
    pq_docs = records(root / "reviews.parquet", id_column="id")
    assert [d.text for d in pq_docs] == expected["reviews.parquet"]
    assert [d.offset for d in pq_docs[:3]] == [0, 1, 2]
    assert pq_docs[1].doc_id == "p1"
    # a configurable column name: a missing column is one clear dead letter, not a crash
    missing = records(root / "reviews.parquet", text_column="body")
    assert len(missing) == 1 and missing[0].reason == "missing_text_column"


def test_bad_inputs_become_dead_letters_with_offsets(bad_corpus):
    root, expected = bad_corpus
    for name, exp in expected.items():
        recs = records(root / name)
        dead = [r for r in recs if isinstance(r, DeadLetter)]
        assert [d.reason for d in dead] == exp["reasons"], name
        assert all(d.source == name for d in dead)
        if exp["docs"] is not None:
            assert [d.text for d in docs_of(recs)] == exp["docs"], name
            assert len(recs) == exp["records"], name
    # offsets point at the bad line: the 10 MB line starts right after the 6 lines before it
    raw = (root / "bad.jsonl").read_bytes()
    dead = [r for r in records(root / "bad.jsonl") if isinstance(r, DeadLetter)]
    too_long = next(d for d in dead if d.reason == "line_too_long")
    assert raw[too_long.offset : too_long.offset + 10] == b'{"text": "'
    assert raw[: too_long.offset].count(b"\n") == 6
    # a truncated dump keeps the pages before the cut
    wiki = records(root / "truncated-pages-articles.xml.bz2")
    assert 0 < len(docs_of(wiki)) < 40
    assert isinstance(wiki[-1], DeadLetter) and wiki[-1].offset == len(docs_of(wiki))


def test_long_line_is_not_held_in_memory():
    # 3 MB line against a 64 KiB limit: dead-lettered, the following line still read
    data = b"a" * (3 << 20) + b"\nshort line\n"
    recs = list(read_text(io.BytesIO(data), "mem.txt", max_line_bytes=64 << 10))
    assert [type(r).__name__ for r in recs] == ["DeadLetter", "Document"]
    assert recs[0].reason == "line_too_long" and recs[1].offset == (3 << 20) + 1


def test_list_inputs_walks_folders_and_globs(good_corpus, tmp_path):
    root, expected = good_corpus
    (root / "_markers").mkdir()
    (root / "_markers" / "x.jsonl").write_text("{}\n")
    (root / "manifest.json").write_text("{}")
    (root / "README.md").write_text("not data")
    found = list_inputs([str(root)])
    assert [f.split("corpus/", 1)[1] for f in found.urls] == sorted(expected)
    # markers and the manifest are not inputs; a file no reader takes is refused, not dropped
    assert [(r.url, r.reason) for r in found.refused] == [
        (str(root / "README.md"), "no reader for this file type (.md)")
    ]
    assert list_inputs([str(root / "books" / "*.txt")]).urls == sorted(
        str(p) for p in (root / "books").glob("*.txt")
    )
    with pytest.raises(FileNotFoundError):
        list_inputs([str(tmp_path / "nope")])


def test_book_without_blank_lines_is_streamed_in_bounded_pieces():
    lines = [f"line {i} of a book that never has a blank line" for i in range(2000)]
    data = ("\n".join(lines) + "\n").encode()
    recs = list(read_text(io.BytesIO(data), "wall.txt", 1 << 20, max_piece_chars=10_000))
    assert len(recs) > 5 and all(isinstance(r, Document) for r in recs)
    assert all(len(r.text) < 10_000 + 100 for r in recs)
    assert [r.continues for r in recs] == [False] + [True] * (len(recs) - 1)
    assert " ".join(r.text for r in recs) == " ".join(lines)
    assert data[recs[1].offset :].startswith(b"line ")
