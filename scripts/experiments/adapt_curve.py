"""Experiment: the adapted packaged teacher's held-out MLM quality against adapt budget and method.
Decision it backs: the demo's teacher-adaptation budget (120k tokens) and method (docs/stages/teacher-logits.md, "Adapting the embedded teacher").

    python scripts/experiments/adapt_curve.py --workdir /tmp/adapt-curve            # the table in docs/stages/teacher-logits.md
    python scripts/experiments/adapt_curve.py --prepared URL --runs all:80000,head8k:80000

Each run is one in-process ``distil.teacher.adapt.adapt`` (the stage's own code, no Ray) of the
packaged MiniLM on the same prepared data, differing only in token budget and method (METHODS:
AdaptConfig overrides). Without ``--prepared`` the data is the demo's: the sample corpus' wiki
and news parts (``distil.samples.corpus``), prepared at seq_len 128 by ``distil.data.prepare.
run_serial`` (stage 1's bytes, serially). Results go one JSON line per run to
``WORKDIR/results.jsonl`` (a rerun skips the runs already there, so a long curve can be resumed)
and are printed as a markdown table: held-out masked-token accuracy / perplexity after
adaptation, training seconds and wall seconds (load + both evaluations + save included).

Downstream student quality is not measured here: it needs the whole demo per point.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distil import storage  # noqa: E402
from distil.packaged import PACKAGED_TEACHER  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "all": {},  # today's default: head + whole encoder, linear decay
    "cosine": {"lr_schedule": "cosine"},
    "constant": {"lr_schedule": "constant"},
    "head8k": {"head_warmup_tokens": 8000},
    "top3": {"train_layers": 3},
    "top4": {"train_layers": 4},
    "lr1e-3": {"lr": 1e-3},
}
DEFAULT_RUNS = "all:80000,head8k:80000,cosine:80000,top4:80000,all:40000,all:120000"


def prepare_sample(workdir: str) -> str:
    """The demo's sample-scale corpus (wiki + news) prepared at seq_len 128; reused if there."""
    from distil.data.config import PrepareConfig
    from distil.data.prepare_ranges import run_serial
    from distil.samples.corpus import assemble_news, assemble_wiki

    out = storage.join(workdir, "prepared")
    if storage.is_committed(out):
        return out
    corpus = storage.join(workdir, "corpus")
    assemble_wiki(corpus)
    assemble_news(corpus)
    cfg = PrepareConfig(
        input=[storage.join(corpus, "wiki/"), storage.join(corpus, "news/")],
        output=out,
        tokenizer=PACKAGED_TEACHER,
        seq_len=128,
    )
    m = run_serial(cfg)
    print(f"prepared {m['rows']} sequences ({m['tokens']} tokens) at {out}", flush=True)
    return out


def parse_runs(spec: str) -> list[tuple[str, int]]:
    runs = []
    for item in spec.split(","):
        method, _, budget = item.strip().partition(":")
        if method not in METHODS or not budget.isdigit():
            raise SystemExit(f"--runs item {item!r}: want METHOD:TOKENS, METHOD in {list(METHODS)}")
        runs.append((method, int(budget)))
    return runs


def run_one(prepared: str, workdir: str, method: str, budget: int, args) -> dict[str, Any]:
    from distil.teacher.adapt import adapt
    from distil.teacher.config import AdaptConfig

    cfg = AdaptConfig(
        input=prepared,
        output=storage.join(workdir, f"adapted-{method}-{budget}"),
        teacher=PACKAGED_TEACHER,
        token_budget=budget,
        eval_sequences=args.eval_sequences,
        torch_threads=args.torch_threads,
        log_every=50,
        **METHODS[method],
    )
    t0 = time.perf_counter()
    r = adapt(cfg)
    return {
        "method": method,
        "budget": budget,
        "accuracy_before": r["heldout_accuracy_before"],
        "accuracy": r["heldout_accuracy_after"],
        "perplexity_before": r["heldout_perplexity_before"],
        "perplexity": r["heldout_perplexity_after"],
        "steps": r["steps"],
        "train_seconds": r["train_seconds"],
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load1": round(os.getloadavg()[0], 1),  # shared machine: seconds depend on it
        "overrides": METHODS[method],
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| method | token budget | steps | held-out accuracy | perplexity | train s | wall s | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if rows:
        lines.append(
            f"| before (any) | 0 | 0 | {rows[0]['accuracy_before']:.3f} | "
            f"{rows[0].get('perplexity_before', float('nan')):,.0f} | – | – | – |"
        )
    for r in sorted(rows, key=lambda r: (r["method"] != "all", r["method"], r["budget"])):
        lines.append(
            f"| {r['method']} | {r['budget']:,} | {r['steps']} | {r['accuracy']:.3f} | "
            f"{r['perplexity']:,.0f} | {r['train_seconds']:.0f} | {r['wall_seconds']:.0f} | "
            f"{r.get('load1', '?')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--workdir", required=True, help="local folder for data, outputs, results.jsonl"
    )
    ap.add_argument("--prepared", help="prepared dataset URL (default: the demo's sample data)")
    ap.add_argument(
        "--runs",
        default=DEFAULT_RUNS,
        help=f"comma-separated METHOD:TOKENS; methods: {', '.join(METHODS)} (default: %(default)s)",
    )
    ap.add_argument("--eval-sequences", type=int, default=128, help="held-out sequences per eval")
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--table-only", action="store_true", help="print the recorded results only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = Path(args.workdir) / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    if not args.table_only:
        prepared = args.prepared or prepare_sample(args.workdir)
        for method, budget in parse_runs(args.runs):
            if any(r["method"] == method and r["budget"] == budget for r in done):
                continue
            row = run_one(prepared, args.workdir, method, budget, args)
            done.append(row)
            results.parent.mkdir(parents=True, exist_ok=True)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(table(done))


if __name__ == "__main__":
    main()
