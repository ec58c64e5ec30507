"""The demo's plan: which stages run, in what order, with which budgets and inputs.

Stage budgets come from the packaged config ``demo/<scale>`` (or the user's ``--budgets`` file);
running, reusing and recording each step is ``distil.demo.steps``; run.json is
``distil.demo.record``. This module only wires one step's outputs into the next one's flags.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distil import storage
from distil.config import resolve_config_path
from distil.demo.config import DemoConfig
from distil.demo.record import run_json
from distil.demo.steps import Step, StepRunner, job_env
from distil.packaged import PACKAGED_TEACHER
from distil.samples.reviews import evaluation_sets


def budgets_path(cfg: DemoConfig) -> Path:
    """The user's ``--budgets`` file, else the packaged ``demo/<scale>`` config."""
    return Path(cfg.budgets) if cfg.budgets else resolve_config_path(f"demo/{cfg.scale}")


@dataclass(frozen=True)
class TeacherPlan:
    ref: str  # the budgets' adapt.teacher
    adapt: bool  # run `distil teacher adapt` on it, or use it as is
    reason: str
    weights_sha256: str


def plan_teacher(adapt_budget: dict[str, Any], force: bool | None) -> TeacherPlan:
    """Whether the demo adapts its teacher. Adaptation exists to give a head-less encoder (the
    packaged MiniLM) an MLM head; a teacher whose head is trained is used as given, unless
    ``force`` says otherwise. Loading it here also refuses a teacher of an unsupported family
    (``distil.family``) or a pickle-only one
    before any stage runs."""
    from distil.teacher.load import load_teacher

    ref = adapt_budget.get("teacher", PACKAGED_TEACHER)
    teacher = load_teacher(ref, adapt_budget.get("allow_pickle", False))
    if force is not None:
        reason = "forced by --adapt" if force else "--no-adapt"
        return TeacherPlan(ref, force, reason, teacher.weights_sha256)
    has_head = teacher.has_mlm_head
    reason = "the teacher has a trained MLM head" if has_head else "the teacher has no MLM head"
    return TeacherPlan(ref, not has_head, reason, teacher.weights_sha256)


# the labelled-data fields the pool must share with the fine-tunes (the same training rows)
POOL_DATA_KEYS = ("max_train_examples", "validation_fraction", "text_column", "label_column")


def scored_run_dir(output: str, run_id: str) -> str:
    from distil.score.scored import run_dir

    return run_dir(output, run_id)


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
        corpus = storage.join(self.cfg.samples, "corpus")
        reviews = storage.join(self.cfg.samples, "reviews")

        # which parts of the sample corpus this scale trains on (all of it unless listed)
        parts = b.get("corpus") or [""]
        inputs = [storage.join(corpus, p) if p else corpus for p in parts]
        tp = plan_teacher(b["adapt"], self.cfg.adapt)
        prep_args = {**b["prepare"], "input": inputs}
        if tp.ref != PACKAGED_TEACHER:
            # the teacher's own tokenizer (stage 2 refuses any other); the packaged one is
            # prepare's default, left implicit so earlier runs' fingerprints still hold
            prep_args.setdefault("tokenizer", tp.ref)
        prepared = self.step("prepare", "prepare", prep_args, "output")
        if tp.adapt:
            print(f"[demo] adapt_teacher: needed ({tp.reason})", flush=True)
            teacher = self.step(
                "adapt_teacher",
                "adapt_teacher",
                {**b["adapt"], "input": prepared.output},
                "output",
                upstream=(prepared,),
            )
        else:
            fp = storage.fingerprint({"given_teacher": tp.weights_sha256})
            teacher = self.runner.skip("adapt_teacher", tp.ref, fp, tp.reason)
        cache = self.step(
            "logits",
            "teacher_logits",
            {
                **b["logits"],
                "input": prepared.output,
                "teacher": teacher.output,
                "cache_root": storage.join(self.cfg.root, "cache"),
            },
            None,
            upstream=(prepared, teacher),
            output_key="cache_url",
        )
        run_name = "distil-" + storage.fingerprint([b["distil"], cache.fingerprint])
        student = self.step(
            "distil",
            "distil",
            {
                **b["distil"],
                "cache": cache.output,
                "teacher": teacher.output,
                "storage_path": storage.join(self.run_url, "train"),
                "run_name": run_name,
            },
            "output",
            upstream=(cache, teacher),
        )
        movie = storage.join(reviews, "movie_snippets.jsonl")
        excluded = list(evaluation_sets(reviews, storage.join(self.run_url, "eval")).values())
        task_cache = storage.join(self.run_url, "task-teacher-logits-" + teacher.fingerprint)
        # the sentiment teacher: the budgets' finetune_teacher.model, else the MLM teacher
        teacher_args = {**b["finetune"], **b.get("finetune_teacher", {})}
        teacher_args.setdefault("model", teacher.output)
        clf_teacher = self.step(
            "finetune_teacher",
            "finetune",
            {
                **teacher_args,
                "train": movie,
                "exclude": excluded,
                "run_name": "model",
                "write_teacher_cache": None if "pool" in b else task_cache,
                "latest_pointer": storage.join(self.run_url, "teacher-classifier-latest.json"),
            },
            "output",
            upstream=(teacher,),
            output_key="model_url",
        )
        student_args = {**b["finetune"], **b.get("finetune_student", {})}
        if "pool" in b:
            # task distillation: the training reviews' augmentations, labelled by the teacher
            pool = self.step(
                "pool",
                "task_pool",
                {
                    **b["pool"],
                    **{k: b["finetune"][k] for k in POOL_DATA_KEYS if k in b["finetune"]},
                    "train": movie,
                    "exclude": excluded,
                    "teacher": clf_teacher.output,
                },
                "output",
                upstream=(clf_teacher,),
                output_key="teacher_cache",
            )
            student_args.update(teacher_cache=pool.output, pool=[pool.result["pool"]])
            upstream_student: tuple[Step, ...] = (student, clf_teacher, pool)
        else:
            student_args["teacher_cache"] = clf_teacher.result["teacher_cache"]
            upstream_student = (student, clf_teacher)
        teacher_logits_cache = student_args["teacher_cache"]
        latest = storage.join(self.run_url, "models", "latest.json")
        clf_student = self.step(
            "finetune_student",
            "finetune",
            {
                **student_args,
                "model": student.output,
                "train": movie,
                "exclude": excluded,
                "run_name": "model",
                "latest_pointer": latest,
            },
            "output",
            upstream=upstream_student,
            output_key="model_url",
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
                "model": latest,
                "run_id": run_id,
                "teacher_cache": teacher_logits_cache,
                "runner": "FnApiRunner",
            },
            "output",
            upstream=(clf_student, clf_teacher),
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
    from distil import tracking

    parent = tracking.group_tracker()
    if parent.active:
        parent.log_json(run, "run.json")
        if os.path.exists(report_html):
            parent.log_file(report_html)
        parent.log_metrics({"wall_s": run.get("wall_s", 0)})
        parent.finish()


def tracked_group(cfg: DemoConfig) -> None:
    """A tracked demo (a tracking URI set, or the local stack's MLflow) is one pipeline run:
    its stages nest under the run group named here unless ``--run-group`` named one."""
    from distil import tracking

    if tracking.enabled() and not os.environ.get(tracking.GROUP_ENV):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.environ[tracking.GROUP_ENV] = f"demo-{cfg.scale}-{stamp}"


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
