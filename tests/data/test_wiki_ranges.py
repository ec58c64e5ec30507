"""A wiki dump split into byte ranges (point 5 of issue 11), on the real gensim dump excerpt laid
out as Wikimedia's multistream dump + index, as pbzip2-style streams, and as a single stream."""

from __future__ import annotations

import bz2
import logging
from pathlib import Path

import pytest
from prepare_corpus import real_wiki_xml, write_chunked_streams, write_multistream

from distil import storage
from distil.data.config import PrepareConfig
from distil.data.prepare_ranges import plan_units, run_serial
from distil.data.readers import Document, list_inputs, read_records
from distil.data.readers.wiki_ranges import BadIndexError, plan_ranges, read_wiki_range


@pytest.fixture(scope="module")
def xml() -> bytes:
    return real_wiki_xml()


def output_bytes(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.relative_to(out).as_posix().startswith("_")
    }


def key(rec) -> tuple:
    """A record without its offset (a range counts pages from its own first page)."""
    return (
        type(rec).__name__,
        getattr(rec, "doc_id", None),
        getattr(rec, "text", None) or rec.reason,
    )


def ranged_records(url: str, target: int) -> tuple[int, list]:
    ranges = plan_ranges(url, target)
    recs = [r for a, b in ranges for r in read_wiki_range(url, "x", a, b)]
    return len(ranges), recs


def test_multistream_dump_gives_the_same_bytes_for_any_range_size(xml, tmp_path):
    dump = write_multistream(xml, tmp_path / "in")
    assert list_inputs([str(tmp_path / "in")]).urls == [str(dump)]  # the index is not an input
    outputs = {}
    for target in (1 << 40, 300_000, 40_000):
        out = str(tmp_path / f"o{target}")
        cfg = PrepareConfig(input=str(tmp_path / "in"), output=out, wiki_range_bytes=target)
        [unit] = plan_units(cfg).units
        manifest = run_serial(cfg)
        assert manifest["records"]["in"] == 206 and manifest["records"]["documents"] == 106
        outputs[len(unit["ranges"])] = output_bytes(tmp_path / f"o{target}")
        assert not (tmp_path / f"o{target}" / "_parts" / "shard-00000").exists()
    assert sorted(outputs)[0] == 1 and sorted(outputs)[-1] >= 10
    one = outputs[1]
    assert set(one) == {"manifest.json", "shard-00000.parquet"}
    for n, files in outputs.items():
        assert files == one, f"{n} ranges wrote other bytes than 1 range"


@pytest.mark.parametrize("chunk", [100_003, 7_777])
def test_streams_cut_mid_page_are_split_without_an_index(xml, tmp_path, chunk):
    dump = write_chunked_streams(xml, tmp_path / f"cut{chunk}-pages-articles.xml.bz2", chunk)
    whole = [key(r) for r in read_records(str(dump), "x", "wiki")]
    assert len(whole) == 206
    for target in (200_000, 20_000):
        n, recs = ranged_records(str(dump), target)
        assert n > 3
        assert [key(r) for r in recs] == whole


def test_truncated_dump_dead_letters_the_same_page_for_any_range_size(xml, tmp_path):
    (tmp_path / "in").mkdir()
    dump = write_chunked_streams(xml, tmp_path / "in" / "cut-pages-articles.xml.bz2", 50_000)
    data = dump.read_bytes()
    dump.write_bytes(data[: len(data) * 3 // 4])
    outputs = []
    for target in (1 << 40, 60_000):
        out = tmp_path / f"o{target}"
        run_serial(PrepareConfig(input=str(dump), output=str(out), wiki_range_bytes=target))
        outputs.append(output_bytes(out))
    assert outputs[0] == outputs[1]
    dead = outputs[0]["dead_letter/shard-00000.jsonl"].decode()
    assert "truncated_compressed_stream" in dead


def test_single_stream_dump_stays_one_unit_with_a_warning(xml, tmp_path, caplog):
    dump = tmp_path / "one-pages-articles.xml.bz2"
    dump.write_bytes(bz2.compress(xml))
    with caplog.at_level(logging.WARNING, logger="distil.prepare"):
        assert plan_ranges(str(dump), 100_000) == [(0, dump.stat().st_size)]
    [msg] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(dump) in msg and "single bz2 stream" in msg and "multistream" in msg


def _rewrite_index(folder: Path, fn) -> None:
    [index] = folder.glob("*-index.txt.bz2")
    lines = bz2.decompress(index.read_bytes()).decode().splitlines()
    index.write_bytes(bz2.compress("".join(fn(ln) + "\n" for ln in lines).encode()))


def test_bad_index_is_a_clear_error(xml, tmp_path):
    dump = write_multistream(xml, tmp_path / "a")
    size = dump.stat().st_size
    _rewrite_index(
        tmp_path / "a", lambda ln: f"{int(ln.split(':')[0]) + size}:{ln.split(':', 1)[1]}"
    )
    with pytest.raises(BadIndexError, match=r"offset \d+ is beyond the end of .*multistream"):
        plan_ranges(str(dump), 50_000)

    dump = write_multistream(xml, tmp_path / "b")
    _rewrite_index(tmp_path / "b", lambda ln: f"{int(ln.split(':')[0]) + 1}:{ln.split(':', 1)[1]}")
    with pytest.raises(BadIndexError, match="is not the start of a bz2 stream"):
        plan_ranges(str(dump), 50_000)
    with pytest.raises(BadIndexError):
        run_serial(
            PrepareConfig(input=str(dump), output=str(tmp_path / "o"), wiki_range_bytes=50_000)
        )


def test_documents_of_ranges_are_the_documents_of_the_whole_dump(xml, tmp_path):
    dump = write_multistream(xml, tmp_path / "in", pages_per_stream=3)
    whole = [r for r in read_records(str(dump), "x", "wiki") if isinstance(r, Document)]
    _, recs = ranged_records(str(dump), 30_000)
    docs = [r for r in recs if isinstance(r, Document)]
    assert [(d.doc_id, d.text) for d in docs] == [(d.doc_id, d.text) for d in whole]
    assert storage.exists(str(dump))
