"""Where a fine-tuned classifier goes, how it is published and how its metrics are read back.

Separate from the recipe because the driver (``jobs/finetune.py``) needs the output location
before any worker trains, and readers (the demo, benchmarks) need the metrics without torch
training code.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from distil import storage
from distil.sentiment.classifier import export_classifier, write_latest_pointer
from distil.sentiment.config import FinetuneConfig

# The metrics a run's summary carries; the full record stays in the export's metrics.json.
SUMMARY_METRICS = (
    "accuracy",
    "f1",
    "train_examples",
    "validation_examples",
    "steps",
    "train_seconds",
)


def model_url_for(cfg: FinetuneConfig) -> str:
    """``OUTPUT/<run name>``, timestamped when unnamed so that reruns never overwrite a model."""
    name = cfg.run_name or time.strftime("finetune-%Y%m%dT%H%M%SZ", time.gmtime())
    return storage.join(cfg.output, name)


def publish_classifier(
    model: Any, tokenizer: Any, model_url: str, metrics: dict[str, Any], cfg: FinetuneConfig
) -> dict[str, Any]:
    """Export the HF classifier with ``metrics.json``, then move the latest pointer to it.

    The pointer moves only after the export's manifest is committed, so a reader following it
    never sees a half-written model. Returns the run summary (``SUMMARY_METRICS`` only).
    """
    manifest = export_classifier(model, tokenizer, model_url, metrics)
    pointer = cfg.latest_pointer or storage.join(cfg.output, "latest.json")
    write_latest_pointer(pointer, model_url, manifest)
    return {
        "model_url": model_url,
        "latest_pointer": pointer,
        "fingerprint": manifest["fingerprint"],
        "metrics": {k: metrics[k] for k in SUMMARY_METRICS},
    }


def export_recipe(recipe: Any, model_url: str) -> dict[str, Any]:
    """Evaluate a trained :class:`~distil.sentiment.finetune.FinetuneRecipe`, export its HF
    classifier + metrics.json, move the latest pointer, and optionally cache its logits as a
    teacher for a student run. Weights are exported from the CPU (device-independent)."""
    cfg = recipe.cfg
    val = recipe.evaluate()
    metrics = {
        "validation": val,
        "accuracy": val["accuracy"],
        "f1": val.get("f1", val["f1_macro"]),
        "model": cfg.model,
        "train_examples": len(recipe.train_rows),
        "validation_examples": len(recipe.val_rows),
        "steps": recipe.total_steps,
        "world_size": recipe.world_size,
        "device": recipe.device.type,
        "train_seconds": round(recipe.train_seconds, 1),
        "kd": {
            "teacher_cache": cfg.teacher_cache,
            "alpha": cfg.kd_alpha,
            "temperature": cfg.kd_temperature,
        }
        if cfg.teacher_cache
        else None,
        "data": recipe.data_accounting,
        "history": recipe.history,
        "config": cfg.model_dump(),
    }
    out = publish_classifier(recipe.model.to("cpu"), recipe.tokenizer, model_url, metrics, cfg)
    recipe.model.to(recipe.device)
    if cfg.write_teacher_cache:
        from distil.sentiment.teacher_cache import write_teacher_cache

        rows = recipe.train_rows + recipe.val_rows
        logits = recipe.predict_logits(recipe.train_ids + recipe.val_ids)
        write_teacher_cache(
            cfg.write_teacher_cache,
            [r["text"] for r in rows],
            logits,
            dict(enumerate(cfg.labels)),
            model_url,
            out["fingerprint"],
        )
        out["teacher_cache"] = cfg.write_teacher_cache
    return out


def metrics_of(model_url: str) -> dict[str, Any]:
    """The full ``metrics.json`` of an exported classifier (validation, history, config)."""
    return json.loads(storage.read_bytes(storage.join(model_url, "metrics.json")))


def classification_metrics(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro F1 and per-class F1 (for 2 classes, ``f1`` is the positive class's)."""
    f1s = []
    for c in range(num_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {
        "accuracy": float((pred == gold).mean()) if len(gold) else float("nan"),
        "f1_macro": float(np.mean(f1s)),
        "f1_per_class": f1s,
        "examples": int(len(gold)),
    }
    if num_labels == 2:
        out["f1"] = f1s[1]
    return out


__all__ = [
    "SUMMARY_METRICS",
    "classification_metrics",
    "export_recipe",
    "metrics_of",
    "model_url_for",
    "publish_classifier",
]
