"""Rank-sharded streaming of the teacher cache and the prepared shards
(distil.data.readers.stream):
what each rank reads from a real S3 (SeaweedFS), which rows it gets, resume by seeking, and the
online mode's masking."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from stage3_data import build_cache, small_row_groups, write_prepared

from distil import storage
from distil.data.readers.stream import RankPlan, ReadPosition, assign
from distil.data.shards import is_heldout
from distil.teacher.cache import TeacherCache
from distil.teacher.masking import mask_sequence
from distil.train.data import PreparedBatches

RG_ROWS = 8
HELDOUT = 0.1


@pytest.fixture(scope="module")
def s3_rg_cache(s3_server, real_tokenizer_dir, tiny_teacher_dir) -> str:
    """A top-k cache on S3, 2 files x 16 row groups of 8 rows."""
    root = f"s3://{s3_server.bucket}/stream"
    prepared = write_prepared(f"{root}/prepared", real_tokenizer_dir)
    return small_row_groups(build_cache(prepared, f"{root}/cache", tiny_teacher_dir), RG_ROWS)


def _counting(url: str) -> storage.CountingFileSystem:
    return storage.CountingFileSystem(storage.get_fs(url)[0])


def _unit_bytes(cache: TeacherCache) -> list[int]:
    """Compressed bytes of each (file, row group) unit, from the footers."""
    out = []
    for fi, rg in cache.row_groups.units:
        md = cache.row_groups.metadata[fi].row_group(rg)
        out.append(sum(md.column(c).total_compressed_size for c in range(md.num_columns)))
    return out


def _resume_matches(
    url: str, position: ReadPosition, start_of
) -> tuple[TeacherCache, RankPlan, int, int, int]:
    """Resume at batch ``start_of(n batches)``: the batches after it are bit-identical to an
    uninterrupted run's. Returns the counting reader's cache, plan, the bytes the resume read,
    the start batch and the epoch's batch count."""
    straight = list(TeacherCache(url).iter_batches(4, position))
    start = start_of(len(straight))
    fs = _counting(url)
    cache = TeacherCache(url, fs=fs)
    plan = cache.plan(position)
    before = fs.bytes_read
    resumed = list(cache.iter_batches(4, position, start_batch=start))
    read = fs.bytes_read - before
    assert len(resumed) == len(straight) - start
    for a, b in zip(straight[start:], resumed, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    return cache, plan, read, start, len(straight)


def _seq_keys(cache: TeacherCache, plan, position: ReadPosition) -> list[tuple[int, int]]:
    rows = cache.row_groups.iter_rows(plan, position)
    return [
        (s, c)
        for t in rows
        for s, c in zip(t.column("seq_id").to_pylist(), t.column("copy").to_pylist(), strict=True)
    ]


@pytest.mark.parametrize("world", [2, 4])
def test_each_rank_reads_only_its_row_groups_from_s3(s3_rg_cache, world):
    files = storage.committed_files(s3_rg_cache)
    cache_bytes = sum(storage.get_fs(f)[0].size(storage.get_fs(f)[1]) for f in files)
    all_rows = pq.read_table(
        [storage.get_fs(f)[1] for f in files], filesystem=storage.get_fs(files[0])[0]
    )
    train = {
        (s, c)
        for s, c in zip(all_rows["seq_id"].to_pylist(), all_rows["copy"].to_pylist(), strict=True)
        if not is_heldout(s, HELDOUT)
    }
    kw = dict(world_size=world, seed=3, epoch=1, split="train", heldout_fraction=HELDOUT)
    seen, counts = [], []
    for rank in range(world):
        fs = _counting(s3_rg_cache)
        cache = TeacherCache(s3_rg_cache, fs=fs)
        data_bytes = sum(_unit_bytes(cache))  # reads the footers (through ``fs``)
        footer_bytes = fs.bytes_read
        position = ReadPosition(rank=rank, **kw)
        plan = cache.plan(position)
        index_bytes = fs.bytes_read - footer_bytes  # the seq_id column: train rows per unit
        n = sum(1 for _ in cache.iter_batches(8, position))
        streamed = fs.bytes_read - footer_bytes - index_bytes
        mine = sum(_unit_bytes(cache)[u] for u in plan.units)
        print(
            f"world {world} rank {rank}: {streamed} B streamed (own units {mine} B), "
            f"{footer_bytes} B footers, {index_bytes} B split index, cache {cache_bytes} B"
        )
        assert streamed <= 1.1 * data_bytes / world, (streamed, data_bytes)
        assert streamed <= mine * 1.02 + 1024  # nothing but its own row groups
        assert index_bytes < 0.1 * cache_bytes
        counts.append(n)
        seen.append(_seq_keys(TeacherCache(s3_rg_cache), plan, position))
        assert len(seen[-1]) == plan.rows
    assert len(set(counts)) == 1  # DDP: every rank the same number of batches
    union = set().union(*map(set, seen))
    assert sum(map(len, seen)) == len(union)  # disjoint
    dropped = TeacherCache(s3_rg_cache).plan(ReadPosition(rank=0, **kw)).dropped
    assert union <= train and len(union) == len(train) - dropped
    assert dropped <= (world - 1) * RG_ROWS


def test_resume_near_the_end_of_an_epoch_seeks_and_matches(s3_rg_cache):
    position = ReadPosition(rank=1, world_size=2, seed=3, epoch=0, heldout_fraction=HELDOUT)
    cache, plan, read, start, n = _resume_matches(s3_rg_cache, position, lambda n: int(0.9 * n))
    # only the shuffle window (2 units) holding the resume row and the units after it
    sizes = _unit_bytes(cache)
    rows_before, first_window = start * 4, 0
    windows = plan.windows(2)
    while rows_before >= sum(plan.unit_rows[i] for i in windows[first_window]):
        rows_before -= sum(plan.unit_rows[i] for i in windows[first_window])
        first_window += 1
    needed = sum(sizes[plan.units[i]] for w in windows[first_window:] for i in w)
    whole = sum(sizes[u] for u in plan.units)
    print(f"resume at batch {start}/{n}: read {read} B, needed {needed} B, epoch {whole} B")
    assert read <= needed * 1.02 + 1024 and read < 0.35 * whole


def test_a_read_position_outside_the_ranks_or_splits_is_refused():
    with pytest.raises(ValueError, match="rank 2 outside world_size 2"):
        ReadPosition(rank=2, world_size=2)
    with pytest.raises(ValueError, match="split must be one of train, heldout, all"):
        ReadPosition(split="test")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ReadPosition().epoch = 1  # type: ignore[misc]


def test_assignment_is_balanced_deterministic_and_reshuffled():
    rows = [8] * 30 + [5, 3, 7]
    a = assign(rows, 4, seed=1, epoch=0, shuffle=True)
    assert a == assign(rows, 4, seed=1, epoch=0, shuffle=True)
    assert a != assign(rows, 4, seed=1, epoch=1, shuffle=True)
    assert sorted(u for p in a for u in p) == list(range(len(rows)))
    loads = [sum(rows[u] for u in p) for p in a]
    assert max(loads) - min(loads) <= max(rows)


def test_online_batches_use_the_cache_masking_and_shard_by_row_group(tmp_path, real_tokenizer_dir):
    url = small_row_groups(write_prepared(str(tmp_path / "prep"), real_tokenizer_dir), 16)
    src = PreparedBatches(url, mlm_probability=0.2)
    ranks = [ReadPosition(rank=r, world_size=2, seed=5, epoch=2) for r in (0, 1)]
    plans = [src.row_groups.plan(p) for p in ranks]
    assert not set(plans[0].units) & set(plans[1].units)
    assert src.num_batches(8, ranks[0]) == src.num_batches(8, ranks[1])
    # masking: distil.teacher.masking, keyed by (seed, seq_id, copy=epoch)
    table = src.row_groups.read(plans[0].units[0], ["seq_id", "input_ids", "length"])
    assert table.schema.field("input_ids").type.value_type == "uint16"  # not upcast on read
    batch = src.collate(table, seed=5, epoch=2)
    manifest = src.manifest
    special = np.array(sorted(set(manifest["special_ids"].values())), np.int64)
    for j in range(table.num_rows):
        n = table["length"][j].as_py()
        ids = np.asarray(table["input_ids"][j].as_py())
        m = mask_sequence(
            ids,
            n,
            seed=5,
            seq_id=table["seq_id"][j].as_py(),
            copy=2,
            special_ids=special,
            mask_id=manifest["special_ids"]["mask"],
            vocab_size=manifest["vocab_size"],
            mask_prob=0.2,
        )
        assert batch["input_ids"][j, :n].tolist() == m.input_ids.tolist()
        assert torch.nonzero(batch["labels"][j] != -100).flatten().tolist() == m.positions.tolist()
        assert int(batch["attention_mask"][j].sum()) == n
    other_epoch = src.collate(table, seed=5, epoch=3)
    assert not torch.equal(batch["labels"], other_epoch["labels"])  # dynamic masking


# ------------------------------------------------------------- dynamic masking (copies > 1)
COPIES = 2


@pytest.fixture(scope="module")
def s3_copies_cache(s3_server, real_tokenizer_dir, tiny_teacher_dir) -> str:
    """A cache with 2 masked copies per sequence, written by the builder itself: units of 100
    sequences in row groups of 8, so a row group would span the copy boundary at row 100 if
    the writer let it."""
    root = f"s3://{s3_server.bucket}/stream-copies"
    prepared = write_prepared(f"{root}/prepared", real_tokenizer_dir)
    return build_cache(
        prepared, f"{root}/cache", tiny_teacher_dir, copies=COPIES, unit_rows=100, row_group_rows=8
    )


def test_an_epoch_reads_only_its_copy_each_sequence_once(s3_copies_cache):
    cache = TeacherCache(s3_copies_cache)
    assert cache.copies == COPIES
    assert all(c in range(COPIES) for c in cache.row_groups.copy_of)  # no row group spans two
    sizes = _unit_bytes(cache)
    cache_bytes = sum(sizes)
    world = 2
    train_seqs = None
    for epoch in (0, 1, 2):
        kw = dict(world_size=world, seed=3, epoch=epoch, split="train", heldout_fraction=HELDOUT)
        keys, counts = [], []
        for rank in range(world):
            fs = _counting(s3_copies_cache)
            c = TeacherCache(s3_copies_cache, fs=fs)
            footers = c.row_groups and fs.bytes_read
            position = ReadPosition(rank=rank, **kw)
            plan = c.plan(position)
            before = fs.bytes_read
            assert before - footers < 0.1 * cache_bytes / COPIES  # split index: this copy only
            counts.append(sum(1 for _ in c.iter_batches(8, position)))
            streamed = fs.bytes_read - before
            print(f"epoch {epoch} rank {rank}: {streamed} B streamed of a {cache_bytes} B cache")
            assert streamed <= 1.1 * cache_bytes / COPIES / world, (streamed, cache_bytes)
            rows = c.row_groups.iter_rows(plan, position)
            for t in rows:
                keys += zip(t["seq_id"].to_pylist(), t["copy"].to_pylist(), strict=True)
        assert len(set(counts)) == 1
        assert {c for _, c in keys} == {epoch % COPIES}  # epoch e reads copy e % copies
        seqs = [s for s, _ in keys]
        assert len(seqs) == len(set(seqs))  # each sequence at most once per epoch
        dropped = cache.plan(ReadPosition(**kw)).dropped
        assert dropped <= (world - 1) * 8
        train_seqs = (train_seqs or set()) | set(seqs)
        assert not any(is_heldout(s, HELDOUT) for s in seqs)
    n_train = sum(1 for s in _all_seq_ids(s3_copies_cache) if not is_heldout(s, HELDOUT))
    assert len(train_seqs) >= n_train - 3 * 8


def _all_seq_ids(url: str) -> set[int]:
    files = storage.committed_files(url)
    fs = storage.get_fs(files[0])[0]
    return set(
        pq.read_table([storage.get_fs(f)[1] for f in files], filesystem=fs)["seq_id"].to_pylist()
    )


def test_two_epochs_of_two_copies_see_two_maskings(s3_copies_cache):
    cache = TeacherCache(s3_copies_cache)
    e0, e1, e2 = (
        list(
            cache.iter_batches(
                512, ReadPosition(seed=3, epoch=e, heldout_fraction=HELDOUT), shuffle=False
            )
        )
        for e in range(3)
    )
    assert len(e0) == len(e1) == 1 and e0[0]["input_ids"].shape[0] > 100
    # unshuffled, the same sequences in the same order; the masks differ, copy 0 comes back
    assert torch.equal(e0[0]["attention_mask"], e1[0]["attention_mask"])
    assert not torch.equal(e0[0]["labels"], e1[0]["labels"])
    assert torch.equal(e0[0]["labels"], e2[0]["labels"])


def test_resume_in_the_second_copy_is_bit_identical(s3_copies_cache):
    position = ReadPosition(rank=1, world_size=2, seed=3, epoch=1, heldout_fraction=HELDOUT)
    cache, _, read, _, _ = _resume_matches(s3_copies_cache, position, lambda n: n // 2)
    assert read < 0.35 * sum(_unit_bytes(cache))  # half of one copy of one rank's share


def test_heldout_is_always_copy_0(s3_copies_cache):
    cache = TeacherCache(s3_copies_cache)

    def heldout(epoch: int) -> ReadPosition:
        return ReadPosition(epoch=epoch, split="heldout", heldout_fraction=HELDOUT)

    for epoch in (0, 1, 3):
        plan = cache.plan(heldout(epoch), shuffle=False)
        assert plan.rows > 0 and {cache.row_groups.copy_of[u] for u in plan.units} == {0}
    a = list(cache.iter_batches(64, heldout(0), shuffle=False))
    b = list(cache.iter_batches(64, heldout(1), shuffle=False))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["labels"], y["labels"]) and torch.equal(x["input_ids"], y["input_ids"])
