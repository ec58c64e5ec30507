"""Stage-3 test data built in code: a prepared dataset (stage-1 contract format) and a real
teacher cache made with stage 2's own builder. Loaded by path from tests/train and tests/jobs
conftests (the test dirs are not packages)."""

from __future__ import annotations

import numpy as np

from distil import storage
from distil.data import shards
from distil.data.tokenizer import load_tokenizer_info

SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our city", "the river", "a child"]
VERBS = ["likes", "sees", "follows", "remembers", "paints", "visits", "describes"]
OBJECTS = ["the old house", "a green field", "the long road", "music", "the morning", "rain"]
TAILS = ["every day", "in the evening", "with great care", "again", "near the sea", "quietly"]


def make_sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
    return [
        " ".join([pick(SUBJECTS), pick(VERBS), pick(OBJECTS), pick(TAILS)]) + "." for _ in range(n)
    ]


def write_prepared(
    url: str,
    tokenizer_dir,
    rows: int = 256,
    seq_len: int = 32,
    shards_n: int = 2,
    packed: bool = False,
):
    """A committed prepared dataset: ``shards_n`` shards, two sentences per sequence, or with
    ``packed`` six, cut at ``seq_len``: every sequence full, as packed text is."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    per_row = 6 if packed else 2
    sents = make_sentences(rows * per_row)
    files, counts = [], np.zeros(tok.vocab_size, np.int64)
    per = rows // shards_n
    for s in range(shards_n):
        ids = np.full((per, seq_len), tok.pad_token_id, np.int64)
        lengths = np.zeros(per, np.int32)
        for r in range(per):
            i = s * per + r
            text = " ".join(sents[per_row * i : per_row * (i + 1)])
            enc = tok(text, truncation=True, max_length=seq_len)
            ids[r, : len(enc["input_ids"])] = enc["input_ids"]
            lengths[r] = len(enc["input_ids"])
            np.add.at(counts, enc["input_ids"], 1)
        seq_ids = np.array([shards.make_seq_id(s, r) for r in range(per)], np.int64)
        table = shards.to_table(seq_ids, ids, lengths, tok.vocab_size)
        name = shards.SHARD_PATTERN.format(index=s)
        with storage.staged_file(url, name) as f:
            shards.write_table(table, f)
        files.append({"name": name, "rows": per, "tokens": int(lengths.sum()), "input": name})
    manifest = {
        "kind": "prepared",
        "files": files,
        "rows": per * shards_n,
        "tokens": sum(f["tokens"] for f in files),
        "padding_fraction": 0.0,
        "seq_len": seq_len,
        "vocab_size": tok.vocab_size,
        "id_dtype": "uint16",
        "special_ids": {
            "cls": tok.cls_token_id,
            "sep": tok.sep_token_id,
            "pad": tok.pad_token_id,
            "mask": tok.mask_token_id,
            "unk": tok.unk_token_id,
        },
        "token_counts": counts.tolist(),
        "tokenizer": {
            "path": str(tokenizer_dir),
            "fingerprint": "test",
            "identity": load_tokenizer_info(str(tokenizer_dir)).identity,
        },
        "config": {},
        "fingerprint": storage.fingerprint(["test-prepared", rows, seq_len, packed]),
        "dead_letter": {"count": 0, "by_reason": {}, "files": []},
    }
    storage.commit(url, manifest)
    return url


def build_cache(
    prepared_url: str,
    cache_root: str,
    teacher_dir,
    *,
    sparsity: str = "topk",
    k: int = 8,
    hidden_sketch_dims: int = 8,
    **overrides,
) -> str:
    """A committed teacher cache made by stage 2's builder in a plain loop (no Ray); with a
    hidden-state sketch by default, so the recipe's default ``alpha_cos`` has its cosine term;
    ``overrides``: more ``LogitsConfig`` fields (copies, unit_rows, ...)."""
    from distil.teacher.build import build_in_process, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.load import load_teacher

    cfg = LogitsConfig(
        input=prepared_url,
        cache_root=cache_root,
        teacher=str(teacher_dir),
        sparsity=sparsity,
        k=k,
        hidden_sketch_dims=hidden_sketch_dims,
        **overrides,
    )
    teacher = load_teacher(cfg.teacher)
    plan = plan_cache(cfg, teacher.weights_sha256, teacher.model.config.hidden_size)
    if not plan.committed:
        build_in_process(plan, cfg)
    return plan.url


def small_row_groups(url: str, rows: int) -> str:
    """Rewrite every committed Parquet file of ``url`` (a cache or prepared dir) in row groups
    of ``rows`` rows, so a small test dataset has many units for ranks to shard."""
    import io

    import pyarrow.parquet as pq

    for f in storage.committed_files(url):
        buf = io.BytesIO()
        pq.write_table(shards.read_table(f), buf, row_group_size=rows, compression="zstd")
        storage.write_bytes(f, buf.getvalue())
    return url


def cached_config(tmp_path, cache: str, **kw):
    """A short cached-mode ``DistilConfig`` (3 steps, batch 8) writing under ``tmp_path``."""
    from distil.train.config import DistilConfig

    base = dict(
        cache=cache,
        output=str(tmp_path / "out"),
        storage_path=str(tmp_path / "runs"),
        batch_size=8,
        max_steps=3,
        warmup_steps=1,
        eval_every=3,
        eval_batches=1,
        log_every=2,
    )
    return DistilConfig(**{**base, **kw})


def online_config(tmp_path, prepared: str, teacher, **kw):
    """An online-mode ``DistilConfig`` (batch 8) on prepared shards, writing under ``tmp_path``."""
    from distil.train.config import DistilConfig

    base = dict(
        mode="online",
        data=prepared,
        teacher=str(teacher),
        output=str(tmp_path / "out"),
        storage_path=str(tmp_path / "runs"),
        batch_size=8,
    )
    return DistilConfig(**{**base, **kw})
