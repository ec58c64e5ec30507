"""``distil demo``: the whole pipeline on the embedded default. Its chain is ``distil pipeline
run`` (``distil.chain``) on the sample data — ``ray job submit -- python -m distil.jobs.<stage>``
for the Ray stages, the Beam pipelines as local processes, the quality gate last — then the
review sets scored (``python -m distil.pipelines.score_reviews``) with the classifier the gate
published, every artifact on the local stack's S3.

Each step's output URL carries a fingerprint of its arguments and of its inputs' fingerprints,
and each finished step leaves a small record (``ROOT/steps/<name>-<fp>.json``): a rerun finds the
record and the committed output and reuses it; a run killed mid-step resumes that step. Stage
budgets per scale are the packaged configs ``demo/<scale>``.

Modules: ``config`` (DemoConfig), ``plan`` (the budgets as the chain's config, scoring, ``run``),
``record`` (run.json), ``report_data`` (latency, model comparison, score histogram). The CLI
names ``distil.demo:DemoConfig`` and ``distil.demo:run``.
"""

from distil.demo.config import DemoConfig
from distil.demo.plan import Demo, run

__all__ = ["Demo", "DemoConfig", "run"]
