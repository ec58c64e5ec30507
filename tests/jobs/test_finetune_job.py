"""jobs/finetune.py on a real local Ray cluster: 2 DDP workers (gloo), data and model on S3."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distil import storage
from distil.sentiment.config import FinetuneConfig

# Same planted task and tiny base as tests/sentiment/conftest.py (kept here: tests/jobs/conftest.py
# belongs to every stage).
POSITIVE = ["great", "wonderful", "excellent", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "dreadful"]
FILLER = ["the", "film", "plot", "actor", "scene", "story", "was", "and", "it", "really"]


def planted_reviews(n: int, seed: int = 0) -> list[dict]:
    """Reviews whose label is decided by one sentiment word among filler: a tiny model can
    learn it in a few dozen steps, so "the model learned" is a claim a test can check."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=5))
        words.insert(int(rng.integers(6)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append({"id": f"r{i}", "text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, real_tokenizer_dir):
    """A tiny random BertModel-family dir (MLM head) with the real tokenizer: a stand-in student."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny_base")
    BertForMaskedLM(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(real_tokenizer_dir).save_pretrained(out)
    return out


@pytest.mark.timeout(420)
def test_ray_finetune_learns_exports_and_points_latest(ray_local, s3_url, tiny_base_dir, tmp_path):
    from transformers import pipeline

    from distil.sentiment.classifier import fetch_model
    from distil.sentiment.teacher_cache import read_teacher_cache
    from jobs.finetune import run

    rows = planted_reviews(400, seed=1)
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
