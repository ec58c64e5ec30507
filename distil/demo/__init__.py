"""``distil demo``: the whole pipeline on the embedded default, through the same entry points a
cluster uses — ``ray job submit -- python -m distil.jobs.<stage>`` for the Ray stages, the Beam
pipeline (``python -m distil.pipelines.score_reviews``) for scoring — with every artifact on the
local stack's S3.

The demo is a plain list of steps. Each step's output URL carries a fingerprint of its arguments
and of its inputs' fingerprints, and each finished step leaves a small record
(``ROOT/steps/<name>-<fp>.json``): a rerun finds the record and the committed output and reuses
it; a run killed mid-step resumes that step (every job itself skips committed shards and resumes
from its last checkpoint; a still-running Ray job for the same step is attached to, not
duplicated). Stage budgets per scale are the packaged configs ``demo/<scale>``.

Modules: ``config`` (DemoConfig), ``plan`` (the list of steps, ``run``), ``steps`` (running or
reusing one step, locally or as a Ray job), ``record`` (run.json), ``report_data`` (latency,
model comparison, score histogram). The CLI names ``distil.demo:DemoConfig`` and
``distil.demo:run``.
"""

from distil.demo.config import DemoConfig
from distil.demo.plan import Demo, run

__all__ = ["Demo", "DemoConfig", "run"]
