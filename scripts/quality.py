"""The quality table: teacher; general + task distillation; general only; task only; no
distillation — same data, seed and budgets for every row; one process, no Ray.

    python scripts/quality.py                       # the CPU budget (see docs/quality.md)
    python scripts/quality.py --teacher .distil/demo/sample/adapt_teacher-*/ --prepared ...

Prints a markdown table (MLM top-1 agreement and coarsened KL to the MLM teacher on the cache's
held-out split; accuracy ± SE, macro-F1, balanced accuracy and share of the teacher's accuracy on
the in-domain validation split and on the evaluation sets no model trains on), the paired
comparisons and the goals met or not, and writes the JSON (``--out``, default
WORK/quality.json). Artifacts go under ``--work``; a rerun reuses every committed row, the pool
and its teacher labels. The rows and the logic: ``distil/quality/ablation.py``; the two Beam
stages it runs (``distil pool``, ``distil score``) are handed in here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil.config import add_config_args, config_from_args  # noqa: E402
from distil.pipelines import score_reviews, task_pool  # noqa: E402
from distil.quality.ablation import Stages, run  # noqa: E402
from distil.quality.config import QualityConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser, QualityConfig)
    cfg = config_from_args(QualityConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = run(cfg, Stages(pool=task_pool.run, score=score_reviews.run))
    print(out["table"])
    if "curve" in out:
        print(f"\ncurve: {out['png']}")
        return out
    print()
    print(out["comparisons_table"])
    print()
    print(out["goals_text"])
    return out


if __name__ == "__main__":
    main()
