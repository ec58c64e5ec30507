import io
from collections import Counter

import pyarrow.parquet as pq
import pytest
import torch
from teacher_helpers import build_cache, make_prepared

from distil import storage
from distil.data.readers.stream import ReadPosition
from distil.teacher.build import plan_cache
from distil.teacher.cache import TeacherCache
from distil.teacher.cache_format import FORMAT_VERSION, cache_key
from distil.teacher.config import LogitsConfig


@pytest.fixture(scope="module")
def cache_url(prepared_dir, tiny_teacher_dir, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("cache"))
    url = build_cache(prepared_dir, str(tiny_teacher_dir), root, copies=3)
    for f in storage.committed_files(url):  # 6 row groups of 6 rows per file: ranks shard them
        buf = io.BytesIO()
        pq.write_table(pq.read_table(f), buf, row_group_size=RG_ROWS, compression="zstd")
        storage.write_bytes(f, buf.getvalue())
    return url


RG_ROWS = 6


def _row_keys(batch) -> list[tuple]:
    """A row's identity: its masked input + labels, unpadded. Two masked copies can coincide
    (a short sequence has few ways to mask it), so rows are compared as multisets."""
    out = []
    for x, lab, am in zip(
        batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True
    ):
        n = int(am.sum())
        out.append((tuple(x[:n].tolist()), tuple(lab[:n].tolist())))
    return out


def test_ranks_get_disjoint_rows_and_equal_batch_counts(cache_url):
    cache = TeacherCache(cache_url)
    total = len(cache)  # 24 sequences x 3 copies
    assert total == 72
    every_copy = {"all_copies": True}  # (an epoch reads one: test_stream)
    every = Counter(
        k
        for b in cache.iter_batches(5, ReadPosition(split="all"), **every_copy)
        for k in _row_keys(b)
    )
    assert sum(every.values()) == total and len(every) >= total - 3
    for world in (2, 3, 5):
        per_rank = [
            Counter(
                k
                for b in cache.iter_batches(4, ReadPosition(r, world, split="all"), **every_copy)
                for k in _row_keys(b)
            )
            for r in range(world)
        ]
        counts = [
            len(list(cache.iter_batches(4, ReadPosition(r, world, split="all"), **every_copy)))
            for r in range(world)
        ]
        assert len(set(counts)) == 1
        assert counts[0] == cache.num_batches(
            4, ReadPosition(world_size=world, split="all"), **every_copy
        )
        dealt = sum(per_rank, Counter())
        assert not dealt - every  # disjoint: no row dealt more often than it exists
        # the cut: at most one row group per rank beyond the first, as the plan reports
        dropped = cache.plan(ReadPosition(world_size=world, split="all"), **every_copy).dropped
        assert sum(dealt.values()) == total - dropped
        assert 0 <= dropped <= (world - 1) * RG_ROWS


def test_splits_partition_the_rows_and_epochs_reshuffle(cache_url):
    cache = TeacherCache(cache_url)

    def train(epoch: int) -> ReadPosition:
        return ReadPosition(epoch=epoch, split="train", heldout_fraction=0.2)

    trained = Counter(
        k for b in cache.iter_batches(8, train(0), all_copies=True) for k in _row_keys(b)
    )
    heldout = ReadPosition(split="heldout", heldout_fraction=0.2)
    held = Counter(k for b in cache.iter_batches(8, heldout, all_copies=True) for k in _row_keys(b))
    assert trained and held and not set(trained) & set(held)
    assert sum(trained.values()) + sum(held.values()) == len(cache)
    e0 = [k for b in cache.iter_batches(8, train(0), all_copies=True) for k in _row_keys(b)]
    e0b = [k for b in cache.iter_batches(8, train(0), all_copies=True) for k in _row_keys(b)]
    e1 = [k for b in cache.iter_batches(8, train(1), all_copies=True) for k in _row_keys(b)]
    assert e0 == e0b and e0 != e1 and set(e0) == set(e1)


def test_batch_tensors_follow_the_contract(cache_url):
    cache = TeacherCache(cache_url)
    b = next(cache.iter_batches(6, ReadPosition(split="all")))
    assert b["input_ids"].dtype == b["labels"].dtype == b["target_ids"].dtype == torch.long
    assert b["attention_mask"].shape == b["input_ids"].shape
    n = int((b["labels"] != -100).sum())
    assert b["target_ids"].shape == b["target_logprobs"].shape == (n, 8)
    assert b["target_logprobs"].dtype == torch.float32
    assert torch.all(b["target_logprobs"] <= 0)
    pad = cache.manifest["special_ids"]["pad"]
    assert torch.all(b["input_ids"][b["attention_mask"] == 0] == pad)
    assert cache.manifest["sparsity"] == {
        "mode": "topk",
        "k": 8,
        "kd_temperatures": [1.0, 2.0],
        "kd_positions": "masked",
        "hidden_sketch_dims": 32,  # the default: what distil's default alpha_cos needs
        "hidden_sketch_seed": 0,
    }
    assert cache.manifest["format_version"] == FORMAT_VERSION == 4
    assert cache.manifest["target_positions"] == cache.manifest["positions"] == n_all(cache)
    assert "kd_positions" not in b  # masked targets: no per-token target mask
    # the sketch: one d-vector per non-pad token, row-major like the attention mask
    assert b["hidden_sketch"].shape == (int(b["attention_mask"].sum()), 32)
    # one log-partition per served temperature; T = 1's is 0 (not stored), T = 2's > 0
    assert b["target_logz"].shape == (n, 2) and b["target_logz"].dtype == torch.float32
    assert torch.all(b["target_logz"][:, 0] == 0) and torch.all(b["target_logz"][:, 1] > 0)
    assert 0 < cache.manifest["target_bytes_per_position"] <= cache.manifest["bytes_per_position"]


def n_all(cache: TeacherCache) -> int:
    """Masked positions over every row of the cache (every copy: an epoch reads one)."""
    batches = cache.iter_batches(7, ReadPosition(split="all"), all_copies=True)
    return sum(int((b["labels"] != -100).sum()) for b in batches)


def test_not_a_cache_is_a_clear_error(prepared_dir):
    with pytest.raises(ValueError, match="not a teacher cache"):
        TeacherCache(prepared_dir)
    with pytest.raises(storage.NotCommittedError):
        TeacherCache(prepared_dir + "/nothing-here")


def test_the_key_changes_with_teacher_data_masking_and_k(
    prepared_dir, tmp_path, real_tokenizer_dir
):
    base = {
        "input": prepared_dir, "cache_root": str(tmp_path), "teacher": "unused",
        "hidden_sketch_dims": 0,
    }  # fmt: skip
    key = plan_cache(LogitsConfig(**base), "sha-a").key
    other_data = str(tmp_path / "other")
    make_prepared(other_data, real_tokenizer_dir, salt=1)
    variants = [
        plan_cache(LogitsConfig(**base), "sha-b").key,  # teacher weights
        plan_cache(LogitsConfig(**{**base, "input": other_data}), "sha-a").key,  # data
        plan_cache(LogitsConfig(**base, seed=1), "sha-a").key,  # masking
        plan_cache(LogitsConfig(**base, mlm_smoothing=0.0), "sha-a").key,
        plan_cache(LogitsConfig(**base, copies=2), "sha-a").key,
        plan_cache(LogitsConfig(**base, k=16), "sha-a").key,  # sparsity
        plan_cache(LogitsConfig(**base, sparsity="sampled"), "sha-a").key,
        plan_cache(LogitsConfig(**base, kd_temperatures=[1.0]), "sha-a").key,
        plan_cache(LogitsConfig(**base, kd_temperatures=[1.0, 2.0, 4.0]), "sha-a").key,
        plan_cache(LogitsConfig(**base, sparsity="sampled", sample_temperature=1.0), "sha-a").key,
        plan_cache(LogitsConfig(**base, unit_rows=5), "sha-a").key,  # file layout
        plan_cache(LogitsConfig(**base, row_group_rows=7), "sha-a").key,
        plan_cache(LogitsConfig(**base, kd_positions="all"), "sha-a").key,  # target positions
        plan_cache(LogitsConfig(**{**base, "hidden_sketch_dims": 8}), "sha-a", 32).key,  # sketch
        plan_cache(LogitsConfig(**{**base, "hidden_sketch_dims": 16}), "sha-a", 32).key,
        plan_cache(LogitsConfig(**{**base, "hidden_sketch_dims": 8, "seed": 1}), "sha-a", 32).key,
    ]
    assert len({key, *variants}) == 1 + len(variants)
    # what is not an input of the cache does not change the key
    same = plan_cache(LogitsConfig(**base, batch_size=3, num_actors=2), "sha-a").key
    assert same == key
    assert key == cache_key(
        "sha-a",
        storage.read_manifest(prepared_dir)["fingerprint"],
        LogitsConfig(**base).masking(),
        LogitsConfig(**base).sparsity_spec(),
        LogitsConfig(**base).layout(),
    )


def test_a_teacher_that_cannot_read_the_data_is_refused():
    from transformers import BertConfig

    from distil.teacher.compat import check_compatible

    prepared = {"vocab_size": 30522, "seq_len": 128}
    check_compatible(BertConfig(vocab_size=30522, max_position_embeddings=512), prepared)
    with pytest.raises(ValueError, match="different tokenizer"):
        check_compatible(BertConfig(vocab_size=1000), prepared)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        check_compatible(BertConfig(max_position_embeddings=64), prepared)


def test_a_cache_root_resolves_through_its_latest_pointer():
    """`distil distil --cache ROOT` with ROOT = `distil logits --cache-root`: the pointer names
    the newest committed cache; a committed cache dir and an explicit pointer work as before."""
    from distil import storage
    from distil.teacher.cache import resolve_cache_url, write_latest_pointer

    root = "memory://resolve-root"
    cache = f"{root}/abc123"
    storage.commit(cache, {"kind": "teacher_cache", "files": []})
    assert resolve_cache_url(root) == root  # no pointer yet: taken as given
    write_latest_pointer(root, cache, "abc123")
    assert resolve_cache_url(root) == cache
    assert resolve_cache_url(f"{root}/latest.json") == cache
    assert resolve_cache_url(cache) == cache


def _logz_column_sizes(url: str) -> tuple[int, int, int]:
    """(compressed, uncompressed bytes, column chunks) of ``target_logz`` over the cache."""
    comp = unc = chunks = 0
    for f in storage.committed_files(url):
        md = pq.ParquetFile(f).metadata
        for rg in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(rg).column(c)
                if col.path_in_schema.startswith("target_logz"):
                    comp += col.total_compressed_size
                    unc += col.total_uncompressed_size
                    chunks += 1
    return comp, unc, chunks


def test_each_kd_temperature_costs_one_float32_per_position(
    prepared_dir, tiny_teacher_dir, tmp_path
):
    """T = 1 stores nothing; each other temperature adds a float32 per position (plus the
    column chunk's few headers), and the manifest's target bytes grow by exactly that column."""
    built = {}
    for temps in ([1.0], [1.0, 2.0], [1.0, 2.0, 4.0]):
        url = build_cache(prepared_dir, str(tiny_teacher_dir), str(tmp_path), kd_temperatures=temps)
        built[len(temps) - 1] = (storage.read_manifest(url), _logz_column_sizes(url))
        if temps == [1.0]:  # served at T = 1 only: the batch column is there, all zeros
            b = next(TeacherCache(url).iter_batches(4, ReadPosition(split="all")))
            assert b["target_logz"].shape == (b["target_ids"].shape[0], 1)
            assert torch.all(b["target_logz"] == 0)
    base, (comp0, _, chunks0) = built[0]
    assert comp0 == chunks0 == 0
    positions = base["positions"]
    for n in (1, 2):
        manifest, (comp, unc, chunks) = built[n]
        assert manifest["positions"] == positions
        assert 4 * n * positions <= unc <= 4 * n * positions + 100 * chunks, (n, unc)
        assert manifest["target_bytes"] - base["target_bytes"] == comp
        per_position = manifest["target_bytes_per_position"] - base["target_bytes_per_position"]
        assert 0 < per_position == pytest.approx(comp / positions)


def test_an_epoch_reads_one_copy_and_a_sequence_major_cache_is_refused(cache_url, tmp_path):
    """Copies are stored copy-major (row groups of one copy), so epoch e reads copy e % 3 only;
    a cache whose row groups mix copies (the layout before dynamic masking) is refused with
    the fix, never silently read as if every row were the epoch's."""
    import shutil

    cache = TeacherCache(cache_url)
    assert cache.copies == 3 and sorted(set(cache.row_groups.copy_of)) == [0, 1, 2]
    for epoch in range(4):
        batches = cache.iter_batches(5, ReadPosition(epoch=epoch, split="all"))
        n = sum(b["input_ids"].shape[0] for b in batches)
        assert n == len(cache) // 3
    old = tmp_path / "seq-major"
    shutil.copytree(cache_url, old)
    for f in storage.committed_files(str(old)):
        t = pq.read_table(f).sort_by([("seq_id", "ascending"), ("copy", "ascending")])
        pq.write_table(t, f, row_group_size=RG_ROWS)
    with pytest.raises(ValueError, match="several masked copies.*distil logits"):
        list(TeacherCache(str(old)).iter_batches(4))
    assert len(list(TeacherCache(str(old)).iter_batches(4, all_copies=True))) > 0
