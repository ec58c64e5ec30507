"""Online mode's batch source: dynamically masked batches from a committed prepared dataset,
in the teacher-cache batch format (``input_ids``, ``attention_mask``, ``labels``).

Ranks shard the prepared files' row groups exactly as they shard a teacher cache
(``distil.data.readers.stream``: whole row groups, balanced, equal batch counts, seekable
resume), and masking is the cache's own (``distil.teacher.logits.MaskingParams`` over
``distil.teacher.masking.mask_sequence``): the epoch is the masked copy number, so a sequence
gets a new mask every epoch (RoBERTa-style dynamic masking, as DistilBERT's scripts do), drawn
from ``(seed, seq_id, epoch)`` — one stream per sequence, so no two ranks ever share a mask and a
resumed run masks exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil import storage
from distil.data import shards
from distil.data.readers.stream import ReadPosition, RowGroups, batches

COLUMNS = ["seq_id", "input_ids", "length"]
log = logging.getLogger("distil.train")


class PreparedBatches:
    """Masked batches of one rank from prepared shards, read like a teacher cache
    (``TeacherCache.iter_batches``: the same ``ReadPosition``); ``fs`` as in ``TeacherCache``."""

    def __init__(
        self,
        url: str,
        *,
        mlm_probability: float = 0.15,
        fs: Any = None,
    ):
        from distil.teacher.logits import MaskingParams

        self.url = url
        self.manifest = shards.open_prepared(url)
        special = self.manifest["special_ids"]
        self.pad_id = int(special["pad"])
        self.masking = MaskingParams.from_config(
            {
                "seed": 0,  # replaced per epoch by iter_batches' seed
                "copies": 1,
                "mask_prob": mlm_probability,
                "mask_token_frac": 0.8,
                "random_token_frac": 0.1,
                "mlm_smoothing": 0.0,
            },
            self.manifest,
        )
        self.row_groups = RowGroups(storage.committed_files(url), fs)

    def num_batches(self, batch_size: int, position: ReadPosition = ReadPosition()) -> int:
        """Batches each rank gets from ``iter_batches`` with the same position."""
        return -(-self.row_groups.plan(position).rows // batch_size)

    def iter_batches(
        self,
        batch_size: int,
        position: ReadPosition = ReadPosition(),
        *,
        start_batch: int = 0,
        shuffle: bool = True,
        shuffle_window: int = 1,
        read_ahead: int = 2,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Masked batches for one rank (``position``), from batch ``start_batch`` of the epoch
        on; masks are drawn from the position's ``(seed, epoch)``."""
        tables = self.row_groups.iter_rows(
            self.row_groups.plan(position, shuffle=shuffle),
            position,
            columns=COLUMNS,
            start_row=start_batch * batch_size,
            shuffle=shuffle,
            shuffle_window=shuffle_window,
            read_ahead=read_ahead,
        )
        seed, epoch = position.seed, position.epoch
        yield from batches(tables, batch_size, lambda t: self.collate(t, seed, epoch))

    def collate(self, table: pa.Table, seed: int, epoch: int) -> dict[str, torch.Tensor]:
        """Mask each row with ``(seed, seq_id, copy=epoch)`` (the cache builder's vectorised
        ``MaskingParams.mask_batch``, one call per batch) and cut to the batch's longest."""
        seq_ids = table.column("seq_id").to_numpy()
        lengths = table.column("length").to_numpy().astype(np.int64)
        width = int(lengths.max()) if len(lengths) else 0
        ids = shards.input_ids_matrix(table)[:, :width]
        masked = dataclasses.replace(self.masking, seed=seed).mask_batch(
            ids, lengths, seq_ids, epoch
        )
        attention = np.arange(width)[None, :] < lengths[:, None]
        input_ids = np.where(attention, masked.input_ids, self.pad_id)
        labels = np.full(ids.shape, -100, dtype=np.int64)
        labels[masked.selected] = masked.labels
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "labels": torch.from_numpy(labels),
        }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Host batch -> ``device``: pinned first on CUDA, so ``non_blocking`` really overlaps.
    Values that are not tensors (a fixed-shape batch's host-side counts) stay as they are."""
    if device.type == "cuda":
        return {
            k: v.pin_memory().to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ------------------------------------------------------------------------ fixed-shape batches
@dataclasses.dataclass(frozen=True)
class BatchShape:
    """The one shape every training micro-batch has, so the step never builds a tensor whose
    size depends on the data (each such size is a device-to-host sync, and a new shape is a
    recompile under ``torch.compile``): ``batch_size`` rows of ``seq_len`` ids, and ``slots``
    target rows per sequence (NVIDIA's BERT "max predictions per sequence"): the masked
    positions padded to a fixed count, or every position for a ``kd_positions: all`` cache."""

    batch_size: int
    seq_len: int
    slots: int
    pad_id: int
    # every sequence of the input fills ``seq_len`` (packed text): the encoder then runs with
    # no attention mask on every batch, the short last one of an epoch included (its padding
    # rows are left out of every loss term by their weights). A property of the run, not of a
    # batch: a per-batch flag would be a second compiled graph the first time it flips.
    unpadded: bool = False

    @classmethod
    def for_masking(
        cls,
        batch_size: int,
        seq_len: int,
        mask_prob: float,
        pad_id: int,
        all_positions: bool,
        unpadded: bool = False,
    ) -> BatchShape:
        # the masking routine masks round(p * maskable) <= round(p * seq_len) per sequence; one
        # more slot covers a tie at its threshold (``distil.teacher.masking.mask_batch``)
        slots = seq_len if all_positions else min(seq_len, int(round(mask_prob * seq_len)) + 1)
        return cls(batch_size, seq_len, max(1, slots), pad_id, unpadded)


def fixed_shape(batch: dict[str, torch.Tensor], shape: BatchShape) -> dict[str, Any]:
    """A batch of the cache/online contract (``docs/CONTRACTS.md``: [b, l] inputs with l the
    batch's longest row, ``[N, K]`` targets in row-major order of the target positions) padded
    to ``shape``, with the target rows moved into fixed slots:

    * ``input_ids`` / ``attention_mask`` ``[B, L]`` (pad id / 0; the step reads the masked
      positions' labels from ``target_labels``, so ``labels`` is not sent to the device);
    * ``target_index`` ``[B * S]`` long: the flat ``b * L + l`` position of each slot, and
      ``target_weight`` ``[B * S]`` 1.0 for a real slot, 0.0 for padding (index 0);
    * ``target_labels`` ``[B * S]``: the MLM label of each slot (-100: padding, or a
      ``kd_positions: all`` slot that was not masked);
    * ``target_ids`` / ``target_logprobs`` (``-inf`` in padding) / ``target_counts`` /
      ``target_logz`` ``[B * S, ...]``; ``hidden_sketch`` ``[B, L, d]`` int8, as the cache
      stores it (zeros on padding; a quarter of float32's bytes to the device);
    * host-side ints ``n_tokens``, ``n_targets`` and bool ``unpadded``: the encoder needs no
      attention mask (``shape.unpadded`` and every real row fills L; a short last batch's
      padding rows have no weight anywhere). The same on every batch of a run: one graph.

    A row with more target positions than ``shape.slots`` (never, with the masking routine's
    counts) widens the slots for that batch, logged, rather than dropping targets.
    """
    ids, attention, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    b, width = ids.shape
    big_b, big_l = shape.batch_size, shape.seq_len
    if b > big_b or width > big_l:
        raise ValueError(f"batch [{b}, {width}] does not fit the fixed shape [{big_b}, {big_l}]")
    out: dict[str, Any] = {}
    pad = np.full((big_b, big_l), shape.pad_id, np.int64)
    pad[:b, :width] = ids.numpy()
    out["input_ids"] = torch.from_numpy(pad)
    att = np.zeros((big_b, big_l), np.int64)
    att[:b, :width] = attention.numpy()
    out["attention_mask"] = torch.from_numpy(att)
    where = batch.get("kd_positions")
    target_mask = (where.numpy() if where is not None else labels.numpy() != -100).astype(bool)
    rows, cols = np.nonzero(target_mask)  # row-major: the order of the target rows
    per_row = target_mask.sum(axis=1)
    slots = shape.slots
    if per_row.size and per_row.max() > slots:
        log.warning(
            "a sequence has %d target positions, more than the %d fixed slots: this batch gets "
            "wider slots (a new shape: one recompile under torch.compile)",
            int(per_row.max()),
            slots,
        )
        slots = int(per_row.max())
    starts = np.repeat(np.cumsum(per_row) - per_row, per_row)
    slot = rows * slots + (np.arange(len(rows)) - starts)
    n_slots = big_b * slots
    index = np.zeros(n_slots, np.int64)
    index[slot] = rows * big_l + cols
    weight = np.zeros(n_slots, np.float32)
    weight[slot] = 1.0
    slot_labels = np.full(n_slots, -100, np.int64)
    slot_labels[slot] = labels.numpy()[rows, cols]
    out["target_index"] = torch.from_numpy(index)
    out["target_weight"] = torch.from_numpy(weight)
    out["target_labels"] = torch.from_numpy(slot_labels)
    # padding has no support: -inf log-probs (top-k), or no draws (sampled: counts 0, and
    # finite log-probs so that no 0 * inf appears when draws are reweighted)
    no_lp = 0.0 if "target_counts" in batch else -np.inf
    fills = {"target_ids": 0, "target_logprobs": no_lp, "target_counts": 0, "target_logz": 0}
    for key, fill in fills.items():
        if key in batch:
            v = batch[key].numpy()
            full = np.full((n_slots, *v.shape[1:]), fill, v.dtype)
            full[slot] = v
            out[key] = torch.from_numpy(full)
    if "hidden_sketch" in batch:
        sk = batch["hidden_sketch"].numpy()
        full = np.zeros((big_b, big_l, sk.shape[1]), np.int8)  # the cache's int8 values
        full[:b, :width][attention.numpy().astype(bool)] = sk
        out["hidden_sketch"] = torch.from_numpy(full)
    out["n_tokens"] = int(att.sum())
    out["n_targets"] = len(rows)
    out["unpadded"] = shape.unpadded
    if shape.unpadded and (width < big_l or not attention.numpy().all()):
        # the input's manifest said every sequence fills seq_len, but this batch has a shorter
        # one: it needs the mask (a second graph under torch.compile, but correct)
        log.warning(
            "a batch has a sequence shorter than %d although the input's manifest says none "
            "is: this batch runs with an attention mask",
            big_l,
        )
        out["unpadded"] = False
    return out


class DevicePrefetcher:
    """Training batches made ready off the training thread: a background thread pulls host
    batches from ``batches``, applies ``prepare`` (e.g. ``fixed_shape``) and pins them into a
    queue of ``depth`` batches; the host-to-device copy of batch n+1 is issued on a side CUDA
    stream while step n runs, so the training thread only hands kernels to the GPU.

    The training thread never waits for batch n+1 to hand out batch n: n+1's copy is issued
    when ``__next__`` finds it already in the queue, else on the next call. So up to ``depth``
    host batches wait in the queue, one more is copied or held on the device, and the thread
    prepares the next (``read_ahead``). ``waited_s`` / ``waits``: how long and how often the
    training thread found no batch ready (the input pipeline did not keep up).

    Each item is ``(device batch, position)``, ``position`` = ``position_of()`` read right
    after the batch was taken from ``batches``: what a checkpoint must record as consumed (the
    thread runs ahead of the training loop, so the source's own counters do not say it).
    """

    def __init__(
        self,
        batches: Iterator[dict[str, Any]],
        device: torch.device,
        prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        position_of: Callable[[], Any] | None = None,
        depth: int = 2,
    ):
        self.batches, self.device, self.prepare = batches, torch.device(device), prepare
        self.position_of = position_of or (lambda: None)
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self.read_ahead = max(1, depth) + 1  # batches ready beyond the one being trained on
        self.stop = threading.Event()
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.next: tuple[dict[str, Any], Any] | BaseException | None = None
        self.waited_s, self.waits = 0.0, 0
        self.thread = threading.Thread(target=self._run, daemon=True, name="batch-prefetch")
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.batches:
                position = self.position_of()
                if self.prepare is not None:
                    batch = self.prepare(batch)
                if self.cuda:
                    batch = {
                        k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()
                    }
                if not self._put((batch, position)):
                    return
        except BaseException as e:  # handed to the training thread, raised there
            self._put(e)
        finally:
            close = getattr(self.batches, "close", None)
            if close is not None:
                close()

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self, block: bool) -> tuple[dict[str, Any], Any] | BaseException | None:
        """The next queued batch with its copy to the device issued (or the error the thread
        hit instead); None when ``block`` is false and none is queued yet."""
        try:
            item = self.q.get_nowait()
        except queue.Empty:
            if not block:
                return None
            t0 = time.perf_counter()
            item = self.q.get()
            self.waited_s += time.perf_counter() - t0
            self.waits += 1
        if isinstance(item, BaseException):
            return item
        host, position = item
        if not self.cuda:
            return to_device(host, self.device), position
        with torch.cuda.stream(self.stream):
            dev = {
                k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in host.items()
            }
        return dev, position

    def __iter__(self) -> DevicePrefetcher:
        return self

    def __next__(self) -> tuple[dict[str, Any], Any]:
        current = self.next if self.next is not None else self._take(block=True)
        self.next = None
        if isinstance(current, BaseException):  # after every batch before it was handed out
            raise current
        if self.cuda:
            # the compute stream waits for this batch's copy; the caching allocator must not
            # reuse its memory before the compute stream is done with it
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for v in current[0].values():
                if torch.is_tensor(v):
                    v.record_stream(torch.cuda.current_stream(self.device))
        # batch n+1's copy overlaps step n when it is ready; never wait for it here
        self.next = self._take(block=False)
        return current

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
