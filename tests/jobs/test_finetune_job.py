"""distil.jobs.finetune (what jobs/finetune.py runs) on a real local Ray cluster: 2 DDP workers
(gloo), data, model and Ray Train checkpoints on S3; a worker is SIGKILLed after the first
checkpoint and the run resumes from it; the finished run is resubmitted and does no steps."""

from __future__ import annotations

import json
import math

import pytest
from train_workers import KillAfterFirstCheckpoint, checkpoint_steps

from distil import storage
from distil.sentiment.config import FinetuneConfig


@pytest.mark.timeout(420)
def test_ray_finetune_survives_a_killed_worker_learns_exports_and_resubmits(
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
        storage_path=storage.join(s3_url, "runs"),
        checkpoint_every=5,
        log_every=5,
        max_failures=2,
    )
    from distil.jobs.finetune import run_name_of
    from distil.sentiment.finetune_export import model_url_for

    run_url = storage.join(s3_url, "runs", run_name_of(model_url_for(cfg)))
    with KillAfterFirstCheckpoint(run_url) as killer:
        out = run(cfg)
    assert killer.killed, f"no worker was killed; the killer last saw {killer.seen}"
    # 3 epochs of 16 rows per step; the last attempt started from a checkpoint, not from scratch
    total = out["metrics"]["steps"]
    assert total == 3 * math.ceil(out["metrics"]["train_examples"] / 16)
    assert out["start_step"] >= killer.registered_at_kill[0] > 0
    assert out["start_step"] % 5 == 0 or out["start_step"] == total
    assert out["steps_run"] == total - out["start_step"]
    assert checkpoint_steps(run_url)[-1] == total
    # Ray Train's curve: every log step once, the killed attempt's re-reported steps included
    from distil.jobs._ray_train import report_history

    curve = report_history(storage.join(s3_url, "runs"), run_name_of(model_url_for(cfg)))
    assert list(curve["step"]) == sorted({*range(5, total + 1, 5), total})
    assert curve["loss"].notna().all()

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

    # resubmit the finished run's name: no step is redone, the export is kept
    manifest_before = storage.read_bytes(storage.join(model_url, "manifest.json"))
    again = run(cfg)
    assert (again["steps_run"], again["start_step"]) == (0, total)
    assert storage.read_bytes(storage.join(model_url, "manifest.json")) == manifest_before


def test_the_cluster_config_names_no_reviews_and_stops_before_any_work(
    tmp_path, monkeypatch, capsys
):
    """finetune/cluster without --train: exit 2 naming the field and the flag, before Ray starts
    or anything is written (it used to fall back to the sample movie snippets)."""
    import distil.jobs._ray_train as ray_train
    from distil.cli import main

    def no_ray(*a, **k):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray_train, "init_ray", no_ray)
    root = tmp_path / "root"
    monkeypatch.setenv("DISTIL_ROOT", str(root))
    assert main(["finetune", "--config", "finetune/cluster"]) == 2
    err = capsys.readouterr().err
    assert "`train` is not set: pass --train or set `train:` in the config" in err
    assert "`distil demo`" in err  # where the samples went
    assert not root.exists()


def test_the_cluster_config_with_train_validates(monkeypatch):
    from distil.config import parse_job_args

    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    argv = ["--config", "finetune/cluster", "--train", "${DISTIL_ROOT}/reviews/labelled/"]
    cfg = parse_job_args(FinetuneConfig, "", argv)
    assert cfg.train == "s3://bucket/prefix/reviews/labelled/"


def test_train_without_review_files_stops_on_the_driver_before_ray(tmp_path, monkeypatch):
    import distil.jobs._ray_train as ray_train
    import distil.jobs.finetune as job
    from distil.config import ConfigError

    def no_ray(*a, **k):
        raise AssertionError("Ray started")

    monkeypatch.setattr(ray_train, "init_ray", no_ray)
    monkeypatch.setattr(job, "latest_checkpoint", no_ray)
    (tmp_path / "reviews").mkdir()
    out = tmp_path / "models"
    for train in (tmp_path / "reviews", tmp_path / "missing.jsonl"):
        cfg = FinetuneConfig(model="packaged:all-minilm-l6-v2", train=str(train), output=str(out))
        with pytest.raises(ConfigError, match=r"`train` .* has no review files.*--train URL"):
            job.run(cfg)
    assert not out.exists()
