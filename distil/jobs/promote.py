"""The quality gate, then publication, as a job: ``python -m distil.jobs.promote --help``.

What ``distil pipeline run`` submits after the fine-tunes (``distil promote`` runs the same code):
the student classifier is compared with the teacher's on its validation rows and, when it passes,
registered (alias ``champion``) and pointed at; when it fails, nothing is published and the job
fails naming the figure.
"""

from __future__ import annotations

from typing import Any

from distil.config import job_main
from distil.quality import gate
from distil.quality.gate import PromoteConfig


def run(cfg: PromoteConfig) -> dict[str, Any]:
    """The gate on the student and its teacher, then publication (``distil.quality.gate``)."""
    return gate.run(cfg)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(PromoteConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
