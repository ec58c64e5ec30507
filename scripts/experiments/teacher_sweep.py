"""Experiment: the sentiment teacher's validation accuracy against its base encoder and peak
learning rate, trained to convergence (whole epochs, early stopping on the validation split).
Decision it backs: the quality table's and the demo's sentiment teacher (base and ``--lr``;
docs/quality.md, "The teacher").

    python scripts/experiments/teacher_sweep.py --work .distil/teacher-sweep \
        --bases packaged,/path/to/adapted --lrs 3e-5,5e-5,1e-4

Each run is one in-process ``distil.sentiment.finetune.run_local`` (the stage's own recipe) on
the movie snippets with the quality table's fine-tune settings: batch 32, 64 tokens, length
buckets, evaluation every ``--eval-every`` steps, ``--patience`` 10, best weights kept, the evaluation
sets (Amazon, unseen Rotten Tomatoes) excluded from the training rows. Only the validation split
of the movie snippets is looked at: it is what the choice is made on. One JSON line per run goes
to ``WORK/results.jsonl`` (a rerun skips finished runs) and the table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distil import storage  # noqa: E402
from distil.packaged import PACKAGED_TEACHER  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    from distil.samples.config import SamplesConfig
    from distil.samples.corpus import run as build_samples
    from distil.samples.reviews import evaluation_sets
    from distil.sentiment.config import FinetuneConfig
    from distil.sentiment.finetune import run_local

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=".distil/teacher-sweep")
    p.add_argument("--samples", default=".distil/samples")
    p.add_argument("--bases", default="packaged", help="comma list: packaged or model dirs")
    p.add_argument("--lrs", default="3e-5,5e-5,1e-4")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    build_samples(SamplesConfig(output=args.samples))
    reviews = storage.join(args.samples, "reviews")
    excluded = list(evaluation_sets(reviews, os.path.join(args.work, "eval")).values())
    results_path = os.path.join(args.work, "results.jsonl")
    done = {}
    if os.path.exists(results_path):
        for line in Path(results_path).read_text().splitlines():
            r = json.loads(line)
            done[(r["base"], r["lr"])] = r
    out = []
    for base in args.bases.split(","):
        for lr in (float(x) for x in args.lrs.split(",")):
            if (base, lr) in done:
                out.append(done[(base, lr)])
                continue
            model = PACKAGED_TEACHER if base == "packaged" else base
            name = f"{Path(base).name}-{lr:g}"
            t0 = time.perf_counter()
            run_local(
                FinetuneConfig(
                    model=model,
                    train=storage.join(reviews, "movie_snippets.jsonl"),
                    exclude=excluded,
                    output=os.path.join(args.work, "models"),
                    run_name=name,
                    lr=lr,
                    epochs=args.epochs,
                    batch_size=32,
                    max_length=64,
                    length_buckets=True,
                    eval_every=args.eval_every,
                    early_stopping_patience=args.patience,
                    torch_threads=args.threads or None,
                )
            )
            metrics = json.loads(Path(args.work, "models", name, "metrics.json").read_text())
            sel = metrics["selection"]
            rec = {
                "base": base,
                "lr": lr,
                "accuracy": metrics["accuracy"],
                "f1_macro": metrics["validation"]["f1_macro"],
                "best_step": sel["step"],
                "steps_trained": sel["steps_trained"],
                "stopped_early": sel["stopped_early"],
                "curve": [[e["step"], e["accuracy"]] for e in sel["evaluations"]],
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            with open(results_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            out.append(rec)
    print("| base | lr | validation accuracy | macro-F1 | best step | steps | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in out:
        print(
            f"| {Path(r['base']).name} | {r['lr']:g} | {r['accuracy']:.4f} | {r['f1_macro']:.4f} "
            f"| {r['best_step']} | {r['steps_trained']} | {r['wall_s']:.0f} |"
        )
    return out


if __name__ == "__main__":
    main()
