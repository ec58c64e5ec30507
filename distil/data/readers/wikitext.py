"""Wikitext to prose: a scan-based extractor (the stage's) and ``mwparserfromhell`` (reference).

Parsing every page into a full node tree with ``mwparserfromhell`` was half of the stage's CPU
time, and nearly all of it went to markup that is thrown away (templates, tables, references).
``wikitext_to_text`` only finds the spans to drop (one regex pass over the brace/bracket tokens
with a stack for nesting) and unwraps what is kept, so it costs a few regex passes per page.
``wikitext_to_text_mwparser`` is the tree-based extractor it replaced; tests and
``bench/prepare.py`` measure the token overlap between the two on real dump pages.
"""

from __future__ import annotations

import html
import re
from typing import Any

# Version of the extraction rules: part of the prepare fingerprint, so outputs written with
# other rules are never reused. Bump on any change that alters extracted text.
EXTRACTOR_VERSION = "scan-1"

# Tags whose content is not running prose: references, tables, maths, galleries, etc. (the
# last group: tags whose content mwparserfromhell's strip_code hides too)
_DROP_TAGS = (
    "ref|references|table|gallery|math|timeline|score|syntaxhighlight|"
    "nowiki|pre|source|imagemap|categorytree|graph|inputbox|templatedata|section|charinsert"
)
_DROP_LINK_NS = ("file:", "image:", "category:", "media:")
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_TAG_PAIR = re.compile(rf"<({_DROP_TAGS})\b[^>]*?(?<!/)>.*?</\1\s*>", re.S | re.I)
_TAG_SELF = re.compile(rf"<(?:{_DROP_TAGS})\b[^>]*/>", re.I)
_ANY_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*\b[^<>]*>")
# what nests: templates {{ }}, tables {| |} (at a line start) and wikilinks [[ ]]
_NESTING = re.compile(r"(?m)^[ \t]*(\{\||\|\})|\{\{|\}\}|\[\[|\]\]")
_LINK = re.compile(r"\[\[([^\[\]|]*)(?:\|([^\[\]]*))?\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:|ftps?:|mailto:|irc:|news:|//)[^\s\]]*(?:\s+([^\]]*))?\]")
_HEADING = re.compile(r"(?m)^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$")
_LINE_MARKUP = re.compile(r"(?m)^(?:[*#:;]+[ \t]*|-{4,}[ \t]*)")
_MAGIC = re.compile(r"__[A-Z]+__")
_BLANKS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t\xa0]+")
_STYLE_QUOTES = re.compile(r"'{2,}")


def _unquote(m: re.Match) -> str:
    """Drop wiki bold/italic quote runs: '' italic, ''' bold, ''''' both; 4 = an apostrophe
    followed by bold (''''s -> 's)."""
    n = len(m.group(0))
    return "'" if n == 4 else "'" * max(n - 5, 0)


def _dropped_spans(s: str) -> list[tuple[int, int]]:
    """Outermost template, table and file/category-link spans (unclosed openers stay text)."""
    stack: list[tuple[str, int]] = []
    spans: list[tuple[int, int]] = []
    for m in _NESTING.finditer(s):
        tok = m.group(1) or m.group(0)
        if tok in ("{{", "{|", "[["):
            stack.append((tok, m.start(1) if m.group(1) else m.start()))
            continue
        opener = {"}}": "{{", "|}": "{|", "]]": "[["}[tok]
        depth = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == opener), None)
        if depth is None:
            continue  # a stray closer is text
        start = stack[depth][1]
        del stack[depth:]
        if opener == "[[":
            title = s[start + 2 : start + 2 + 32].lstrip().lstrip(":").lower()
            if not title.startswith(_DROP_LINK_NS):
                continue
        if not any(kind != "[[" for kind, _ in stack) and not _inside_dropped_link(s, stack):
            spans.append((start, m.end()))
    return spans


def _inside_dropped_link(s: str, stack: list[tuple[str, int]]) -> bool:
    return any(s[p + 2 : p + 34].lstrip().lstrip(":").lower().startswith(_DROP_LINK_NS)
               for kind, p in stack if kind == "[[")  # fmt: skip


def _cut(s: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return s
    out, pos = [], 0
    for a, b in sorted(spans):
        if a >= pos:
            out.append(s[pos:a])
        pos = max(pos, b)
    out.append(s[pos:])
    return "".join(out)


def _link_text(m: re.Match) -> str:
    return m.group(1) if m.group(2) is None else m.group(2)


def wikitext_to_text(wikitext: str) -> str:
    """Plain prose from wikitext: templates, refs, tables, files and categories are dropped;
    links keep their visible text; headings and lists keep their words."""
    s = _COMMENT.sub("", wikitext)
    s = _TAG_SELF.sub("", _TAG_PAIR.sub("", s))
    s = _cut(s, _dropped_spans(s))
    s = _LINK.sub(_link_text, s)
    s = _EXT_LINK.sub(lambda m: m.group(1) or "", s)
    s = html.unescape(_ANY_TAG.sub("", s))
    s = _LINE_MARKUP.sub("", _HEADING.sub(r"\2", s))
    s = _STYLE_QUOTES.sub(_unquote, _MAGIC.sub("", s))
    lines = [_SPACES.sub(" ", ln).strip() for ln in s.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def wikitext_to_text_mwparser(wikitext: str) -> str:
    """The reference: ``mwparserfromhell``'s node tree with the same nodes dropped, then
    ``strip_code`` (the extractor the stage used before ``EXTRACTOR_VERSION`` scan-1)."""
    import mwparserfromhell
    from mwparserfromhell.nodes import Tag, Template, Wikilink

    code = mwparserfromhell.parse(wikitext, skip_style_tags=True)
    drop_tags = {"ref", "references", "table", "gallery", "math", "timeline", "score"}
    drop_tags.add("syntaxhighlight")

    def keep(node: Any) -> bool:
        if isinstance(node, Template):
            return False
        if isinstance(node, Tag) and str(node.tag).lower() in drop_tags:
            return False
        return not (
            isinstance(node, Wikilink)
            and str(node.title).strip().lower().lstrip(":").startswith(_DROP_LINK_NS)
        )

    code.nodes = [n for n in code.nodes if keep(n)]
    text = _STYLE_QUOTES.sub(_unquote, code.strip_code(normalize=True, collapse=True))
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def token_f1(reference: str, candidate: str) -> float:
    """Word-multiset F1 between two extractions (1.0 = the same words, in any order)."""
    from collections import Counter

    ref = Counter(re.findall(r"\w+", reference.lower()))
    got = Counter(re.findall(r"\w+", candidate.lower()))
    if not ref and not got:
        return 1.0
    common = sum((ref & got).values())
    if common == 0:
        return 0.0
    p, r = common / sum(got.values()), common / sum(ref.values())
    return 2 * p * r / (p + r)
