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
        "pool_examples": len(recipe.pool_rows),
        "steps": recipe.step,
        "selection": recipe.selection(),
        "world_size": recipe.world_size,
        "device": recipe.device.type,
        "train_seconds": round(recipe.train_seconds, 1),
        "kd": {
            "teacher_cache": cfg.teacher_cache,
            "alpha": cfg.kd_alpha,
            "temperature": cfg.kd_temperature,
            "pool": cfg.pool,
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
    """Accuracy (with its standard error), balanced accuracy, macro precision / recall / F1, the
    per-class figures and the confusion counts (``confusion[gold][pred]``); for 2 classes ``f1``
    is the positive class's. One definition for fine-tune metrics, ``distil eval`` and the
    quality table, so the three mean the same thing by each name."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (gold, pred), 1)
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = [float(t / p) if p else 0.0 for t, p in zip(tp, predicted, strict=True)]
    recall = [float(t / a) if a else 0.0 for t, a in zip(tp, actual, strict=True)]
    f1s = [
        float(2 * t / (p + a)) if p + a else 0.0
        for t, p, a in zip(tp, predicted, actual, strict=True)
    ]
    n = len(gold)
    acc = float(tp.sum() / n) if n else float("nan")
    present = [r for r, a in zip(recall, actual, strict=True) if a]
    out = {
        "accuracy": acc,
        # binomial standard error of the accuracy: how far another sample of this size could
        # put it (the quality table's "beats by more than 2 SE")
        "accuracy_se": float(np.sqrt(acc * (1 - acc) / n)) if n else float("nan"),
        "balanced_accuracy": float(np.mean(present)) if present else float("nan"),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1s)),
        "precision_per_class": precision,
        "recall_per_class": recall,
        "f1_per_class": f1s,
        "confusion": confusion.tolist(),
        "examples": int(n),
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
