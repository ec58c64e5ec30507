"""``distil.data.readers.files``: the table of formats, and listing, where every input file gets
a reader or a refusal (nothing silently skipped), on local folders, globs and S3."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from distil import storage
from distil.config import ConfigError
from distil.data.readers import UnreadableInputsError, detect_format, list_inputs
from distil.data.readers.compression import SUFFIXES as COMPRESSIONS
from distil.data.readers.files import COMPRESSIBLE, MAX_NAMED, SUFFIXES, describe_formats

COMPRESS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".zst": zstandard.ZstdCompressor().compress,
    ".xz": lzma.compress,
}


def test_every_format_and_compression_is_told_by_the_name():
    for fmt, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            assert detect_format(f"dir/a{suffix}") == fmt
            assert detect_format(f"DIR/A{suffix.upper()}") == fmt
            for c in COMPRESSIONS:
                assert detect_format(f"a{suffix}{c}") == (fmt if fmt in COMPRESSIBLE else None)
    assert set(COMPRESS) == set(COMPRESSIONS)
    # Wikimedia's split dump names, in every compression
    for c in COMPRESSIONS:
        assert detect_format(f"x/enwiki-1-pages-articles1.xml-p10p30302{c}") == "wiki"
    for name in ("report.docx", "notes.md", "a.json.7z", "noext", "a.gz", "a.csv.zip"):
        assert detect_format(name) is None, name
    text = describe_formats()
    assert all(s in text for ss in SUFFIXES.values() for s in ss)
    assert all(c in text for c in COMPRESSIONS)


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_a_folder_lists_every_file_as_read_or_refused(tmp_path):
    root = tmp_path / "in"
    line = b'{"text": "a line of text"}\n'
    for c, compress in COMPRESS.items():
        _write(root / f"part{c}.jsonl{c}", compress(line))
    _write(root / "ok.parquet", b"")  # replaced below by a real one
    pq.write_table(pa.table({"text": ["x"]}), root / "ok.parquet")
    _write(root / "sub" / "report.docx", b"PK\x03\x04 a zip")
    _write(root / "sub" / "notes", b"no extension")
    _write(root / "lies.json.gz", line)  # named gzip, is not
    _write(root / "lies.csv.zst", b"id,text\n1,x\n")
    _write(root / "empty.txt.xz", b"")  # a zero-byte file is an empty stream, not a lie
    _write(root / "fake.parquet", b"id,text\n")
    _write(root / "table.parquet.gz", gzip.compress(b"PAR1"))
    # not inputs, as before: markers, staging, hidden files, the manifest
    _write(root / "_markers" / "x.json", b"{}")
    _write(root / ".staging" / "x.jsonl", line)
    _write(root / "manifest.json", b"{}")
    listing = list_inputs([str(root)])
    assert [u.split("/in/")[1] for u in listing.urls] == sorted(
        [*(f"part{c}.jsonl{c}" for c in COMPRESS), "ok.parquet", "empty.txt.xz"]
    )
    reasons = {r.url.split("/in/")[1]: r.reason for r in listing.refused}
    assert reasons == {
        "sub/report.docx": "no reader for this file type (.docx)",
        "sub/notes": "no reader for this file type (no extension)",
        "lies.json.gz": "named .gz but is not gzip data (it starts with b'{\"text')",
        "lies.csv.zst": "named .zst but is not zstd data (it starts with b'id,tex')",
        "fake.parquet": "not a Parquet file (it starts with b'id,tex', not b'PAR1')",
        "table.parquet.gz": "parquet compressed as .gz: parquet files compress inside the file "
        "and are not read through an outer compression; decompress it",
    }
    assert [r.url for r in listing.refused] == sorted(r.url for r in listing.refused)
    # refused: an error naming each file and the flag, unless the flag is given
    with pytest.raises(UnreadableInputsError) as e:
        listing.check(skip_unknown=False)
    msg = str(e.value)
    assert "6 input files cannot be read; nothing was read" in msg and "--skip-unknown" in msg
    assert all(f"{r.url}: {r.reason}" in msg for r in listing.refused)
    assert isinstance(e.value, ConfigError)  # the CLI prints it as one error, exit 2
    listing.check(skip_unknown=True)
    # --format for every file: no refusal by name, but the bytes are still checked
    forced = list_inputs([str(root / "sub"), str(root / "lies.json.gz")], fmt="text")
    assert [u.split("/in/")[1] for u in forced.urls] == ["sub/notes", "sub/report.docx"]
    assert [r.url.split("/in/")[1] for r in forced.refused] == ["lies.json.gz"]


def test_more_than_twenty_unreadable_files_are_named_then_counted(tmp_path):
    for i in range(MAX_NAMED + 5):
        _write(tmp_path / f"doc-{i:02d}.docx", b"PK")
    _write(tmp_path / "a.txt", b"text\n")
    listing = list_inputs([str(tmp_path)])
    with pytest.raises(UnreadableInputsError) as e:
        listing.check(skip_unknown=False)
    msg = str(e.value)
    assert msg.count(".docx: no reader") == MAX_NAMED and "… and 5 more" in msg
    assert "doc-19.docx" in msg and "doc-20.docx" not in msg
    # nothing readable at all: skipping leaves nothing to read, which is an error of its own
    only = list_inputs([str(tmp_path / "doc-0*.docx")])
    with pytest.raises(FileNotFoundError, match="no readable input files"):
        only.check(skip_unknown=True)


def test_a_single_file_and_a_glob_are_classified_too(tmp_path):
    _write(tmp_path / "a.docx", b"PK")
    _write(tmp_path / "b.jsonl", b"{}\n")
    single = list_inputs([str(tmp_path / "a.docx")])
    assert single.urls == [] and [r.url for r in single.refused] == [str(tmp_path / "a.docx")]
    glob = list_inputs([str(tmp_path / "*")])
    assert glob.urls == [str(tmp_path / "b.jsonl")]
    assert [r.url for r in glob.refused] == [str(tmp_path / "a.docx")]


def _save(path, texts: list[str], shards: int = 2) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": texts})
    ds.save_to_disk(str(path), num_shards=shards)


def test_save_to_disk_folders_read_their_listed_arrow_files(tmp_path):
    import datasets

    root = tmp_path / "in"
    _save(root / "plain", [f"doc {i}" for i in range(10)], shards=3)
    # a DatasetDict: dataset_dict.json above one save_to_disk folder per split
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
            "test": datasets.Dataset.from_dict({"text": ["t3"]}),
        }
    ).save_to_disk(str(root / "dict"))
    listing = list_inputs([str(root)])
    assert listing.refused == []
    assert [u.split("/in/")[1] for u in listing.urls] == [
        "dict/test/data-00000-of-00001.arrow",
        "dict/train/data-00000-of-00001.arrow",
        *(f"plain/data-{i:05d}-of-00003.arrow" for i in range(3)),
    ]
    # a cache file Dataset.map wrote into the folder is not part of the saved dataset
    (root / "plain" / "cache-0123abcd.arrow").write_bytes(b"")
    # a listed shard that is missing, a folder without dataset_info.json
    (root / "dict" / "test" / "data-00000-of-00001.arrow").unlink()
    (root / "dict" / "train" / "dataset_info.json").unlink()
    reasons = {r.url.split("/in/")[1]: r.reason for r in list_inputs([str(root)]).refused}
    assert reasons == {
        "plain/cache-0123abcd.arrow": "an Arrow file its folder's state.json does not list "
        "(a cache file?)",
        "dict/test/data-00000-of-00001.arrow": "listed in state.json but missing",
        "dict/train/state.json": "save_to_disk folder: no dataset_info.json beside state.json "
        "(an unfinished save_to_disk?)",
        "dict/train/data-00000-of-00001.arrow": "save_to_disk folder: no dataset_info.json "
        "beside state.json (an unfinished save_to_disk?)",
    }
    (root / "plain" / "state.json").write_text("{not json")
    bad = {r.url.split("/in/")[1]: r.reason for r in list_inputs([str(root / "plain")]).refused}
    assert set(bad) == {"plain/state.json", "plain/cache-0123abcd.arrow"} | {
        f"plain/data-{i:05d}-of-00003.arrow" for i in range(3)
    }
    assert all(r.startswith("save_to_disk folder: unreadable state.json") for r in bad.values())


def test_listing_on_s3_checks_first_bytes_with_ranged_reads(s3_url):
    line = b'{"text": "x"}\n'
    storage.write_bytes(f"{s3_url}/in/a.jsonl.zst", zstandard.ZstdCompressor().compress(line))
    storage.write_bytes(f"{s3_url}/in/b.jsonl.gz", line)
    storage.write_bytes(f"{s3_url}/in/c.docx", b"PK")
    storage.write_bytes(f"{s3_url}/in/_markers/x.json", b"{}")
    listing = list_inputs([f"{s3_url}/in"])
    assert listing.urls == [f"{s3_url}/in/a.jsonl.zst"]
    assert [(r.url, r.reason.split(" (")[0]) for r in listing.refused] == [
        (f"{s3_url}/in/b.jsonl.gz", "named .gz but is not gzip data"),
        (f"{s3_url}/in/c.docx", "no reader for this file type"),
    ]


def test_refusals_are_json_for_the_manifest(tmp_path):
    _write(tmp_path / "a.docx", b"PK")
    _write(tmp_path / "b.txt", b"x\n")
    (refusal,) = list_inputs([str(tmp_path)]).refused
    assert json.loads(json.dumps(refusal.to_dict())) == {
        "url": str(tmp_path / "a.docx"),
        "reason": "no reader for this file type (.docx)",
    }
