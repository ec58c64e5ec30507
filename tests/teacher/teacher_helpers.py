"""Helpers for the teacher tests: tiny prepared datasets (stage-1 contract format, real
tokenizer) and building a cache without Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distil import storage
from distil.data import shards
from distil.data.tokenizer import load_tokenizer_info

TEXT = (
    "The committee met on Tuesday to discuss the new budget for the city schools. "
    "Several members argued that the funds should go to teachers rather than buildings. "
    "A storm moved across the valley in the night, and by morning the river had risen. "
    "Farmers along the banks moved their animals to higher ground before the water came. "
    "She opened the old book and found a letter her grandmother had written long ago. "
    "The market was crowded with people buying fruit, bread and fresh fish for the weekend. "
    "Scientists reported that the telescope had detected a faint signal from a distant star. "
    "He walked to the station, bought a ticket, and waited for the last train home. "
)


def make_prepared(
    url: str,
    tokenizer_dir: Path,
    *,
    n_shards: int = 2,
    rows_per_shard: int = 12,
    seq_len: int = 32,
    salt: int = 0,
) -> dict:
    """Write a committed prepared dataset (contract format) to ``url``; returns its manifest.

    Sequences are windows of the tokenized text with varied lengths (some short, padded), so
    length bucketing and padding are exercised. ``salt`` shifts the windows (different data).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    body = tok(TEXT * 4, add_special_tokens=False)["input_ids"]
    vocab = tok.vocab_size
    special = {
        "cls": tok.cls_token_id,
        "sep": tok.sep_token_id,
        "pad": tok.pad_token_id,
        "mask": tok.mask_token_id,
        "unk": tok.unk_token_id,
    }
    counts = np.zeros(vocab, dtype=np.int64)
    files, total_rows, total_tokens, pad_slots = [], 0, 0, 0
    for s in range(n_shards):
        ids = np.full((rows_per_shard, seq_len), special["pad"], dtype=np.int64)
        lengths = np.zeros(rows_per_shard, dtype=np.int32)
        for r in range(rows_per_shard):
            n_body = seq_len - 2 if r % 3 else (seq_len - 2) // 2 + r % 5
            start = (s * 37 + r * 11 + salt * 5) % (len(body) - n_body)
            seq = [special["cls"], *body[start : start + n_body], special["sep"]]
            ids[r, : len(seq)] = seq
            lengths[r] = len(seq)
            np.add.at(counts, np.asarray(seq), 1)
        seq_ids = np.array([shards.make_seq_id(s, r) for r in range(rows_per_shard)])
        table = shards.to_table(seq_ids, ids, lengths, vocab)
        name = shards.SHARD_PATTERN.format(index=s)
        with storage.staged_file(url, name) as f:
            shards.write_table(table, f)
        files.append(
            {"name": name, "rows": rows_per_shard, "tokens": int(lengths.sum()), "input": name}
        )
        total_rows += rows_per_shard
        total_tokens += int(lengths.sum())
        pad_slots += rows_per_shard * seq_len - int(lengths.sum())
    manifest = {
        "kind": "prepared",
        "files": files,
        "rows": total_rows,
        "tokens": total_tokens,
        "padding_fraction": pad_slots / (total_rows * seq_len),
        "seq_len": seq_len,
        "vocab_size": vocab,
        "id_dtype": "uint16",
        "special_ids": special,
        "token_counts": counts.tolist(),
        "tokenizer": {
            "path": str(tokenizer_dir),
            "fingerprint": "test",
            "identity": load_tokenizer_info(str(tokenizer_dir)).identity,
        },
        "config": {"test": True, "salt": salt, "n_shards": n_shards},
        "fingerprint": storage.fingerprint(
            {"salt": salt, "n": n_shards, "rows": rows_per_shard, "seq_len": seq_len}
        ),
        "dead_letter": {"count": 0, "by_reason": {}, "files": []},
    }
    storage.commit(url, manifest)
    return manifest


def build_cache(prepared: str, teacher: str, root: str, **overrides) -> str:
    """Build a cache without Ray (the same steps the Ray job chains); returns its URL."""
    from distil.teacher.build import build_in_process, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.load import load_teacher

    cfg = LogitsConfig(input=prepared, cache_root=root, teacher=teacher, **overrides)
    loaded = load_teacher(teacher, require_mlm_head=True)
    plan = plan_cache(cfg, loaded.weights_sha256, loaded.model.config.hidden_size)
    build_in_process(plan, cfg)
    return plan.url
