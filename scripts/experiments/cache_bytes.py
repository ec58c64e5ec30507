"""Experiment: bytes per token of the teacher cache for its target positions and hidden-state sketch.
Decision it backs: cache format 4 stores the hidden-state sketch as a binary column of int8 bytes, not list<int8> (docs/stages/teacher-logits.md, "Cache layout").

    python scripts/experiments/cache_bytes.py --corpus .distil/samples/corpus        # CPU, a few minutes

Prepares ~200k tokens of real text (the sample corpus's news + one Austen novel) with the
packaged teacher's real tokenizer, then builds the cache (stage 2's own ``build_in_process``,
top-k 8, kd_temperatures [1, 2] as logits/cluster) for (masked, no sketch), (all, no sketch),
(masked, sketch 16/32/64) and prints the manifests' ``bytes_per_token`` (whole Parquet files,
every column, all copies, over prepared tokens) with the target positions. The teacher is the
packaged MiniLM encoder with its MLM head as ``BertForMaskedLM`` initialises it (decoder tied to
the word embeddings, transform untrained) unless ``--teacher`` names an adapted one: the byte
counts depend on the value distributions, a trained head's are somewhat sharper.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distil.data.config import PrepareConfig  # noqa: E402
from distil.data.prepare_ranges import run_serial  # noqa: E402
from distil.packaged import PACKAGED_TEACHER  # noqa: E402
from distil.teacher.build import build_in_process, plan_cache  # noqa: E402
from distil.teacher.config import LogitsConfig  # noqa: E402
from distil.teacher.load import load_teacher  # noqa: E402

VARIANTS = [("masked", 0), ("all", 0), ("masked", 16), ("masked", 32), ("masked", 64)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=".distil/samples/corpus", help="sample corpus dir")
    ap.add_argument("--teacher", default=None, help="an MLM teacher (default: packaged + head)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--variants", default=None, help="e.g. masked:0,all:0,masked:32")
    args = ap.parse_args(argv)
    variants = VARIANTS
    if args.variants:
        variants = [(p.split(":")[0], int(p.split(":")[1])) for p in args.variants.split(",")]
    work = Path(tempfile.mkdtemp(prefix="cache-bytes-"))
    try:
        corpus = Path(args.corpus)
        (work / "in").mkdir()
        shutil.copy(corpus / "news" / "lee_background.jsonl", work / "in")
        shutil.copy(corpus / "books" / "austen-northangerabbey.txt", work / "in")
        teacher = args.teacher
        if teacher is None:
            loaded = load_teacher(PACKAGED_TEACHER, require_mlm_head=False)
            teacher = str(work / "teacher")
            loaded.model.save_pretrained(teacher, safe_serialization=True)
            loaded.tokenizer.save_pretrained(teacher)
        loaded = load_teacher(teacher, require_mlm_head=True)
        prepared = str(work / "prepared")
        pm = run_serial(
            PrepareConfig(
                input=str(work / "in"), output=prepared, tokenizer=teacher, seq_len=args.seq_len
            )
        )
        print(f"prepared: {pm['rows']} sequences, {pm['tokens']} tokens (seq_len {args.seq_len})")
        print(f"{'kd_positions':>12} {'sketch d':>8} {'target pos':>10} {'B/token':>8} {'MB':>7}")
        for kd, d in variants:
            cfg = LogitsConfig(
                input=prepared,
                cache_root=str(work / "caches"),
                teacher=teacher,
                kd_positions=kd,
                hidden_sketch_dims=d,
                k=8,
                kd_temperatures=[1.0, 2.0],
                batch_size=64,
            )
            plan = plan_cache(cfg, loaded.weights_sha256, loaded.model.config.hidden_size)
            m = build_in_process(plan, cfg)
            print(
                f"{kd:>12} {d:>8} {m['target_positions']:>10} {m['bytes_per_token']:>8.2f} "
                f"{m['bytes'] / 1e6:>7.2f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
