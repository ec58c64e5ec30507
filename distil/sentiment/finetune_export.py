"""Where a fine-tuned classifier goes, how it is published and how its metrics are read back.

Separate from the recipe because the driver (``jobs/finetune.py``) needs the output location
before any worker trains, and readers (the demo, benchmarks) need the metrics without torch
training code.
"""

from __future__ import annotations

import json
import time
from typing import Any

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


def metrics_of(model_url: str) -> dict[str, Any]:
    """The full ``metrics.json`` of an exported classifier (validation, history, config)."""
    return json.loads(storage.read_bytes(storage.join(model_url, "metrics.json")))


__all__ = ["SUMMARY_METRICS", "metrics_of", "model_url_for", "publish_classifier"]
