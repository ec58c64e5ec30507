"""Small corpora generated in code for the stage 1 tests (no fixture files in the repo).

``write_good_corpus`` writes one input shard of each format (wiki XML .bz2 with redirects and
other namespaces, two plain-text books, JSONL, Parquet) and returns what a correct reader must
yield from each. ``write_formats_corpus`` is issue 32's folder of every other input format and
compression (a JSON array, NDJSON, zstd, xz, CSV with quoted fields over several lines, TSV, a
``datasets`` save_to_disk folder) plus a ``.docx`` no reader takes. ``write_bad_corpus`` writes the bad inputs of issue 3 with the dead letters
they must produce. ``write_dup_corpus`` adds duplicates (exact, re-wrapped, near, a whole book)
to the good corpus; ``write_planted`` and ``score_planted`` are issue 32's planted set of copies
of real prose (``sample_texts``) and its scoring, shared with ``bench/prepare.py``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "river",
    "mountain",
    "valley",
    "history",
    "science",
    "music",
    "language",
    "algorithm",
    "computer",
    "anarchism",
    "philosophy",
    "economy",
    "garden",
    "winter",
    "summer",
    "village",
    "captain",
    "letter",
    "sister",
    "morning",
    "evening",
    "journey",
    "question",
    "answer",
    "number",
    "theory",
    "unbelievable",
    "Zürich",
    "café",
    "naïve",
    "résumé",
    "1984",
    "3.14",
    "don't",
    "it's",
    "(parenthesis)",
    '"quoted"',
    "semi-colon;",
    "comma,",
]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng, rng.randint(4, 18)) for _ in range(sentences))


def wiki_page(title: str, ns: int, page_id: int, text: str, redirect: str | None = None) -> str:
    red = f'<redirect title="{redirect}" />' if redirect else ""
    esc = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (
        f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{red}"
        f'<revision><id>{page_id}0</id><text xml:space="preserve">{esc}</text></revision></page>\n'
    )


def wiki_xml(pages: list[str]) -> bytes:
    head = (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10">\n'
        "<siteinfo><sitename>Wikipedia</sitename></siteinfo>\n"
    )
    return (head + "".join(pages) + "</mediawiki>\n").encode()


# Wikitext with every construct the reader must drop or unwrap, and the prose it must keep.
ARTICLE_1 = (
    "{{Infobox person|name=Ada|born=1815}}\n"
    "'''Ada Lovelace''' was an English [[mathematician]] and [[Writer|writer]].<ref>Some "
    "citation text</ref>\n\n"
    "== Early life ==\n"
    "She was born in [[London]].[[File:Ada.jpg|thumb|A portrait caption]]\n\n"
    '{| class="wikitable"\n|-\n| tablecell1 || tablecell2\n|}\n\n'
    "[[Category:Mathematicians]]"
)
ARTICLE_1_KEEP = ["Ada Lovelace", "mathematician", "writer", "Early life", "born in London"]
ARTICLE_1_DROP = ["Infobox", "citation", "portrait caption", "tablecell", "Mathematicians", "{{"]


def output_bytes(out: str) -> dict[str, bytes]:
    """Every committed byte of a prepared output: shards, dead-letter files, the dedup audit
    list and the manifest."""
    from distil import storage

    m = storage.read_manifest(out)
    files = {Path(u).name: storage.read_bytes(u) for u in storage.committed_files(out)}
    for name in m["dead_letter"]["files"]:
        files[name] = storage.read_bytes(storage.join(out, name))
    if m["dedup"]["enabled"]:
        name = m["dedup"]["removed_file"]
        files[name] = storage.read_bytes(storage.join(out, name))
    files["manifest.json"] = storage.read_bytes(storage.join(out, "manifest.json"))
    return files


def write_good_corpus(root: Path, seed: int = 0, scale: int = 1) -> dict[str, list[str]]:
    """Write the corpus; returns, per file name, the document texts a reader must yield (for the
    wiki file only the prose of article 1 is checked by keyword, so it maps to titles)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, list[str]] = {}

    pages = [
        wiki_page("Ada Lovelace", 0, 1, ARTICLE_1),
        wiki_page("AccessibleComputing", 0, 2, "#REDIRECT [[Computer accessibility]]", "CA"),
        wiki_page("Wikipedia:About", 4, 3, "Project page text that must not appear."),
        wiki_page("Talk:Ada", 1, 4, "Talk page text that must not appear."),
    ]
    for i in range(3 * scale):
        body = "\n\n".join(paragraph(rng, 3) for _ in range(3))
        pages.append(wiki_page(f"Article {i}", 0, 10 + i, "{{stub}}\n" + body))
    (root / "wiki").mkdir(exist_ok=True)
    (root / "wiki" / "enwiki-test-pages-articles1.xml-p1p30.bz2").write_bytes(
        bz2.compress(wiki_xml(pages))
    )
    expected["wiki/enwiki-test-pages-articles1.xml-p1p30.bz2"] = ["Ada Lovelace"] + [
        f"Article {i}" for i in range(3 * scale)
    ]

    (root / "books").mkdir(exist_ok=True)
    for b in range(2):
        paras = [paragraph(rng, rng.randint(1, 6)) for _ in range(8 * scale)]
        # hard-wrapped lines inside paragraphs, several blank lines between some of them
        text = "\n\n\n".join("\n".join(_wrap(p, 60)) for p in paras) + "\n"
        (root / "books" / f"book-{b}.txt").write_text(text)
        expected[f"books/book-{b}.txt"] = [" ".join(paras)]

    docs = [paragraph(rng, rng.randint(1, 5)) for _ in range(40 * scale)]
    (root / "news.jsonl").write_text(
        "".join(json.dumps({"id": f"n{i}", "text": d}) + "\n" for i, d in enumerate(docs))
    )
    expected["news.jsonl"] = docs

    pdocs = [paragraph(rng, rng.randint(1, 5)) for _ in range(30 * scale)]
    pq.write_table(
        pa.table({"id": [f"p{i}" for i in range(len(pdocs))], "text": pdocs}),
        root / "reviews.parquet",
    )
    expected["reviews.parquet"] = pdocs
    return expected


def write_dup_corpus(root: Path, scale: int = 1) -> dict[str, str]:
    """The good corpus plus duplicates across and within files and formats: returns, per
    duplicate, ``"file:ordinal"`` of the document it copies (the one that must be kept)."""
    write_good_corpus(root, scale=scale)
    rng = random.Random(9)
    news = [json.loads(x)["text"] for x in (root / "news.jsonl").read_text().splitlines()]
    long = [paragraph(rng, 12) for _ in range(3)]
    near = long[1].split()
    near[10] = "zebra"
    rows = [long[0], news[3], rewrap(long[0], rng), " ".join(near), long[1], long[2], news[3]]
    (root / "zz-more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    book = (root / "books" / "book-0.txt").read_text()
    (root / "books" / "book-2.txt").write_text(book.replace("\n", " ").replace(". ", ".\n\n"))
    return {
        "zz-more.jsonl:2": "zz-more.jsonl:0",  # re-wrapped, exact
        "zz-more.jsonl:1": "news.jsonl:3",  # exact, in another file
        "zz-more.jsonl:6": "news.jsonl:3",
        "zz-more.jsonl:4": "zz-more.jsonl:3",  # the near copy comes first: the original goes
        "books/book-2.txt:0": "books/book-0.txt:0",  # a book re-wrapped into other paragraphs
    }


def write_formats_corpus(root: Path, seed: int = 5) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every input format and compression but the good corpus's, in one folder, plus
    ``report.docx``. Returns, per file name (a save_to_disk folder's Arrow files under their
    folder), the texts a reader must yield, in order (``report.docx``: []); and the duplicates
    planted across formats (``"file:ordinal"`` of the copy that goes -> of the one kept): an
    exact copy, a re-wrapped one (exact after normalisation) and one with a word changed."""
    import datasets
    import zstandard

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {}

    def docs(n: int) -> list[str]:
        return [paragraph(rng, rng.randint(1, 4)) for _ in range(n)]

    long = paragraph(rng, 14)
    near = long.split()
    near[20] = "zebra"
    # one JSON array (pretty-printed: elements span lines), gzip
    texts = docs(12)
    array = json.dumps([{"id": f"a{i}", "text": t} for i, t in enumerate(texts)], indent=2)
    (root / "part-0001.json.gz").write_bytes(gzip.compress(array.encode()))
    out["part-0001.json.gz"] = texts
    texts = [*docs(14), long]
    ndjson = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (root / "x.ndjson.bz2").write_bytes(bz2.compress(ndjson.encode()))
    out["x.ndjson.bz2"] = texts
    texts = docs(14)
    lines = "".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts))
    (root / "books.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    out["books.jsonl.zst"] = texts
    paras = docs(6)
    book = "\n\n".join("\n".join(_wrap(p, 50)) for p in paras) + "\n"
    (root / "a.txt.xz").write_bytes(lzma.compress(book.encode()))
    out["a.txt.xz"] = [" ".join(paras)]
    # CSV whose text fields hold commas, quotes and line breaks (quoted over several lines)
    texts = docs(16)
    texts = [t.replace(". ", '.\n"Said," she wrote, ', 1) if i % 3 == 0 else t for i, t in
             enumerate(texts)]  # fmt: skip
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(["id", "stars", "text"])
    w.writerows([f"c{i}", i % 5, t] for i, t in enumerate(texts))
    (root / "reviews.csv").write_text(buf.getvalue())
    out["reviews.csv"] = texts
    texts = [*docs(8), " ".join(near)]
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["text"])
    w.writerows([t] for t in texts)
    (root / "more.tsv.gz").write_bytes(gzip.compress(buf.getvalue().encode()))
    out["more.tsv.gz"] = texts
    texts = [*docs(10), out["part-0001.json.gz"][3]]
    pq.write_table(pa.table({"text": texts}), root / "table.parquet", row_group_size=4)
    out["table.parquet"] = texts
    texts = [*docs(12), "\n".join(_wrap(out["reviews.csv"][1].upper(), 30))]
    ds = datasets.Dataset.from_dict({"id": [f"d{i}" for i in range(13)], "text": texts})
    ds.save_to_disk(str(root / "saved"), num_shards=2)
    out["saved/data-00000-of-00002.arrow"] = texts[:7]
    out["saved/data-00001-of-00002.arrow"] = texts[7:]
    # a Word file: a zip archive no reader takes
    (root / "report.docx").write_bytes(b"PK\x03\x04" + rng.randbytes(200))
    out["report.docx"] = []
    duplicates = {
        "table.parquet:10": "part-0001.json.gz:3",
        "saved/data-00001-of-00002.arrow:5": "reviews.csv:1",
        "x.ndjson.bz2:14": "more.tsv.gz:8",
    }
    return out, duplicates


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for w in text.split(" "):
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    return lines + ([cur] if cur else [])


def write_bad_corpus(root: Path, seed: int = 1) -> dict[str, dict]:
    """Bad inputs; returns per file: good documents' texts and the dead-letter reasons expected
    (in order), plus the number of input records."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}

    good = [paragraph(rng, 2) for _ in range(5)]
    lines = [
        json.dumps({"text": good[0]}).encode(),
        b'{"text": "unterminated',  # malformed JSON
        json.dumps({"body": "no text field"}).encode(),  # missing text
        json.dumps({"text": "   "}).encode(),  # empty text
        json.dumps({"text": good[1]}).encode(),
        b'{"text": "bad bytes \xff\xfe here"}',  # undecodable
        json.dumps({"text": "x" * (10 * 1024 * 1024)}).encode(),  # a 10 MB single line
        json.dumps({"text": good[2]}).encode(),
        b"[1, 2, 3]",  # not an object
        json.dumps({"text": 42}).encode(),  # text not a string
        json.dumps({"text": good[3]}).encode(),
    ]
    (root / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    out["bad.jsonl"] = {
        "docs": [good[0], good[1], good[2], good[3]],
        "reasons": [
            "malformed_json",
            "missing_text",
            "empty_text",
            "undecodable_utf8",
            "line_too_long",
            "not_an_object",
            "text_not_string",
        ],
        "records": 11,
    }

    book = f"{good[4]}\n\n".encode() + b"caf\xe9 latin-1 line\n\nlast paragraph here.\n"
    (root / "bad-book.txt").write_bytes(book)
    out["bad-book.txt"] = {
        "docs": [good[4], "last paragraph here."],
        "reasons": ["undecodable_utf8"],
        "records": 3,
    }
    (root / "empty-book.txt").write_bytes(b"\n\n   \n")
    out["empty-book.txt"] = {"docs": [], "reasons": ["empty_text"], "records": 1}

    pages = [
        wiki_page(f"Page {i}", 0, i + 1, "\n\n".join(paragraph(rng, 4) for _ in range(30)))
        for i in range(40)
    ]
    data = bz2.compress(wiki_xml(pages), compresslevel=1)  # 100 kB blocks: the cut leaves some
    (root / "truncated-pages-articles.xml.bz2").write_bytes(data[: len(data) // 2])
    out["truncated-pages-articles.xml.bz2"] = {
        "docs": None,  # some pages survive, how many depends on where the cut falls
        "reasons": ["truncated_compressed_stream"],
        "records": None,
    }

    pq.write_table(
        pa.table({"text": ["fine parquet row", None, "", "another row"]}), root / "bad.parquet"
    )
    out["bad.parquet"] = {
        "docs": ["fine parquet row", "another row"],
        "reasons": ["missing_text", "empty_text"],
        "records": 4,
    }
    return out


def real_wiki_xml() -> bytes:
    """The real ``pages-articles`` excerpt shipped in the gensim wheel (206 pages), decompressed."""
    import zipfile

    from distil.samples import registry
    from distil.samples.corpus import GENSIM, WIKI_MEMBER

    with zipfile.ZipFile(registry.fetch_pypi(*GENSIM)) as z:
        return bz2.decompress(z.read(WIKI_MEMBER))


def write_multistream(xml: bytes, folder: Path, pages_per_stream: int = 10) -> Path:
    """A dump laid out like Wikimedia's ``…-multistream.xml.bz2``: the ``<mediawiki>``/
    ``<siteinfo>`` header as stream 0, ``pages_per_stream`` pages per bz2 stream, the closing
    tag last; plus its ``…-multistream-index.txt.bz2`` (``offset:page_id:title`` per page)."""
    import re

    starts = [m.start() for m in re.finditer(rb"  <page>", xml)]
    footer = xml.rindex(b"</mediawiki>")
    footer = xml.rindex(b"\n", 0, footer) + 1
    cuts = [0, *starts[::pages_per_stream], footer, len(xml)]
    data, index = b"", []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        offset = len(data)
        data += bz2.compress(xml[a:b])
        if 0 < k < len(cuts) - 2:
            for m in re.finditer(
                rb"<title>([^<]*)</title>\s*<ns>\d+</ns>\s*<id>(\d+)</id>", xml[a:b]
            ):
                index.append(f"{offset}:{m.group(2).decode()}:{m.group(1).decode()}\n")
    folder.mkdir(parents=True, exist_ok=True)
    dump = folder / "enwiki-20240101-pages-articles-multistream.xml.bz2"
    dump.write_bytes(data)
    (folder / "enwiki-20240101-pages-articles-multistream-index.txt.bz2").write_bytes(
        bz2.compress("".join(index).encode())
    )
    return dump


def write_chunked_streams(xml: bytes, path: Path, chunk: int) -> Path:
    """A dump cut every ``chunk`` bytes into bz2 streams regardless of pages (as ``pbzip2``)."""
    path.write_bytes(b"".join(bz2.compress(xml[i : i + chunk]) for i in range(0, len(xml), chunk)))
    return path


# ---------------------------------------------------------------- planted duplicates


def sample_texts() -> list[str]:
    """Real prose from the sample corpus's gensim wheel (the dump's articles, the Lee news),
    the part of the sample corpus a test can get without npm or Debian packages."""
    import io
    import zipfile

    from distil.data.readers import Document, read_wiki
    from distil.samples import registry
    from distil.samples.corpus import GENSIM, NEWS_MEMBER

    wiki = [
        r.text for r in read_wiki(io.BytesIO(real_wiki_xml()), "wiki") if isinstance(r, Document)
    ]
    with zipfile.ZipFile(registry.fetch_pypi(*GENSIM)) as z:
        news = [t for t in z.read(NEWS_MEMBER).decode().splitlines() if t.strip()]
    return wiki + news


def word_windows(texts: list[str], rng: random.Random, lo: int = 120, hi: int = 300) -> list[str]:
    """Non-overlapping windows of ``lo``..``hi`` words of each text, as documents."""
    out = []
    for text in texts:
        words = text.split()
        i = 0
        while len(words) - i >= lo:
            n = rng.randint(lo, hi)
            out.append(" ".join(words[i : i + n]))
            i += n
    return out


def shingle_set(text: str, n: int = 5) -> set[str]:
    """The word ``n``-gram set the dedup's Jaccard is defined on, computed plainly."""
    from distil.data.dedup import normalize

    words = normalize(text).split()
    return {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / max(len(a | b), 1)


def distinct(docs: list[str], max_jaccard: float = 0.5) -> list[str]:
    """``docs`` without any that has word 5-gram Jaccard >= ``max_jaccard`` with an earlier
    one (exact copies included): a base set with no true duplicates in it."""
    sets = [shingle_set(d) for d in docs]
    index: dict[str, list[int]] = {}
    keep = []
    for i, s in enumerate(sets):
        seen = {j for sh in s for j in index.get(sh, ())}
        if all(jaccard(s, sets[j]) < max_jaccard for j in seen):
            keep.append(i)
            for sh in s:
                index.setdefault(sh, []).append(i)
    return [docs[i] for i in keep]


def change_words(text: str, rng: random.Random, vocab: list[str], rate: float = 0.01) -> str:
    """``rate`` of the words (at least one) replaced by other words from ``vocab``."""
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(rate * len(words)))):
        words[i] = rng.choice([w for w in rng.sample(vocab, 3) if w != words[i]] or ["x"])
    return " ".join(words)


def rewrap(text: str, rng: random.Random) -> str:
    """The same words with other line breaks (and some doubled spaces)."""
    words = text.split()
    out = []
    for w in words:
        out.append(w)
        out.append(rng.choice(["\n", " ", " ", " ", "  ", " \n"]))
    return "".join(out[:-1])


def write_planted(root: Path, base: list[str], seed: int = 0) -> dict[str, Any]:
    """The acceptance's planted set as JSONL inputs: the distinct ``base`` documents first
    (lowest ids), then per base document an exact copy, a copy with 1% of its words changed and
    a re-wrapped copy, shuffled. Returns the truth: per copy file and line, ``(kind, original)``,
    and the near copies' true Jaccard with their original."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    vocab = sorted({w for d in base for w in d.split()})
    copies = []
    for i, d in enumerate(base):
        copies += [
            ("exact", i, d),
            ("near", i, change_words(d, rng, vocab)),
            ("rewrap", i, rewrap(d, rng)),
        ]
    rng.shuffle(copies)
    (root / "a-originals.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in base))
    (root / "b-copies.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for _, _, t in copies)
    )
    near_j = [jaccard(shingle_set(base[i]), shingle_set(t)) for k, i, t in copies if k == "near"]
    return {
        "originals": len(base),
        "copies": [(k, i) for k, i, _ in copies],
        "near_jaccard": near_j,
    }


def score_planted(out: str, truth: dict[str, Any]) -> dict[str, Any]:
    """How a deduplicated output treated a planted set (``write_planted``): the share of each
    kind of copy removed with its own original kept, and of originals removed."""
    from distil import storage
    from distil.data import shards

    manifest = storage.read_manifest(out)
    t = shards.read_table(storage.join(out, manifest["dedup"]["removed_file"])).to_pylist()
    originals = [r for r in t if r["input"] == "a-originals.jsonl"]
    by_copy = {r["ordinal"]: r for r in t if r["input"] == "b-copies.jsonl"}
    result: dict[str, Any] = {"originals": truth["originals"], "originals_removed": len(originals)}
    for kind in ("exact", "near", "rewrap"):
        mine = [(j, i) for j, (k, i) in enumerate(truth["copies"]) if k == kind]
        right = sum(
            1
            for j, i in mine
            if j in by_copy
            and by_copy[j]["kept_input"] == "a-originals.jsonl"
            and by_copy[j]["kept_ordinal"] == i
        )
        result[kind] = {
            "copies": len(mine),
            "removed": sum(j in by_copy for j, _ in mine),
            "right": right,
        }
    near_j = truth["near_jaccard"]
    result["near_jaccard"] = {"mean": sum(near_j) / len(near_j), "min": min(near_j)}
    return result
