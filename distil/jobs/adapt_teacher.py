"""Train an MLM head (and the encoder under it) for a checkpoint that has none.

    python -m distil.jobs.adapt_teacher --input s3://distil/prepared --output s3://distil/teacher-adapted
    distil teacher adapt --config adapt/default --input ... --output ...

Plain torch in one process (minutes on CPU for the default budget); reports held-out
masked-token accuracy and perplexity before and after, and writes an HF …ForMaskedLM dir of the teacher's family.
"""

from __future__ import annotations

from typing import Any

from distil.config import job_main, setup_logging
from distil.teacher.adapt import adapt
from distil.teacher.config import AdaptConfig


def run(cfg: AdaptConfig) -> dict[str, Any]:
    setup_logging()
    return adapt(cfg)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(AdaptConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
