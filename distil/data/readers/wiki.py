"""Wikipedia ``pages-articles`` XML dumps: streamed with ``iterparse``, wikitext to prose with
the scan-based ``wikitext_to_text``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import IO

from distil.data.readers.files import _truncation_reason
from distil.data.readers.records import DeadLetter, Document, Record, Skipped
from distil.data.readers.wikitext import wikitext_to_text


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_wiki(f: IO[bytes], source: str) -> Iterator[Record]:
    """A MediaWiki ``pages-articles`` XML dump: main-namespace (ns 0) articles, redirects dropped.

    A broken stream (truncated bz2, XML error) ends the file with one dead letter at the page
    being read; the pages before it are kept.
    """
    page_no = 0
    root = None
    try:
        for event, elem in ET.iterparse(f, events=("start", "end")):
            if root is None:
                root = elem
            if event != "end" or _local(elem.tag) != "page":
                continue
            yield _wiki_page(elem, source, page_no)
            page_no += 1
            elem.clear()
            root.clear()  # drop finished pages so memory stays flat over a multi-GB dump
    except ET.ParseError as e:
        yield DeadLetter(source, page_no, "xml_error", str(e)[:200])
    except (EOFError, OSError) as e:
        reason = _truncation_reason(e)
        if reason is None:
            raise
        yield DeadLetter(source, page_no, reason[0], reason[1])


def _wiki_page(page: ET.Element, source: str, page_no: int) -> Record:
    ns = title = page_id = text = None
    redirect = False
    for child in page:
        name = _local(child.tag)
        if name == "ns":
            ns = (child.text or "").strip()
        elif name == "title":
            title = child.text or ""
        elif name == "id":
            page_id = (child.text or "").strip()
        elif name == "redirect":
            redirect = True
        elif name == "revision":
            for sub in child:
                if _local(sub.tag) == "text":
                    text = sub.text or ""
    if ns != "0":
        return Skipped(source, page_no, f"namespace_{ns}")
    if redirect or (text or "").lstrip().lower().startswith("#redirect"):
        return Skipped(source, page_no, "redirect")
    if text is None:
        return DeadLetter(source, page_no, "missing_text", f"page {title!r} has no <text>")
    try:
        plain = wikitext_to_text(text)
    except Exception as e:  # a parser bug on one page must not end the dump
        return DeadLetter(source, page_no, "wikitext_error", f"{type(e).__name__}: {e}"[:200])
    if not plain:
        return DeadLetter(source, page_no, "empty_text", f"page {title!r} has no prose")
    return Document(source, page_no, page_id or f"{title}", plain)
