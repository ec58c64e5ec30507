"""distil.jobs.finetune (what jobs/finetune.py runs) on a real local Ray cluster: 2 DDP workers (gloo), data and model on S3."""

from __future__ import annotations

import json

import pytest

from distil import storage
from distil.sentiment.config import FinetuneConfig


@pytest.mark.timeout(420)
def test_ray_finetune_learns_exports_and_points_latest(
    ray_local, s3_url, tiny_base_dir, tmp_path, make_planted_reviews
):
    from transformers import pipeline

    from distil.jobs.finetune import run
    from distil.sentiment.classifier import fetch_model
    from distil.sentiment.teacher_cache import read_teacher_cache

    rows = make_planted_reviews(400, seed=1)
    train_url = storage.join(s3_url, "reviews", "train.jsonl")
    storage.write_bytes(train_url, "".join(json.dumps(r) + "\n" for r in rows).encode())
    model_src = storage.join(s3_url, "base")
    storage.upload_dir(str(tiny_base_dir), model_src)

    cfg = FinetuneConfig(
        model=model_src,
        train=train_url,
        output=storage.join(s3_url, "models"),
        run_name="ddp",
        num_workers=2,
        epochs=3,
        batch_size=8,  # per worker: 16 per optimizer step
        lr=1e-2,
        max_length=16,
        validation_fraction=0.2,
        torch_threads=1,
        write_teacher_cache=storage.join(s3_url, "teacher"),
    )
    out = run(cfg)

    model_url = storage.join(s3_url, "models", "ddp")
    assert out["model_url"] == model_url
    metrics = json.loads(storage.read_bytes(storage.join(model_url, "metrics.json")))
    assert metrics["world_size"] == 2
    assert metrics["accuracy"] >= 0.9 and metrics["f1"] >= 0.9
    assert metrics["train_examples"] + metrics["validation_examples"] == 400

    pointer = storage.read_json(storage.join(s3_url, "models", "latest.json"))
    assert pointer["model"] == model_url and pointer["fingerprint"] == out["fingerprint"]

    local, _ = fetch_model(storage.join(s3_url, "models", "latest.json"), str(tmp_path / "c"))
    clf = pipeline("text-classification", model=local, device="cpu")
    assert clf("the film was really wonderful")[0]["label"] == "positive"
    assert clf("the film was really dreadful")[0]["label"] == "negative"

    cache = read_teacher_cache(storage.join(s3_url, "teacher"))
    assert len(cache) == len({r["text"] for r in rows})
