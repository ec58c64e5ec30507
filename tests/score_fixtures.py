"""Running ``distil score`` from a test: in this process, on Beam's FnApiRunner, the model pulled
into the test's own cache folder. Each test file passes the tiny batch and part sizes its case
needs (small parts make several parts out of a few rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_score(
    inputs: str | list[str], model: str, output: str, run_id: str, tmp_path: Path, **settings: Any
) -> dict:
    """The run's summary (``distil.pipelines.score_reviews.run``); ``settings``: any other
    ``ScoreConfig`` fields."""
    from distil.pipelines.score_reviews import run
    from distil.score.config import ScoreConfig

    cfg = ScoreConfig(
        input=[inputs] if isinstance(inputs, str) else inputs,
        model=model,
        output=output,
        run_id=run_id,
        model_cache=str(tmp_path / "model-cache"),
        runner="FnApiRunner",
        **settings,
    )
    return run(cfg)
