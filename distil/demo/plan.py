"""The demo's plan: the chain of ``distil pipeline run`` (``distil.chain``) on the sample data,
then scoring the review sets with the published classifier, run.json and the report.

Stage budgets come from the packaged config ``demo/<scale>`` (or the user's ``--budgets`` file):
its stage sections become the chain's ``PipelineConfig`` (``pipeline_config``); run.json is
``distil.demo.record``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from distil import storage
from distil.chain.config import PipelineConfig
from distil.chain.plan import Chain, finish_tracking, latest_pointer
from distil.chain.steps import StepRunner, job_env
from distil.config import resolve_config_path
from distil.demo.config import DemoConfig
from distil.demo.record import run_json
from distil.packaged import PACKAGED_TEACHER
from distil.samples.reviews import evaluation_sets


def budgets_path(cfg: DemoConfig) -> Path:
    """The user's ``--budgets`` file, else the packaged ``demo/<scale>`` config."""
    return Path(cfg.budgets) if cfg.budgets else resolve_config_path(f"demo/{cfg.scale}")


def scored_run_dir(output: str, run_id: str) -> str:
    from distil.score.scored import run_dir

    return run_dir(output, run_id)


# the budgets' sections that are the chain's stage settings (the rest is the demo's own)
CHAIN_SECTIONS = (
    "prepare", "adapt", "logits", "distil", "finetune", "finetune_teacher", "finetune_student",
    "pool", "gate",
)  # fmt: skip


def pipeline_config(
    cfg: DemoConfig, budgets: dict[str, Any], run_url: str, samples: str
) -> PipelineConfig:
    """The chain the demo runs: the budgets' stage sections on the sample corpus and movie
    snippets, the evaluation sets kept out of every fine-tune."""
    corpus = storage.join(samples, "corpus")
    reviews = storage.join(samples, "reviews")
    # which parts of the sample corpus this scale trains on (all of it unless listed)
    parts = budgets.get("corpus") or [""]
    adapt = dict(budgets.get("adapt", {}))
    teacher = adapt.pop("teacher", PACKAGED_TEACHER)
    sections = {k: budgets[k] for k in CHAIN_SECTIONS if k in budgets and k != "adapt"}
    return PipelineConfig(
        root=run_url,
        corpus=[storage.join(corpus, p) if p else corpus for p in parts],
        train=storage.join(reviews, "movie_snippets.jsonl"),
        exclude=list(evaluation_sets(reviews, storage.join(run_url, "eval")).values()),
        teacher=teacher,
        cache_root=storage.join(cfg.root, "cache"),  # shared by the scales
        adapt_teacher=cfg.adapt,
        ray_address=cfg.ray_address or "",
        adapt=adapt,
        **sections,
    )


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.run_url = storage.join(cfg.root, cfg.scale)
        self.budgets: dict[str, dict[str, Any]] = yaml.safe_load(budgets_path(cfg).read_text())
        self.env = job_env(os.environ)
        self.runner = StepRunner(self.run_url, cfg.ray_address, self.env)
        self.steps = self.runner.steps
        self.step = self.runner.step

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        b = self.budgets
        samples = self._samples()
        reviews = storage.join(self.cfg.samples, "reviews")
        chain = Chain(pipeline_config(self.cfg, b, self.run_url, self.cfg.samples), self.runner)
        chain.run()
        clf_student, clf_teacher = self.steps["finetune_student"], self.steps["finetune_teacher"]
        teacher_logits_cache = (
            self.steps["pool"].output
            if "pool" in self.steps
            else clf_teacher.result["teacher_cache"]
        )
        run_id = "demo-" + storage.fingerprint(
            [b["score"], b.get("score_inputs"), clf_student.fingerprint]
        )
        names = b.get("score_inputs") or [
            "movie_snippets.jsonl",
            "amazon_snippets.jsonl",
            "rotten_tomatoes.jsonl",
        ]
        inputs = [storage.join(reviews, n) for n in names]
        self.step(
            "score",
            "score_reviews",
            {
                **b["score"],
                "input": inputs,
                "model": latest_pointer(self.run_url),
                "run_id": run_id,
                "teacher_cache": teacher_logits_cache,
                "runner": "FnApiRunner",
            },
            "output",
            upstream=(clf_student, clf_teacher, self.steps["gate"]),
            output_key=lambda out, _: scored_run_dir(out, run_id),
        )
        run = run_json(
            self.cfg, self.run_url, self.steps, started, time.perf_counter() - t0, samples,
            ood_max_rows=self.budgets.get("ood_max_rows"),
        )  # fmt: skip
        storage.write_json(storage.join(self.run_url, "run.json"), run)
        from distil.quality.report import build_report

        local = str(Path(self.cfg.report_dir, self.cfg.scale).resolve())
        report_url = build_report(self.run_url, local_copy=local)
        track_report(run, os.path.join(local, "report.html"))
        return {
            "run_json": storage.join(self.run_url, "run.json"),
            "report": report_url,
            "local_report": os.path.join(local, "report.html"),
            "wall_s": run["wall_s"],
            "reused": [k for k, v in self.steps.items() if v.reused],
            "skipped": [k for k, v in self.steps.items() if v.skipped],
        }

    def _samples(self) -> dict[str, Any]:
        from distil.samples.config import SamplesConfig
        from distil.samples.corpus import run as build_samples

        t0 = time.perf_counter()
        summary = build_samples(SamplesConfig(output=self.cfg.samples))
        reused = bool(summary["corpus"]["reused"])
        verb = "reusing committed" if reused else "built"
        print(f"[demo] samples: {verb} {self.cfg.samples}", flush=True)
        return {"summary": summary, "wall_s": round(time.perf_counter() - t0, 2), "reused": reused}


def track_report(run: dict[str, Any], report_html: str) -> None:
    """The demo's run.json and report on its pipeline run in MLflow (when tracked), next to the
    stage runs nested under it."""
    finish_tracking(run, "run.json", (report_html,))


def tracked_group(cfg: DemoConfig) -> None:
    """A tracked demo (a tracking URI set, or the local stack's MLflow) is one pipeline run:
    its stages nest under the run group ``demo-<scale>-<stamp>`` unless ``--run-group`` named
    one."""
    from distil.chain.plan import tracked_group as group

    group(f"demo-{cfg.scale}")


def run(cfg: DemoConfig) -> dict[str, Any]:
    """``distil demo``: start the stack if needed, run every stage, write run.json + report."""
    from distil.ops import stack

    if cfg.start_stack:
        st = stack.status()
        if not all(v["healthy"] for v in st.values()):
            print("[demo] starting the local stack (Ray head + SeaweedFS on 127.0.0.1)", flush=True)
            st = stack.up()
        os.environ.update({k: v for k, v in stack.env_exports().items() if k.startswith("AWS_")})
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a team's server, when set, wins
            os.environ.update(stack.mlflow_env())
    tracked_group(cfg)
    t0 = time.perf_counter()
    out = Demo(cfg).run()
    print(
        f"[demo] finished in {time.perf_counter() - t0:.0f}s; "
        f"reused: {', '.join(out['reused']) or 'nothing'}; "
        f"skipped: {', '.join(out['skipped']) or 'nothing'}\n"
        f"[demo] run.json: {out['run_json']}\n"
        f"[demo] report:   {out['report']}\n"
        f"[demo] local copy of the report: {out['local_report']}",
        flush=True,
    )
    return out
