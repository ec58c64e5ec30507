"""The chain: prepare -> (adapt) -> logits -> distil -> fine-tune teacher -> (pool) -> fine-tune
student -> gate and publish, each step one stage job.

This module only wires one step's output into the next one's flags; running, reusing and recording
a step is ``distil.chain.steps``. A step's output URL carries a fingerprint of its settings and of
its inputs' fingerprints, so a rerun reuses every finished step and resumes the one that stopped
(every job itself resumes from its last checkpoint or committed shard).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.chain.config import PipelineConfig
from distil.chain.steps import Step, StepRunner, job_env
from distil.config import RunStopped, absolute_paths
from distil.packaged import PACKAGED_TEACHER

# the labelled-data fields the pool must share with the fine-tunes (the same training rows)
POOL_DATA_KEYS = ("max_train_examples", "validation_fraction", "text_column", "label_column")
PIPELINE_RECORD = "pipeline.json"


@dataclass(frozen=True)
class TeacherPlan:
    ref: str  # the teacher as given
    adapt: bool  # run `distil teacher adapt` on it, or use it as is
    reason: str
    weights_sha256: str


def plan_teacher(ref: str, force: bool | None, allow_pickle: bool = False) -> TeacherPlan:
    """Whether the chain adapts its teacher. Adaptation exists to give a head-less encoder (the
    packaged MiniLM) an MLM head; a teacher whose head is trained is used as given, unless
    ``force`` says otherwise. Loading it here also refuses a teacher of an unsupported family
    (``distil.family``) or a pickle-only one before any stage runs."""
    from distil.teacher.load import load_teacher

    teacher = load_teacher(ref, allow_pickle)
    if force is not None:
        reason = "forced by adapt_teacher: true" if force else "adapt_teacher: false"
        return TeacherPlan(ref, force, reason, teacher.weights_sha256)
    has_head = teacher.has_mlm_head
    reason = "the teacher has a trained MLM head" if has_head else "the teacher has no MLM head"
    return TeacherPlan(ref, not has_head, reason, teacher.weights_sha256)


def ray_address(cfg: PipelineConfig) -> str | None:
    """The job API the Ray stages go to: the config's, else ``$RAY_ADDRESS``; empty: none."""
    address = cfg.ray_address if cfg.ray_address is not None else os.environ.get("RAY_ADDRESS")
    return address or None


class Chain:
    """One run of the chain under ``cfg.root``. ``runner`` (default: one on ``cfg.root`` with the
    job environment of this process) runs or reuses each step."""

    def __init__(self, cfg: PipelineConfig, runner: StepRunner | None = None):
        self.cfg = cfg
        self.runner = runner or StepRunner(cfg.root, ray_address(cfg), job_env(os.environ))
        self.steps = self.runner.steps

    def step(self, name: str, stage: str, args: dict[str, Any], output_arg: str | None,
             upstream: tuple[Step, ...] = (), output_key: Any = "output") -> Step:  # fmt: skip
        return self.runner.step(
            name, stage, args, output_arg, upstream, output_key, may_run=self.cfg.selected(name)
        )

    def run(self) -> dict[str, Step]:
        """Every step in order; returns them by name. A failing gate raises ``GateFailed``."""
        cfg = self.cfg
        tp = plan_teacher(
            cfg.teacher, cfg.adapt_teacher, bool(cfg.stage("adapt").get("allow_pickle"))
        )
        prep_args: dict[str, Any] = {**cfg.stage("prepare"), "input": cfg.corpus}
        if tp.ref != PACKAGED_TEACHER:
            # the teacher's own tokenizer (stage 2 refuses any other); the packaged one is
            # prepare's default, left implicit so earlier runs' fingerprints still hold
            prep_args.setdefault("tokenizer", tp.ref)
        prepared = self.step("prepare", "prepare", prep_args, "output")
        if tp.adapt:
            print(f"[pipeline] adapt_teacher: needed ({tp.reason})", flush=True)
            teacher = self.step(
                "adapt_teacher",
                "adapt_teacher",
                {**cfg.stage("adapt"), "teacher": tp.ref, "input": prepared.output},
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
                **cfg.stage("logits"),
                "input": prepared.output,
                "teacher": teacher.output,
                "cache_root": cfg.cache_root or storage.join(cfg.root, "cache"),
            },
            None,
            upstream=(prepared, teacher),
            output_key="cache_url",
        )
        run_name = "distil-" + storage.fingerprint([cfg.stage("distil"), cache.fingerprint])
        student = self.step(
            "distil",
            "distil",
            {
                **cfg.stage("distil"),
                "cache": cache.output,
                "teacher": teacher.output,
                "storage_path": storage.join(cfg.root, "train"),
                "run_name": run_name,
            },
            "output",
            upstream=(cache, teacher),
        )
        task_cache = storage.join(cfg.root, "task-teacher-logits-" + teacher.fingerprint)
        # the sentiment teacher: finetune_teacher.model, else the MLM teacher
        teacher_args = {**cfg.stage("finetune"), **cfg.stage("finetune_teacher")}
        teacher_args.setdefault("model", teacher.output)
        clf_teacher = self.step(
            "finetune_teacher",
            "finetune",
            {
                **teacher_args,
                "train": cfg.train,
                "exclude": cfg.exclude,
                "run_name": "model",
                "storage_path": storage.join(cfg.root, "train"),
                "write_teacher_cache": None if cfg.pool is not None else task_cache,
                "latest_pointer": storage.join(cfg.root, "teacher-classifier-latest.json"),
            },
            "output",
            upstream=(teacher,),
            output_key="model_url",
        )
        student_args = {**cfg.stage("finetune"), **cfg.stage("finetune_student")}
        if cfg.pool is not None:
            finetune = cfg.stage("finetune")
            # task distillation: the training reviews' augmentations, labelled by the teacher
            pool = self.step(
                "pool",
                "task_pool",
                {
                    **cfg.stage("pool"),
                    **{k: finetune[k] for k in POOL_DATA_KEYS if k in finetune},
                    "train": cfg.train,
                    "exclude": cfg.exclude,
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
        clf_student = self.step(
            "finetune_student",
            "finetune",
            {
                **student_args,
                "model": student.output,
                "train": cfg.train,
                "exclude": cfg.exclude,
                "run_name": "model",
                # checkpoints with the run's outputs, not in this machine's ~/ray_results (where
                # a chain under another root with the same settings would resume them)
                "storage_path": storage.join(cfg.root, "train"),
            },
            "output",
            upstream=upstream_student,
            output_key="model_url",
        )
        self.gate(clf_student, clf_teacher)
        return self.steps

    def gate(self, clf_student: Step, clf_teacher: Step) -> Step:
        """The quality gate: publishes (registry alias, latest.json) only when it passes."""
        from distil.quality.gate import GATE_RECORD, GateFailed

        gate = self.cfg.stage("gate")
        args = {
            **gate,
            "student": clf_student.output,
            "teacher": clf_teacher.output,
            "pointer": latest_pointer(self.cfg.root),
        }
        planned = self.runner.plan("gate", "promote", args, "output", (clf_student, clf_teacher))
        try:
            return self.step("gate", "promote", args, "output", (clf_student, clf_teacher))
        except RuntimeError:
            record_url = storage.join(planned.output, GATE_RECORD)
            if storage.exists(record_url):
                record = storage.read_json(record_url)
                if not record.get("passed"):
                    self.steps["gate"] = planned  # ran, and said no: its verdict is recorded
                    raise GateFailed(record) from None
            raise


def latest_pointer(root: str) -> str:
    """The latest.json the gate moves to each promoted classifier (the way without MLflow)."""
    return storage.join(root, "models", "latest.json")


def write_record(
    cfg: PipelineConfig, steps: dict[str, Step], wall_s: float, stopped: str | None = None
) -> dict[str, Any]:
    """``ROOT/pipeline.json``: each step's command, output, fingerprint, whether it was reused,
    the gate's verdict and figures, and why the chain stopped (when it did)."""
    gate = None
    if "gate" in steps:
        from distil.quality.gate import GATE_RECORD

        found = storage.join(steps["gate"].output, GATE_RECORD)
        gate = storage.read_json(found) if storage.exists(found) else None
    record = {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(wall_s, 2),
        "stopped": stopped,
        "steps": {
            name: {
                "output": st.output,
                "fingerprint": st.fingerprint,
                "reused": st.reused,
                "skipped": st.skipped,
                "wall_s": st.wall_s,
                "argv": st.argv,
            }
            for name, st in steps.items()
        },
        "gate": gate and {k: gate.get(k) for k in ("passed", "failed", "figures", "published")},
    }
    storage.write_json(storage.join(cfg.root, PIPELINE_RECORD), record)
    return record


def tracked_group(prefix: str) -> None:
    """A tracked pipeline (a tracking URI set) is one parent run: its stage jobs nest under the run
    group named here (``PREFIX-<UTC stamp>``) unless ``--run-group`` named one."""
    from distil import tracking

    if tracking.enabled() and not os.environ.get(tracking.GROUP_ENV):
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        os.environ[tracking.GROUP_ENV] = f"{prefix}-{stamp}"


def finish_tracking(record: dict[str, Any], name: str, files: tuple[str, ...] = ()) -> None:
    """The pipeline's own record (and ``files``) on its parent run, next to the stage runs nested
    under it; the parent run ends here."""
    from distil import tracking

    parent = tracking.group_tracker()
    if parent.active:
        parent.log_json(record, name)
        for f in files:
            if os.path.exists(f):
                parent.log_file(f)
        parent.log_metrics({"wall_s": record.get("wall_s", 0)})
        parent.finish()


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """``distil pipeline run``: every step, each skipped when its committed output matches."""
    cfg = absolute_paths(cfg)  # Ray jobs run in another working directory
    tracked_group("pipeline")
    t0 = time.perf_counter()
    address = ray_address(cfg)
    where = f"Ray jobs on {address}" if address else "local processes (no Ray address)"
    print(f"[pipeline] {storage.redact(cfg.root)}: stages as {where}", flush=True)
    chain = Chain(cfg)
    try:
        steps = chain.run()
    except RunStopped as e:  # what did run, and why it stopped, for whoever looks next
        record = write_record(cfg, chain.steps, time.perf_counter() - t0, stopped=str(e))
        finish_tracking(record, PIPELINE_RECORD)
        raise
    wall = time.perf_counter() - t0
    record = write_record(cfg, steps, wall)
    finish_tracking(record, PIPELINE_RECORD)
    url = storage.join(cfg.root, PIPELINE_RECORD)
    reused = [k for k, v in steps.items() if v.reused]
    ran = [k for k, v in steps.items() if not v.reused and not v.skipped]
    print(
        f"[pipeline] finished in {wall:.0f}s; ran: {', '.join(ran) or 'nothing'}; "
        f"reused: {', '.join(reused) or 'nothing'}\n[pipeline] record: {url}",
        flush=True,
    )
    return {
        "record": url,
        "wall_s": round(wall, 2),
        "ran": ran,
        "reused": reused,
        "classifier": steps["finetune_student"].output,
        "gate": record["gate"],
    }
