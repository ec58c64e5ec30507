"""The stage's unit of work and manifest, run in-process (the Ray job is tested in tests/jobs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distil import storage
from distil.data import shards
from distil.data.config import PrepareConfig
from distil.data.prepare_ranges import run_serial
from distil.data.readers import BadInputError, Document, read_records


def read_rows(out: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tables = [t for u in storage.committed_files(out) if (t := shards.read_table(u)).num_rows]
    ids = np.concatenate([shards.input_ids_matrix(t) for t in tables])
    seq = np.concatenate([t.column("seq_id").to_numpy() for t in tables])
    lengths = np.concatenate([t.column("length").to_numpy() for t in tables])
    return seq, ids, lengths


def check_prepared(out: str, tokenizer_dir: Path, expected_texts: list[str]) -> dict:
    """Acceptance 1 on a committed output: row shape, token multiset, manifest counts."""
    from tokenizers import Tokenizer

    manifest = shards.open_prepared(out)
    seq_len = manifest["seq_len"]
    sp = manifest["special_ids"]
    seq, ids, lengths = read_rows(out)
    assert ids.shape == (manifest["rows"], seq_len)
    assert (ids[:, 0] == sp["cls"]).all()
    assert (lengths <= seq_len).all() and (lengths >= 3).all()
    assert (ids[np.arange(len(ids)), lengths - 1] == sp["sep"]).all()
    assert all((row[n:] == sp["pad"]).all() for row, n in zip(ids, lengths, strict=True))
    assert len(np.unique(seq)) == len(seq)
    # nothing lost or duplicated: non-special tokens == the tokenizer's output on the documents
    t = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    t.no_truncation()
    t.no_padding()
    want = np.zeros(manifest["vocab_size"], np.int64)
    for enc in t.encode_batch(expected_texts, add_special_tokens=False):
        want += np.bincount(np.asarray(enc.ids, np.int64), minlength=manifest["vocab_size"])
    special = [sp["cls"], sp["sep"], sp["pad"]]
    got = np.bincount(ids.reshape(-1), minlength=manifest["vocab_size"])
    got_content, want_content = got.copy(), want.copy()
    got_content[special] = 0
    want_content[special] = 0
    assert np.array_equal(got_content, want_content)
    # manifest counts equal the data
    assert manifest["tokens"] == int(lengths.sum())
    assert sum(manifest["token_counts"]) == manifest["tokens"]
    got[sp["pad"]] = 0
    assert manifest["token_counts"] == got.tolist()
    assert manifest["padding_fraction"] == pytest.approx(1 - lengths.sum() / ids.size)
    for f in manifest["files"]:
        t_ = shards.read_table(storage.join(out, f["name"]))
        assert f["rows"] == t_.num_rows
        assert f["tokens"] == int(np.asarray(t_.column("length")).sum())
    return manifest


def kept_texts(inputs: list[str], out: str) -> list[str]:
    """The text pieces of every document of ``inputs`` (the stage's sorted input URLs) that a
    committed output keeps: all of them, less those its dedup audit list names."""
    from distil.data.prepare import input_names

    manifest = storage.read_manifest(out)
    removed: set[tuple[str, int]] = set()
    if manifest["dedup"]["enabled"]:
        t = shards.read_table(storage.join(out, manifest["dedup"]["removed_file"]))
        cols = (t.column("input").to_pylist(), t.column("ordinal").to_pylist())
        removed = set(zip(*cols, strict=True))
    texts = []
    for url, name in zip(inputs, input_names(inputs), strict=True):
        ordinal = -1
        for r in read_records(url, name, "auto"):
            if isinstance(r, Document):
                ordinal += not r.continues
                if (name, ordinal) not in removed:
                    texts.append(r.text)
    return texts


def good_texts(root: Path, expected: dict[str, list[str]]) -> list[str]:
    texts = []
    for name, docs in expected.items():
        if name.startswith("wiki/"):  # the reader's own extraction is tested in test_readers
            recs = read_records(str(root / name), name, "auto")
            texts += [r.text for r in recs if isinstance(r, Document)]
        else:
            texts += docs
    return texts


@pytest.mark.parametrize("seq_len,cross", [(128, True), (512, True), (64, False)])
def test_prepare_output_is_complete_and_counted(
    good_corpus, tmp_path, real_tokenizer_dir, seq_len, cross
):
    root, expected = good_corpus
    out = str(tmp_path / "out")
    cfg = PrepareConfig(input=str(root), output=out, seq_len=seq_len, cross_document=cross)
    manifest = run_serial(cfg)
    check_prepared(out, real_tokenizer_dir, good_texts(root, expected))
    assert [f["input"] for f in manifest["files"]] == sorted(expected)
    assert manifest["id_dtype"] == "uint16" and manifest["vocab_size"] == 30522
    assert manifest["records"]["skipped_by_reason"] == {
        "namespace_1": 1,
        "namespace_4": 1,
        "redirect": 1,
    }
    assert manifest["records"]["documents"] == 4 + 2 + 40 + 30
    assert manifest["tokenizer"]["fingerprint"] == storage.sha256_url(
        str(real_tokenizer_dir / "tokenizer.json")
    )
    # seq_id: (input shard index << 32) | row
    seq, _, _ = read_rows(out)
    assert seq[0] == 0 and (seq >> 32).max() == len(expected) - 1


def test_datasets_load_dataset_reads_the_shards(good_corpus, tmp_path):
    import datasets

    root, _ = good_corpus
    out = str(tmp_path / "out")
    manifest = run_serial(PrepareConfig(input=str(root), output=out))
    ds = datasets.load_dataset("parquet", data_files=storage.committed_files(out), split="train")
    assert ds.num_rows == manifest["rows"]
    assert len(ds[0]["input_ids"]) == 128 and ds[0]["input_ids"][0] == 101
    assert ds.features["input_ids"].feature.dtype == "uint16"


def test_rerun_skips_finished_shards_and_fingerprint_tracks_content(good_corpus, tmp_path):
    root, _ = good_corpus
    out = str(tmp_path / "out")
    cfg = PrepareConfig(input=str(root), output=out)
    first = run_serial(cfg)
    before = {p.name: p.read_bytes() for p in Path(out).glob("shard-*.parquet")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in Path(out).glob("shard-*.parquet")}
    second = run_serial(cfg)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in Path(out).glob("shard-*.parquet")} == mtimes
    # same content elsewhere -> same fingerprint; other packing -> other fingerprint
    other = run_serial(PrepareConfig(input=str(root), output=str(tmp_path / "o2")))
    assert other["fingerprint"] == first["fingerprint"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "o2").glob("shard-*.parquet")} == before
    changed = run_serial(PrepareConfig(input=str(root), output=str(tmp_path / "o3"), seq_len=64))
    assert changed["fingerprint"] != first["fingerprint"]
    # an input edited in place: the rerun redoes that shard and the fingerprint changes
    news = root / "news.jsonl"
    news.write_text(news.read_text() + json.dumps({"text": "one more document"}) + "\n")
    third = run_serial(cfg)
    assert third["fingerprint"] != first["fingerprint"]
    assert third["records"]["documents"] == first["records"]["documents"] + 1


def test_bad_input_rows_in_equal_rows_out_plus_dead_letter(bad_corpus, tmp_path):
    root, expected = bad_corpus
    out = str(tmp_path / "out")
    manifest = run_serial(PrepareConfig(input=str(root), output=out))
    rec = manifest["records"]
    assert rec["in"] == rec["pieces"] + rec["dead_letter"] + rec["skipped"]
    # independent count of the input records of the files whose count is known
    known = {n: e for n, e in expected.items() if e["records"] is not None}
    dead = []
    for name in manifest["dead_letter"]["files"]:
        dead += [json.loads(x) for x in Path(out, name).read_text().splitlines()]
    assert len(dead) == manifest["dead_letter"]["count"]
    for name, exp in known.items():
        mine = [d for d in dead if d["source"] == name]
        assert [d["reason"] for d in mine] == exp["reasons"]
        assert all(set(d) >= {"source", "offset", "reason"} for d in mine)
    wiki = [d for d in dead if d["source"].startswith("truncated")]
    assert [d["reason"] for d in wiki] == ["truncated_compressed_stream"]
    n_wiki_docs = next(f for f in manifest["files"] if f["input"].startswith("truncated"))
    wiki_pages = wiki[0]["offset"]  # pages read before the cut
    assert rec["in"] == sum(e["records"] for e in known.values()) + wiki_pages + 1
    assert n_wiki_docs["rows"] > 0
    assert manifest["dead_letter"]["count"] == sum(len(e["reasons"]) for e in expected.values())
    expected_docs = [t for e in known.values() for t in e["docs"]]
    assert rec["pieces"] == len(expected_docs) + wiki_pages


def test_strict_fails_fast_and_commits_nothing(bad_corpus, tmp_path):
    root, _ = bad_corpus
    out = str(tmp_path / "out")
    with pytest.raises(BadInputError, match="bad.jsonl at offset .*malformed_json"):
        run_serial(PrepareConfig(input=str(root / "bad.jsonl"), output=out, strict=True))
    assert not storage.is_committed(out)
    assert not list(Path(out).glob("shard-*.parquet"))


def test_literal_special_token_text_stays_text(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "before [SEP] middle [MASK] after [CLS]"}) + "\n")
    out = str(tmp_path / "out")
    manifest = run_serial(PrepareConfig(input=str(src), output=out))
    _, ids, lengths = read_rows(out)
    sp = manifest["special_ids"]
    row = ids[0, : lengths[0]].tolist()
    assert row[0] == sp["cls"] and row[-1] == sp["sep"]
    assert not set(row[1:-1]) & {sp["cls"], sp["sep"], sp["mask"], sp["pad"]}


def test_progress_is_logged_with_rates(good_corpus, tmp_path, caplog):
    import logging

    root, _ = good_corpus
    with caplog.at_level(logging.INFO, logger="distil.prepare"):
        run_serial(PrepareConfig(input=str(root / "news.jsonl"), output=str(tmp_path / "o")))
    done = [r.getMessage() for r in caplog.records if "news.jsonl -> shard-00000" in r.getMessage()]
    assert len(done) == 1 and "tokens/s" in done[0] and "40 docs" in done[0]


def test_progress_lines_honour_log_every_s(good_corpus, tmp_path, caplog):
    import logging

    root, _ = good_corpus
    # without dedup the file is packed while it is read, so its last line has the shard's final
    # counts (a deduplicated read counts the tokens it tokenized, before any removal)
    cfg = PrepareConfig(
        input=str(root / "news.jsonl"), output=str(tmp_path / "o"), log_every_s=1e-6, dedup=False
    )
    with caplog.at_level(logging.INFO, logger="distil.prepare"):
        manifest = run_serial(cfg)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("news.jsonl: ")]
    assert lines and "\r" not in "".join(lines)
    # the last progress line has the shard's final counts and both rates
    assert lines[-1].startswith(f"news.jsonl: 40 docs, {manifest['tokens']} tokens [")
    assert "docs/s" in lines[-1] and "tokens/s" in lines[-1]
