"""``distil promote``: the quality gate between a fine-tuned student classifier and the people
who score with it, then its publication.

The gate passes when, on the fine-tune's own validation rows (the rows its early stopping and
model selection already used, never the evaluation sets), the student keeps at least
``min_teacher_share`` of the fine-tuned teacher's accuracy, and its int8 path (what
``distil score --quantize`` runs) is within ``max_int8_drop`` points of its fp32 path. Both
classifiers must have been fine-tuned on the same rows (same data, split and exclusions), or
the comparison would mean nothing: that is checked, not assumed.

A passing student is published: with MLflow tracking on, registered as a new version of
``name`` (and the distilled student it was fine-tuned from as a version of ``name-mlm``), with
lineage tags, and given the alias ``champion``; with a ``pointer``, that ``latest.json`` moves to
it (the way without MLflow). A failing gate publishes nothing (the alias and the pointer stay
where they were) and the command fails with the figures that failed. Either way the verdict and
its figures are written to ``OUTPUT/gate.json`` and, tracked, to the MLflow run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydantic import Field

from distil import model_registry, storage, tracking
from distil.config import RunStopped, StageConfig
from distil.sentiment import classifier
from distil.sentiment.config import LabelledDataConfig
from distil.sentiment.labelled_data import assemble

log = logging.getLogger("distil.promote")

GATE_RECORD = "gate.json"


class PromoteConfig(StageConfig):
    """Gate a fine-tuned student classifier against its teacher, then publish it."""

    PATH_FIELDS = ("student", "teacher", "output", "pointer", "model_cache")

    student: str = Field(
        ..., description="the student's fine-tuned classifier (distil finetune output dir or its "
        "latest.json pointer)",
    )  # fmt: skip
    teacher: str = Field(
        ..., description="the teacher's fine-tuned classifier, fine-tuned on the same rows",
    )  # fmt: skip
    output: str = Field(..., description="where the gate's record (gate.json) is written")
    name: str = Field(
        "distil-sentiment",
        description="registered model name (MLflow Model Registry); the distilled student it "
        "was fine-tuned from is registered as NAME-mlm",
    )
    alias: str = Field(model_registry.CHAMPION, description="alias a promoted version gets")
    pointer: str | None = Field(
        None,
        description="a latest.json to point at the promoted classifier (what distil score "
        "--model reads without MLflow); unset: none",
    )
    min_teacher_share: float = Field(
        0.97, gt=0, description="student / teacher validation accuracy, at least (>1: beat it)"
    )
    max_int8_drop: float = Field(
        0.5, ge=0, description="int8 validation accuracy below fp32, at most (accuracy points)"
    )
    micro_batch_size: int = Field(64, ge=1, description="rows per forward pass")
    model_cache: str = Field(".distil/models", description="local dir the classifiers go to")


# the fields that decide which rows a fine-tune validated on
SPLIT_FIELDS = (
    "train", "text_column", "label_column", "id_column", "labels", "validation_fraction",
    "max_validation_examples", "exclude",
)  # fmt: skip


def _finetune(url: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(model dir, manifest, fine-tune config) of a ``distil finetune`` output."""
    model_url = classifier.resolve_model_url(url)
    manifest = storage.read_manifest(model_url)
    if manifest.get("kind") != classifier.MODEL_KIND:
        raise ValueError(f"{storage.redact(model_url)} is not a distil finetune output")
    metrics = storage.read_json(storage.join(model_url, "metrics.json"))
    return model_url, manifest, metrics.get("config") or {}


def validation_rows(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The validation rows a fine-tune with this (recorded) config used, rebuilt the way it
    built them."""
    data = LabelledDataConfig.model_validate(
        {k: config[k] for k in LabelledDataConfig.model_fields if k in config}
    )
    return assemble(data, data.train).val


def accuracy(model_url: str, rows: list[dict[str, Any]], cfg: PromoteConfig, *,
             quantize: bool, max_length: int) -> float:  # fmt: skip
    local, _ = classifier.fetch_model(model_url, cfg.model_cache)
    clf = classifier.SequenceClassifier(local, max_length=max_length, quantize=quantize)
    pred = clf.classify([r["text"] for r in rows], cfg.micro_batch_size)["label_id"]
    return float(np.mean(pred == np.array([r["label"] for r in rows])))


def judge(figures: dict[str, float], cfg: PromoteConfig) -> list[str]:
    """What fails the gate (empty: it passes)."""
    failed = []
    if figures["teacher_share"] < cfg.min_teacher_share:
        failed.append(
            f"the student keeps {figures['teacher_share']:.4f} of the teacher's validation "
            f"accuracy ({figures['student_accuracy']:.4f} / {figures['teacher_accuracy']:.4f}), "
            f"below --min-teacher-share {cfg.min_teacher_share}"
        )
    if figures["int8_drop_points"] > cfg.max_int8_drop:
        failed.append(
            f"int8 scores {figures['int8_drop_points']:.2f} points below fp32 "
            f"({figures['student_int8_accuracy']:.4f} vs {figures['student_fp32_accuracy']:.4f}),"
            f" above --max-int8-drop {cfg.max_int8_drop}"
        )
    return failed


def measure(cfg: PromoteConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, lineage) of the gate: both classifiers on the student's validation rows."""
    student_url, student_manifest, student_cfg = _finetune(cfg.student)
    teacher_url, teacher_manifest, teacher_cfg = _finetune(cfg.teacher)
    differs = [k for k in SPLIT_FIELDS if student_cfg.get(k) != teacher_cfg.get(k)]
    if differs:
        raise ValueError(
            f"the student and the teacher were fine-tuned on different rows ({', '.join(differs)} "
            "differ): the gate compares them on one validation split; fine-tune both with the "
            "same --train, --exclude and split options"
        )
    rows = validation_rows(student_cfg)
    max_length = int(student_cfg.get("max_length") or 128)
    teacher_len = int(teacher_cfg.get("max_length") or 128)
    figures: dict[str, Any] = {
        "validation_rows": len(rows),
        "teacher_accuracy": accuracy(
            teacher_url, rows, cfg, quantize=False, max_length=teacher_len
        ),  # fmt: skip
        "student_fp32_accuracy": accuracy(
            student_url, rows, cfg, quantize=False, max_length=max_length
        ),  # fmt: skip
        "student_int8_accuracy": accuracy(
            student_url, rows, cfg, quantize=True, max_length=max_length
        ),  # fmt: skip
    }
    figures["student_accuracy"] = figures["student_fp32_accuracy"]
    figures["teacher_share"] = figures["student_accuracy"] / max(figures["teacher_accuracy"], 1e-9)
    figures["int8_drop_points"] = 100 * (
        figures["student_fp32_accuracy"] - figures["student_int8_accuracy"]
    )
    lineage = {
        "distil.classifier": student_url,
        "distil.classifier_fingerprint": student_manifest["fingerprint"],
        "distil.student_mlm": student_cfg.get("model"),
        "distil.teacher_classifier": teacher_url,
        "distil.teacher_classifier_fingerprint": teacher_manifest["fingerprint"],
        "distil.teacher": teacher_cfg.get("model"),
        "distil.train": student_cfg.get("train"),
        "distil.task_teacher_cache": student_cfg.get("teacher_cache"),
    }
    return figures, lineage


def publish(cfg: PromoteConfig, figures: dict[str, Any], lineage: dict[str, Any]) -> dict[str, Any]:
    """Register (tracking on) and move the pointer (when set); what was published."""
    out: dict[str, Any] = {"registered": None, "registered_mlm": None, "pointer": None}
    student_url = lineage["distil.classifier"]
    if tracking.enabled():
        run_id = tracking.current().run_id
        tags = {**lineage, **{f"distil.gate.{k}": v for k, v in figures.items()}}
        mlm = lineage.get("distil.student_mlm")
        if mlm and storage.protocol_of(mlm) != "file" and storage.is_committed(mlm):
            found = model_registry.register(f"{cfg.name}-mlm", mlm, lineage, cfg.alias, run_id)
            out["registered_mlm"] = found.uri
            tags["distil.student_mlm_version"] = found.uri
        found = model_registry.register(cfg.name, student_url, tags, cfg.alias, run_id)
        out["registered"] = found.uri
    if cfg.pointer:
        classifier.write_latest_pointer(
            cfg.pointer, student_url, storage.read_manifest(student_url)
        )
        out["pointer"] = cfg.pointer
    if not any(out.values()):
        log.warning(
            "the gate passed but nothing was published: tracking is off (no MLflow) and no "
            "--pointer was given"
        )
    return out


def run(cfg: PromoteConfig) -> dict[str, Any]:
    figures, lineage = measure(cfg)
    failed = judge(figures, cfg)
    record = {
        "passed": not failed,
        "failed": failed,
        "figures": figures,
        "thresholds": {
            "min_teacher_share": cfg.min_teacher_share,
            "max_int8_drop": cfg.max_int8_drop,
        },
        "lineage": lineage,
        "published": publish(cfg, figures, lineage) if not failed else None,
    }
    storage.write_json(storage.join(cfg.output, GATE_RECORD), record)
    if not failed:  # committed: a pipeline rerun finds the gate passed and publishes nothing again
        storage.commit(cfg.output, {"kind": "gate", "passed": True, "figures": figures})
    record["output"] = cfg.output
    tracker = tracking.current()
    tracker.log_json(record, GATE_RECORD)
    if failed:  # a failed stage logs no summary: its figures go to the run here
        tracker.log_metrics({**figures, "passed": 0})
        raise GateFailed(record)
    return record


class GateFailed(RunStopped):
    """The student did not pass: nothing was published. ``record``: the gate's record."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record
        super().__init__("quality gate failed, nothing published: " + "; ".join(record["failed"]))
