"""Experiment: peak RSS of the teacher-logits stage for one prepared shard of N vs 10·N sequences.
Decision it backs: the logits stage's unit of work is a bounded slice of a shard (`unit_rows`), so an actor's memory does not grow with the shard (docs/stages/teacher-logits.md).

    python scripts/experiments/teacher_logits_memory.py [--rows 1024] [--seq-len 128]

Each build runs in a fresh process (its ``VmHWM`` is its own peak) with the steps a teacher
actor of the Ray job runs for each unit — mask, teacher, commit (``build_in_process``, units of
``unit_rows`` = 1024) — with a tiny random teacher on CPU and real text (lee_background,
packaged tokenizer). Memory should be bounded by the unit, not the shard: the two peaks should
be about equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from teacher_logits import SIZES, real_sequences  # noqa: E402

from distil import storage  # noqa: E402
from distil.data import shards  # noqa: E402
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402


def memory_child(prepared: str, teacher: str, root: str) -> None:
    """One cache build in this (fresh) process; prints its summary and peak RSS as JSON."""
    from distil.teacher.build import build_in_process, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.load import load_teacher

    torch.set_num_threads(1)
    cfg = LogitsConfig(input=prepared, cache_root=root, teacher=teacher, batch_size=64)
    loaded = load_teacher(teacher)
    plan = plan_cache(cfg, loaded.weights_sha256, loaded.model.config.hidden_size)
    t0 = time.perf_counter()
    manifest = build_in_process(plan, cfg)
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    out = {"rows": manifest["rows"], "units": len(plan.units), "peak_rss_mb": hwm / 1024}
    print(json.dumps({**out, "seconds": time.perf_counter() - t0}))


def memory_bench(args) -> None:
    """Peak RSS of a whole build for one shard of N rows vs one of 10 N (same unit_rows)."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from distil.data.tokenizer import load_tokenizer_info

    tok = AutoTokenizer.from_pretrained(resolve_model_ref(PACKAGED_TEACHER))

    work = Path(tempfile.mkdtemp(prefix="bench-logits-mem-"))
    teacher = work / "teacher"
    torch.manual_seed(0)
    layers, hidden, heads, inter = SIZES["tiny"]
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )
    BertForMaskedLM(cfg).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    special = {k: getattr(tok, f"{k}_token_id") for k in ("cls", "sep", "pad", "mask", "unk")}
    for rows in (args.rows, 10 * args.rows):
        url = str(work / f"prepared-{rows}")
        ids = real_sequences(rows, args.seq_len, tok)
        lengths = np.full(rows, args.seq_len, dtype=np.int32)
        table = shards.to_table(np.arange(rows), ids, lengths, tok.vocab_size)
        with storage.staged_file(url, "shard-00000.parquet") as f:
            shards.write_table(table, f)
        counts = np.bincount(ids.reshape(-1), minlength=tok.vocab_size)
        storage.commit(
            url,
            {
                "kind": "prepared",
                "files": [{"name": "shard-00000.parquet", "rows": rows, "input": "bench"}],
                "rows": rows,
                "seq_len": args.seq_len,
                "vocab_size": tok.vocab_size,
                "special_ids": special,
                "token_counts": counts.tolist(),
                "tokenizer": {"identity": load_tokenizer_info(str(teacher)).identity},
                "fingerprint": f"bench-{rows}",
            },
        )
        out = subprocess.run(
            [sys.executable, __file__, "--child", url, str(teacher), str(work / "cache")],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"memory: one shard of {rows:6d} sequences -> {r['units']:3d} units of <= 1024: "
            f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['seconds']:.0f}s, tiny teacher, CPU)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1024, help="N: sequences of the small shard")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return memory_child(*args.child)
    memory_bench(args)


if __name__ == "__main__":
    main()
