"""The quality ablation (issue 13): teacher, full recipe, no cosine, MLM only, no distillation,
random init — same data, seed and budgets for every row; one process, no Ray.

    python scripts/quality.py                       # the default budget (see docs/quality.md)
    python scripts/quality.py --teacher .distil/teacher-adapted --steps 300 --out q.json

Prints a markdown table (MLM top-1 agreement and coarsened KL to the teacher on the cache's
held-out split, in-domain and out-of-domain sentiment accuracy, share of the teacher's) and the
goals met or not, and writes the JSON (``--out``, default WORK/quality.json). Artifacts go under
``--work``; a rerun reuses every committed row. The rows and the logic: ``distil/quality/ablation.py``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil.config import add_config_args, config_from_args  # noqa: E402
from distil.quality.ablation import run  # noqa: E402
from distil.quality.config import QualityConfig  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser, QualityConfig)
    cfg = config_from_args(QualityConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = run(cfg)
    print(out["table"])
    print()
    print(out["goals_text"])
    return out


if __name__ == "__main__":
    main()
