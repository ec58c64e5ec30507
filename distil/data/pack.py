"""Pack token streams into fixed-length sequences ``[CLS] … [SEP] [PAD]…`` (engine-free; the
family's tokens: ``<s> … </s> <pad>…`` for RoBERTa and XLM-R).

Two modes:

* cross-document (default, what HF ``run_mlm.py`` users expect): documents are concatenated
  with one ``[SEP]`` between them and cut into ``seq_len - 2`` token chunks; the tail is kept
  (padded). A separator that would land on a chunk edge is dropped instead: a row never starts
  with a separator and never ends ``[SEP] [SEP]`` (a row with one free slot is closed instead).
* ``cross_document=False``: every document is chunked on its own; its last chunk is padded.

Packing is a pure function of the token stream, so it never depends on how work is split across
workers. Documents arrive as pieces (``add(ids, new_document)``), so a long book is packed
without ever being held whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class SequencePacker:
    def __init__(
        self, seq_len: int, cls_id: int, sep_id: int, pad_id: int, cross_document: bool = True
    ):
        if seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 to hold [CLS] x [SEP], got {seq_len}")
        self.seq_len = seq_len
        self.capacity = seq_len - 2  # content tokens per row
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.cross_document = cross_document
        self._buf = np.empty(self.capacity, dtype=np.int64)
        self._fill = 0
        self._pending_boundary = False  # a new document started; applied when its tokens arrive
        self._rows: list[np.ndarray] = []
        self._lengths: list[int] = []

    def add(self, ids: np.ndarray | list[int], new_document: bool) -> None:
        """Append one piece of text's token ids. ``new_document`` marks a document boundary."""
        if new_document:
            self._pending_boundary = True
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return  # an empty document leaves no trace (no lone separator)
        if self._pending_boundary:
            self._pending_boundary = False
            if self._fill:
                if not self.cross_document or self._fill > self.capacity - 2:
                    self._close_row()  # own row per document / no room for [SEP] + a token
                else:
                    self._buf[self._fill] = self.sep_id
                    self._fill += 1
        pos = 0
        while pos < ids.size:
            take = min(self.capacity - self._fill, ids.size - pos)
            self._buf[self._fill : self._fill + take] = ids[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == self.capacity:
                self._close_row()

    def _close_row(self) -> None:
        row = np.full(self.seq_len, self.pad_id, dtype=np.int64)
        row[0] = self.cls_id
        row[1 : 1 + self._fill] = self._buf[: self._fill]
        row[1 + self._fill] = self.sep_id
        self._rows.append(row)
        self._lengths.append(self._fill + 2)
        self._fill = 0

    def finish(self) -> None:
        """Close the tail row (kept, padded)."""
        if self._fill:
            self._close_row()

    def pending_rows(self) -> int:
        return len(self._rows)

    def take_rows(self, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Finished rows so far (at most ``max_rows``): ``[n, seq_len]`` ids and ``[n]`` lengths."""
        n = len(self._rows) if max_rows is None else min(max_rows, len(self._rows))
        if n == 0:
            return np.zeros((0, self.seq_len), np.int64), np.zeros(0, np.int32)
        ids = np.stack(self._rows[:n])
        lengths = np.asarray(self._lengths[:n], dtype=np.int32)
        del self._rows[:n], self._lengths[:n]
        return ids, lengths


def pack_sequences(
    documents: list[list[int]] | Iterator[list[int]],
    seq_len: int,
    cls_id: int,
    sep_id: int,
    pad_id: int,
    cross_document: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Pack whole documents' token ids; returns ``[n, seq_len]`` ids and ``[n]`` lengths."""
    packer = SequencePacker(seq_len, cls_id, sep_id, pad_id, cross_document)
    for doc in documents:
        packer.add(doc, new_document=True)
    packer.finish()
    return packer.take_rows()


def padding_fraction(lengths: np.ndarray, seq_len: int) -> float:
    """Share of all slots that are ``[PAD]``."""
    total = int(lengths.size) * seq_len
    return 0.0 if total == 0 else 1.0 - float(np.asarray(lengths, np.int64).sum()) / total
