"""The records every reader yields (``Document | DeadLetter | Skipped``; the review reader,
``review_files``, yields ``Review | DeadLetter``), the strict-mode error, and the one mapping ->
record rule that JSONL lines and Parquet rows share."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Document:
    source: str
    offset: int
    doc_id: str
    text: str
    continues: bool = False  # True: a further piece of the previous document (same doc_id)


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be used, and why: the one dead-letter record of every reader
    (corpora for ``distil prepare``, reviews for ``distil finetune`` and ``distil score``).

    ``offset`` is where the record is in ``source``, as the reader counts (a corpus reader's
    byte offset, row or page number; a review's row number; -1 for a whole file that could not
    be read). ``raw`` is the start of the record as read and ``id`` its id, where the reader
    keeps them (reviews)."""

    source: str
    offset: int
    reason: str
    detail: str = ""
    raw: str = ""
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A line of ``distil prepare``'s dead-letter files (docs/CONTRACTS.md)."""
        return {
            "source": self.source,
            "offset": self.offset,
            "reason": self.reason,
            "detail": self.detail,
        }

    def to_review_row(self) -> dict[str, Any]:
        """A row of ``distil score``'s dead-letter table (its columns before the run's own)."""
        return {
            "id": self.id,
            "source_file": self.source,
            "source_row": self.offset,
            "reason": self.reason,
            "detail": self.detail,
            "raw": self.raw,
        }


@dataclass(frozen=True)
class Skipped:
    """A record deliberately left out (wiki redirect or non-article namespace): not an error."""

    source: str
    offset: int
    reason: str


Record = Document | DeadLetter | Skipped


class BadInputError(ValueError):
    """Raised in ``--strict`` mode for the first bad record."""


def _from_mapping(
    obj: Any, source: str, offset: int, text_column: str, id_column: str | None
) -> Document | DeadLetter:
    if not isinstance(obj, dict):
        return DeadLetter(source, offset, "not_an_object", type(obj).__name__)
    if text_column not in obj or obj[text_column] is None:
        return DeadLetter(source, offset, "missing_text", f"no {text_column!r} field")
    text = obj[text_column]
    if not isinstance(text, str):
        return DeadLetter(source, offset, "text_not_string", type(text).__name__)
    if not text.strip():
        return DeadLetter(source, offset, "empty_text", "")
    doc_id = f"{posixpath.basename(source)}:{offset}"
    if id_column and obj.get(id_column) is not None:
        doc_id = str(obj[id_column])
    return Document(source, offset, doc_id, text)
