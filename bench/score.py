"""Scoring throughput: ``distil score``'s model path vs ``transformers.pipeline``, same model,
same reviews, same process.

    python bench/score.py                        # 10k movie snippets, packaged MiniLM + new head
    python bench/score.py --model DIR --n 10000 --threads 1 --beam

Prints reviews/s per core for the baseline (``pipeline("text-classification", batch_size=32)``)
and for our path (``SequenceClassifier``: one Rust tokenizer call per batch, rows sorted by
length into micro-batches padded only to their own longest row, ``inference_mode``, optional
dynamic int8 Linear layers), and the ratios. "Per core" = reviews per CPU-second of this process
(user + system time of all its threads), which stays meaningful on a machine shared with other
work; wall-clock rates at ``--threads`` threads are printed beside it.

The bf16 and int8 rows also report their accuracy change against the reviews' labels and
their label agreement with fp32 (with the default random head the accuracy is chance level: pass a
fine-tuned ``--model`` for a meaningful accuracy delta).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        default="packaged:all-minilm-l6-v2",
        help="HF dir/URL (a classifier, or an encoder that gets a fresh 2-class head)",
    )
    p.add_argument("--n", type=int, default=10_000, help="reviews to score")
    p.add_argument("--threads", type=int, default=1, help="torch + tokenizer threads")
    p.add_argument("--batch-size", type=int, default=512, help="our path: rows per batch")
    p.add_argument("--micro-batch-size", type=int, default=64, help="our path: rows per forward")
    p.add_argument("--max-length", type=int, default=256, help="tokens per review (both paths)")
    p.add_argument("--reviews-cache", default=".distil/reviews", help="where reviews are assembled")
    p.add_argument("--beam", action="store_true", help="also time the whole Beam pipeline")
    p.add_argument("--skip-baseline", action="store_true", help="only time our path")
    return p.parse_args()


def main() -> None:
    args = _parse()
    # Before torch/tokenizers start their pools: the same thread budget for every contender.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from distil import storage
    from distil.packaged import resolve_model_ref
    from distil.samples.reviews import AMAZON_SNIPPETS, MOVIE_SNIPPETS, assemble_reviews
    from distil.sentiment.classifier import SequenceClassifier

    torch.set_num_threads(args.threads)
    assemble_reviews(args.reviews_cache)
    rows = []
    for name in (MOVIE_SNIPPETS, AMAZON_SNIPPETS):
        for line in storage.read_bytes(storage.join(args.reviews_cache, name)).splitlines():
            rows.append(json.loads(line))
    rows = rows[: args.n]
    texts = [r["text"] for r in rows]
    gold = np.array([r["label"] for r in rows])

    work = tempfile.mkdtemp(prefix="bench-score-")
    src = resolve_model_ref(args.model)
    if "://" in src:
        src = storage.copy_dir_to_local(src, os.path.join(work, "src"))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        src,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    model_dir = os.path.join(work, "model")
    model.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(src).save_pretrained(model_dir)
    del model

    def timed(fn):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        return out, time.process_time() - c0, time.perf_counter() - w0

    results = {}
    n = len(texts)
    print(f"{n} reviews, model {args.model}, {args.threads} thread(s), torch {torch.__version__}")

    if not args.skip_baseline:
        clf = pipeline("text-classification", model=model_dir, device="cpu", top_k=None)
        clf(texts[:64], batch_size=32, truncation=True, max_length=args.max_length)  # warm-up
        out, cpu, wall = timed(
            lambda: clf(texts, batch_size=32, truncation=True, max_length=args.max_length)
        )
        pos = np.array([next(s["score"] for s in o if s["label"] == "positive") for o in out])
        results["baseline"] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "labels": (pos > 0.5).astype(int),
            "pos": pos,
        }
        del clf

    for name, quantize, bf16 in (
        ("ours_fp32", False, False),
        ("ours_bf16", False, True),
        ("ours_int8", True, False),
    ):
        ours = SequenceClassifier(
            model_dir, max_length=args.max_length, quantize=quantize, bf16=bf16
        )
        ours.classify(texts[:64], args.micro_batch_size)  # warm-up

        def run_ours(ours=ours):
            parts = [
                ours.classify(texts[i : i + args.batch_size], args.micro_batch_size)
                for i in range(0, n, args.batch_size)
            ]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

        out, cpu, wall = timed(run_ours)
        results[name] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "labels": out["label_id"],
            "pos": out["probs"][:, 1],
        }
        del ours

    if args.beam:
        from distil.pipelines.score_reviews import run
        from distil.score.config import ScoreConfig
        from distil.sentiment.classifier import export_classifier

        m = AutoModelForSequenceClassification.from_pretrained(model_dir)
        export_classifier(
            m, AutoTokenizer.from_pretrained(model_dir), os.path.join(work, "export"), {}
        )
        inp = os.path.join(work, "in.jsonl")
        Path(inp).write_text(
            "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
        )
        cfg = ScoreConfig(
            input=[inp],
            model=os.path.join(work, "export"),
            output=os.path.join(work, "out"),
            run_id="bench",
            model_cache=os.path.join(work, "cache"),
            runner="FnApiRunner",
            torch_threads=args.threads,
            batch_size=args.batch_size,
            micro_batch_size=args.micro_batch_size,
            max_length=args.max_length,
        )
        summary, cpu, wall = timed(lambda: run(cfg))
        assert summary["scored"] == n, summary
        # FnApiRunner runs in-process: process_time covers the whole pipeline
        results["beam_pipeline_fp32"] = {"cpu_s": cpu, "wall_s": wall}

    print(
        f"\n{'path':<22}{'reviews/CPU-s':>15}{'reviews/s wall':>16}{'x baseline (CPU)':>18}"
        f"{'x baseline (wall)':>19}"
    )
    base = results.get("baseline")
    for name, r in results.items():
        per_cpu, per_wall = n / r["cpu_s"], n / r["wall_s"]
        rc = f"{base['cpu_s'] / r['cpu_s']:.2f}x" if base else "-"
        rw = f"{base['wall_s'] / r['wall_s']:.2f}x" if base else "-"
        print(f"{name:<22}{per_cpu:>15.1f}{per_wall:>16.1f}{rc:>18}{rw:>19}")
    fp32 = results["ours_fp32"]
    acc32 = float((fp32["labels"] == gold).mean())
    for name in ("ours_bf16", "ours_int8"):
        r = results[name]
        acc = float((r["labels"] == gold).mean())
        print(
            f"{name} vs fp32: label agreement {float((fp32['labels'] == r['labels']).mean()):.4f}, "
            f"max |dp(positive)| {float(np.abs(fp32['pos'] - r['pos']).max()):.4f}, "
            f"accuracy {acc32:.4f} -> {acc:.4f} ({acc - acc32:+.4f})"
        )
    if base:
        print(
            f"ours fp32 vs baseline: max |dp(positive)| "
            f"{float(np.abs(fp32['pos'] - base['pos']).max()):.2e}"
        )
        ratios = ", ".join(
            f"{k}/baseline {base['cpu_s'] / results[k]['cpu_s']:.2f}x"
            for k in ("ours_fp32", "ours_bf16", "ours_int8")
        )
        print(f"RATIO per core: {ratios}")


if __name__ == "__main__":
    main()
