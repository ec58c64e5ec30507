"""Rank-sharded streaming of committed Parquet files, by whole row groups: the one data path
under both training sources (teacher cache rows, prepared shards in online mode).

Why row groups: a rank that reads rows dealt round-robin inside every file downloads and decodes
every file (``world_size`` x the object-store traffic). Here the unit of sharding is a
``(file, row group)`` pair, known from the Parquet footers alone (``read_footer``: exactly the
footer's bytes), and every rank reads only its own units' column chunks (plus the footers).

One epoch for ``(world_size, seed, epoch)``:

* units are shuffled with ``(seed, epoch)``, then dealt longest-first to the rank with the fewest
  rows so far (ties: lowest rank), so the ranks' row counts differ by at most one unit;
* every rank yields the same number of rows, the smallest rank's count (DDP hangs otherwise):
  the rows cut off the end of the bigger ranks' streams are at most ``world_size - 1`` row
  groups in all (``RankPlan.dropped``), and they change with the epoch;
* a rank reads its units in shuffled order on a background thread (``read_ahead`` row groups
  queued), and permutes rows within consecutive windows of ``shuffle_window`` units
  (``(seed, epoch, rank, window)``), so memory stays bounded by a few row groups. The default
  window is one row group (rows shuffled within it, row groups' order shuffled per epoch): a
  resume then reads one row group before its first batch; a wider window mixes more rows per
  batch and a resume reads the whole window.

A split (``train``/``heldout`` by ``seq_id``, ``distil.data.shards.is_heldout``) filters rows
inside each unit; balancing then needs each unit's row count *in the split*, which the footers do
not have: the ``seq_id`` column of every unit is read once per reader
(8 bytes a row before compression, about 1% of a cache; on 16 threads) — the only bytes outside
a rank's units.

Resume: the rank's stream is a pure function of ``(world_size, rank, seed, epoch)``, batches are
consecutive ``batch_size`` rows of it, so a position is ``(epoch, batches consumed)``; the reader
maps it to ``(window, row offset)`` and starts reading at that window's first unit, never the
units before it (``EpochStream`` keeps the position for the recipe's checkpoints).
"""

from __future__ import annotations

import heapq
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distil import storage
from distil.data.shards import is_heldout

SPLITS = ("train", "heldout", "all")
INDEX_THREADS = 16


@dataclass(frozen=True)
class ReadPosition:
    """Which rows of committed files one rank reads in one epoch: its place among the ranks,
    the shuffle's seed and epoch, and the split (``train``/``heldout`` by ``seq_id``, or
    ``all``). One value handed down from the trainer to the row groups, instead of the same
    six arguments at every level."""

    rank: int = 0
    world_size: int = 1
    seed: int = 0
    epoch: int = 0
    split: str = "train"
    heldout_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world_size {self.world_size}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {self.split!r}")


@dataclass(frozen=True)
class RankPlan:
    units: list[int]  # indices into ``RowGroups.units``, in this rank's reading order
    unit_rows: list[int]  # rows of each of those units in the split
    rows: int  # rows this rank yields this epoch (the same on every rank)
    dropped: int  # rows of the split that no rank yields this epoch

    def windows(self, size: int) -> list[list[int]]:
        """Positions into ``units`` grouped into shuffle windows."""
        return [
            list(range(i, min(i + size, len(self.units)))) for i in range(0, len(self.units), size)
        ]


def assign(
    unit_rows: list[int], world_size: int, seed: int, epoch: int, shuffle: bool
) -> list[list[int]]:
    """Whole units per rank, balanced by rows, each rank's in shuffled reading order."""
    n = len(unit_rows)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    rank_of = np.zeros(n, np.int64)
    heap = [(0, r) for r in range(world_size)]
    for u in sorted(order.tolist(), key=lambda u: -unit_rows[u]):  # stable: ties keep the shuffle
        load, r = heapq.heappop(heap)
        rank_of[u] = r
        heapq.heappush(heap, (load + unit_rows[u], r))
    return [[int(u) for u in order if rank_of[u] == r] for r in range(world_size)]


class RowGroups:
    """The ``(file, row group)`` units of committed Parquet files, from their footers, and the
    reads of single units. ``fs``: an fsspec filesystem to open every file with (e.g.
    ``storage.CountingFileSystem``); default: each URL's own."""

    def __init__(self, files: list[str], fs: Any = None):
        self.files, self.fs = files, fs

        def footer(url: str) -> pq.FileMetaData:
            with storage.open_for_ranges(url, fs) as f:
                return read_footer(f)

        # a full-size cache has tens of thousands of files: one small ranged GET each, in parallel
        with ThreadPoolExecutor(INDEX_THREADS) as pool:
            self.metadata: list[pq.FileMetaData] = list(pool.map(footer, files))
        self.units = [
            (fi, rg) for fi, md in enumerate(self.metadata) for rg in range(md.num_row_groups)
        ]
        # a teacher cache unit's masked copy (footer min == max of ``copy``; -1: mixed/unknown)
        self.copy_of = [footer_copy(self.metadata[fi], rg) for fi, rg in self.units]
        self._held: dict[tuple[int, float], int] = {}  # (unit, fraction) -> heldout rows

    def read(self, unit: int, columns: list[str] | None = None) -> pa.Table:
        """One row group: its column chunks only (the footer is already known)."""
        fi, rg = self.units[unit]
        with storage.open_for_ranges(self.files[fi], self.fs) as f:
            pf = pq.ParquetFile(f, metadata=self.metadata[fi], pre_buffer=True)
            return pf.read_row_group(rg, columns=columns)

    def split_rows(self, split: str, fraction: float, units: list[int]) -> list[int]:
        """Rows of each of ``units`` in ``split`` (footers for ``all``; else the seq_id column,
        read once per unit and only for the units asked about)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        total = [
            self.metadata[self.units[u][0]].row_group(self.units[u][1]).num_rows for u in units
        ]
        if split == "all":
            return total

        def held_rows(u: int) -> int:
            seq_ids = self.read(u, ["seq_id"]).column("seq_id").to_numpy()
            return int(is_heldout(seq_ids, fraction).sum())

        todo = [u for u in units if (u, fraction) not in self._held]
        with ThreadPoolExecutor(INDEX_THREADS) as pool:  # many small ranged GETs
            for u, h in zip(todo, pool.map(held_rows, todo), strict=True):
                self._held[(u, fraction)] = h
        held = [self._held[(u, fraction)] for u in units]
        return held if split == "heldout" else [t - h for t, h in zip(total, held, strict=True)]

    def plan(
        self, position: ReadPosition, *, shuffle: bool = True, copy: int | None = None
    ) -> RankPlan:
        """This rank's units for the epoch and the row count every rank yields; with ``copy``,
        only the units of that masked copy (the others are never read)."""
        units = [u for u in range(len(self.units)) if copy is None or self.copy_of[u] == copy]
        split, world_size = position.split, position.world_size
        fraction = position.heldout_fraction
        rows = dict(zip(units, self.split_rows(split, fraction, units), strict=True))
        live = [u for u in units if rows[u] > 0]
        if len(live) < world_size:
            raise ValueError(
                f"{len(live)} row group(s) hold {split} rows, fewer than the {world_size} workers, "
                "and a worker reads whole row groups: use fewer workers, or more data / smaller "
                "row groups"
            )
        per_rank = assign(
            [rows[u] for u in live], world_size, position.seed, position.epoch, shuffle
        )
        loads = [sum(rows[live[i]] for i in p) for p in per_rank]
        cut = min(loads)
        mine = [live[i] for i in per_rank[position.rank]]
        return RankPlan(mine, [rows[u] for u in mine], cut, sum(loads) - cut * world_size)

    def iter_rows(
        self,
        plan: RankPlan,
        position: ReadPosition,
        *,
        columns: list[str] | None = None,
        start_row: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1,
        read_ahead: int = 2,
    ) -> Iterator[pa.Table]:
        """Consecutive tables of this rank's row stream, from ``start_row`` on, cut at
        ``plan.rows`` (when known). Reading starts at the window holding ``start_row``."""
        windows = plan.windows(max(1, shuffle_window))
        first, skip = 0, start_row
        while first < len(windows) and skip >= sum(plan.unit_rows[i] for i in windows[first]):
            skip -= sum(plan.unit_rows[i] for i in windows[first])
            first += 1
        todo = [(w, plan.units[i]) for w in range(first, len(windows)) for i in windows[w]]

        def load(item: tuple[int, int]) -> tuple[int, pa.Table]:
            w, unit = item
            table = self.read(unit, columns)
            if position.split != "all":
                held = is_heldout(table.column("seq_id").to_numpy(), position.heldout_fraction)
                table = table.filter(pa.array(held if position.split == "heldout" else ~held))
            return w, table

        left = plan.rows - start_row
        parts: list[pa.Table] = []
        for w, table in _Prefetch(load, todo, read_ahead):
            parts.append(table)
            if len(parts) < len(windows[w]):
                continue
            window = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            parts = []
            if shuffle:
                rng = np.random.default_rng([position.seed, position.epoch, position.rank, w])
                window = window.take(pa.array(rng.permutation(window.num_rows)))
            if skip:
                window, skip = window.slice(skip), 0
            window = window.slice(0, max(0, left))
            left -= window.num_rows
            if window.num_rows:
                yield window
            if left <= 0:
                return


def footer_copy(md: pq.FileMetaData, rg: int) -> int | None:
    """The ``copy`` of every row of row group ``rg`` from its statistics: None without a
    ``copy`` column, -1 when its rows hold several copies (or no statistics)."""
    group = md.row_group(rg)
    for c in range(group.num_columns):
        col = group.column(c)
        if col.path_in_schema == "copy":
            st = col.statistics
            ok = st is not None and st.has_min_max and st.min == st.max
            return int(st.min) if ok else -1
    return None


def read_footer(f: Any) -> pq.FileMetaData:
    """A Parquet file's metadata from exactly its footer bytes (two ranged reads): Arrow's own
    open reads the last 64 KiB, which for small files is all of it."""
    size = f.seek(0, 2)
    f.seek(size - 8)
    tail = f.read(8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ValueError(f"{getattr(f, 'path', f)} is not a Parquet file (no PAR1 footer)")
    n = int.from_bytes(tail[:4], "little")
    f.seek(size - 8 - n)
    footer = f.read(n)
    return pq.read_metadata(pa.BufferReader(b"PAR1" + footer + tail))


class _Prefetch:
    """``fn(item)`` for each item on a background thread, at most ``depth`` results queued
    (read-ahead); leaving the loop early stops the thread. Read-ahead starts once the first
    result is taken, so a (re)start reads exactly what its first batch needs before yielding
    it, and later items are then fetched while the consumer trains on earlier ones."""

    def __init__(self, fn: Callable, items: list, depth: int):
        self.fn, self.items = fn, items
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.stop = threading.Event()
        self.first_taken = threading.Event()

    def _run(self) -> None:
        for i, item in enumerate(self.items):
            if i == 1:
                while not (self.first_taken.wait(0.1) or self.stop.is_set()):
                    pass
                if self.stop.is_set():
                    return
            try:
                out = self.fn(item)
            except BaseException as e:  # handed to the consumer, raised there
                out = e
            while not self.stop.is_set():
                try:
                    self.q.put(out, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.stop.is_set() or isinstance(out, BaseException):
                return

    def __iter__(self) -> Iterator:
        thread = threading.Thread(target=self._run, daemon=True, name="rowgroup-prefetch")
        thread.start()
        try:
            for _ in self.items:
                out = self.q.get()
                self.first_taken.set()
                if isinstance(out, BaseException):
                    raise out
                yield out
        finally:
            self.stop.set()
            # let an in-flight read finish: a daemon thread inside Arrow/fsspec code when the
            # interpreter exits aborts it (PyGILState_Release fatal error)
            thread.join(timeout=60)


def batches(
    tables: Iterator[pa.Table], batch_size: int, collate: Callable[[pa.Table], Any]
) -> Iterator[Any]:
    """Collated batches of ``batch_size`` consecutive rows (the last one may be short)."""
    pending: list[pa.Table] = []
    n = 0
    for table in tables:
        while table.num_rows:
            take = min(batch_size - n, table.num_rows)
            pending.append(table.slice(0, take))
            table, n = table.slice(take), n + take
            if n == batch_size:
                yield collate(pa.concat_tables(pending) if len(pending) > 1 else pending[0])
                pending, n = [], 0
    if n:
        yield collate(pa.concat_tables(pending) if len(pending) > 1 else pending[0])


def list_parts(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(per-row lengths, flat values) of a list column, correct for sliced/taken tables."""
    import pyarrow.compute as pc

    col = table.column(name).combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    return lengths.astype(np.int64), col.flatten().to_numpy(zero_copy_only=False)


def scatter_rows(
    lengths: np.ndarray, values: np.ndarray, fill: int, width: int | None = None
) -> np.ndarray:
    """[B, max(lengths)] int64 matrix of variable-length rows, ``fill`` after each row's end."""
    b = len(lengths)
    width = int(lengths.max()) if width is None and b else (width or 0)
    out = np.full((b, width), fill, dtype=np.int64)
    rows = np.repeat(np.arange(b), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, np.arange(len(values)) - starts] = values
    return out


class EpochStream:
    """Endless micro-batches of one rank, epoch after epoch, from a saved ``(epoch, batches
    consumed)`` position on; ``epoch_batches(epoch, start_batch)`` yields one epoch's batches
    from ``start_batch`` on (the reader seeks there; nothing before it is read)."""

    def __init__(
        self,
        epoch_batches: Callable[[int, int], Iterator[Any]],
        epoch: int = 0,
        batch_in_epoch: int = 0,
        what: str = "the training split",
    ):
        self.epoch_batches, self.epoch, self.batch_in_epoch, self.what = (
            epoch_batches,
            epoch,
            batch_in_epoch,
            what,
        )

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def __iter__(self) -> Iterator[Any]:
        while True:
            n = 0
            for batch in self.epoch_batches(self.epoch, self.batch_in_epoch):
                n += 1
                self.batch_in_epoch += 1
                yield batch
            if n == 0 and self.batch_in_epoch == 0:
                raise ValueError(
                    f"{self.what} yields no batch: too little data for this batch size and number of workers"
                )
            self.epoch += 1
            self.batch_in_epoch = 0
