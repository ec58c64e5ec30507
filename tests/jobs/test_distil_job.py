"""distil.jobs.distil (what jobs/distil.py runs) on a real local Ray cluster: 2 Ray Train workers (gloo DDP), cache,
checkpoints and export on S3 (SeaweedFS); a worker is SIGKILLed mid-run; the finished run is
resubmitted; the export is loaded by transformers' fill-mask pipeline."""

from __future__ import annotations

import os

import pytest
from train_workers import KillAfterFirstCheckpoint, checkpoint_steps

from distil import storage
from distil.train.config import DistilConfig


def _s3_config(s3_cache: str, s3_url: str, **kw) -> DistilConfig:
    """A cached-mode run on the S3 fixture (batch 8, 2 warm-up steps, half a CPU per worker)."""
    base = dict(
        cache=s3_cache,
        output=f"{s3_url}/student",
        storage_path=f"{s3_url}/runs",
        cpus_per_worker=0.5,
        batch_size=8,
        warmup_steps=2,
    )
    return DistilConfig(**{**base, **kw})


def _job():
    import distil.jobs.distil

    return distil.jobs.distil


@pytest.mark.timeout(420)
def test_kill_a_worker_resume_resubmit_and_export(ray_local, s3_url, s3_cache, tmp_path):
    job = _job()
    cfg = _s3_config(
        s3_cache, s3_url, run_name="kill-test", num_workers=2, max_steps=40,
        checkpoint_every=5, eval_every=20, eval_batches=2, log_every=5, max_failures=2,
    )  # fmt: skip
    run_url = storage.join(cfg.storage_path, cfg.run_name)
    with KillAfterFirstCheckpoint(run_url) as killer:
        first = job.run(cfg)
    assert killer.killed, f"no worker was killed; the killer last saw {killer.seen}"
    last = first["last_report"]
    assert last["step"] == 40
    # the final attempt started from a checkpoint, not from scratch
    assert last["start_step"] >= killer.registered_at_kill[0] > 0 and last["start_step"] % 5 == 0
    assert last["steps_run"] == 40 - last["start_step"]
    assert first["metrics"]["step"] == 40 and 0 <= first["metrics"]["eval_teacher_agreement"] <= 1
    assert checkpoint_steps(run_url)[-1] == 40
    # the killed attempt's steps were reported again by the restart: the curve has each once
    from distil.jobs._ray_train import report_history

    assert list(report_history(cfg.storage_path, cfg.run_name)["step"]) == list(range(5, 41, 5))

    # resubmit the finished run's name: no step is redone, the export is kept
    manifest_before = storage.read_bytes(storage.join(cfg.output, "manifest.json"))
    again = job.run(cfg)
    assert again["last_report"]["steps_run"] == 0
    assert again["last_report"]["start_step"] == 40
    assert storage.read_bytes(storage.join(cfg.output, "manifest.json")) == manifest_before

    # the export is a normal HF model directory
    from transformers import AutoModelForSequenceClassification, pipeline

    local = storage.copy_dir_to_local(cfg.output, str(tmp_path / "student"))
    names = set(os.listdir(local))
    assert {"model.safetensors", "config.json", "metrics.json", "tokenizer.json"} <= names
    fill = pipeline("fill-mask", model=local)
    preds = fill("the cat sat on the [MASK].")
    assert len(preds) == 5 and all("token_str" in p for p in preds)
    clf = AutoModelForSequenceClassification.from_pretrained(local, num_labels=2)
    assert clf.config.num_hidden_layers == 2


@pytest.mark.timeout(300)
def test_relative_local_paths_derived_name_and_resume_refusal(
    ray_local, s3_cache, tmp_path, monkeypatch
):
    """From a temp cwd, with a relative local cache / storage / output (Ray Train workers run
    elsewhere): the run trains under its derived name; the same settings again do no step and
    keep the export byte for byte; other settings under the same --run-name are refused."""
    from distil.train.identity import RunMismatchError

    job = _job()
    key = s3_cache.rstrip("/").rsplit("/", 1)[-1]
    storage.copy_dir_to_local(s3_cache, str(tmp_path / ".distil" / "cache" / key))
    monkeypatch.chdir(tmp_path)
    settings = dict(
        cache=f".distil/cache/{key}",
        output="out/student",
        storage_path="runs",
        num_workers=2,
        cpus_per_worker=0.5,
        batch_size=8,
        max_steps=2,
        warmup_steps=1,
        checkpoint_every=1,
        eval_every=2,
        eval_batches=1,
        log_every=1,
    )
    first = job.run(DistilConfig(**settings))
    name = first["run_name"]
    assert name == f"distil-{first['run_fingerprint']}"
    assert first["last_report"]["step"] == 2 and first["metrics"]["step"] == 2
    m = first["metrics"]  # tokens of both workers, not rank 0's alone
    assert m["world_size"] == 2 and 1.5 * m["tokens_seen"] < m["tokens_seen_global"]
    assert m["tokens_seen_global"] < 2.5 * m["tokens_seen"] and m["tokens_per_s_global"] > 0
    assert checkpoint_steps(str(tmp_path / "runs" / name)) == [1, 2]
    assert (tmp_path / "out" / "student" / "manifest.json").is_file()
    manifest = (tmp_path / "out" / "student" / "manifest.json").read_bytes()

    again = job.run(DistilConfig(**{**settings, "num_workers": 1}))  # scaling: the same run
    assert again["run_name"] == name and again["last_report"]["steps_run"] == 0
    assert (tmp_path / "out" / "student" / "manifest.json").read_bytes() == manifest

    with pytest.raises(RunMismatchError) as e:
        job.run(DistilConfig(**{**settings, "temperature": 1.0}, run_name=name))  # served
    msg = str(e.value)
    assert "temperature: checkpoint 2.0, now 1.0" in msg and "--run-name" in msg, msg
    assert checkpoint_steps(str(tmp_path / "runs" / name)) == [1, 2]  # nothing trained
    assert (tmp_path / "out" / "student" / "manifest.json").read_bytes() == manifest


@pytest.mark.timeout(300)
def test_ray_train_sees_every_log_step_and_checkpoints_at_their_cadence(
    ray_local, s3_url, s3_cache, tmp_path
):
    """Ray Train receives a report at every log step (a callback sees the curve while it trains),
    with a checkpoint only at checkpoint steps; ``Result.metrics_dataframe`` of the job's ``fit``
    has a row per log step (Ray Train 2.60's own holds only the checkpointed reports); the run's
    checkpoint is then found through ``ray.train.Result.from_path``."""
    import json

    from train_workers import report_log_callback

    from distil.jobs._ray_train import fit, latest_checkpoint, torch_trainer
    from distil.train.identity import IDENTITY_FILE, run_identity

    job = _job()
    cfg = _s3_config(
        s3_cache, s3_url, run_name="curve", num_workers=1, max_steps=12,
        checkpoint_every=6, eval_every=6, eval_batches=1, log_every=2, keep_checkpoints=5,
    )  # fmt: skip
    assert latest_checkpoint(cfg.storage_path, cfg.run_name) is None  # no run yet
    identity = run_identity(cfg)
    trainer = torch_trainer(
        job.train_loop_per_worker,
        job.loop_config(cfg, identity),
        cfg,
        run_name=cfg.run_name,
        storage_path=cfg.storage_path,
    )
    log_path = tmp_path / "reports.jsonl"
    trainer.run_config.callbacks.append(report_log_callback(str(log_path)))
    result = fit(trainer)
    reports = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert reports == [{"step": s, "ckpt": s in (6, 12)} for s in (2, 4, 6, 8, 10, 12)]
    assert result.metrics["step"] == 12 and result.metrics["loss"] > 0
    curve = result.metrics_dataframe
    assert list(curve["step"]) == [2, 4, 6, 8, 10, 12]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(curve.columns)
    assert curve["loss"].notna().all() and (curve["loss"] > 0).all()

    checkpoint, metrics, recorded = latest_checkpoint(cfg.storage_path, cfg.run_name, IDENTITY_FILE)
    assert metrics["step"] == 12 and checkpoint.path.endswith("step-00000012")
    assert recorded == identity.to_json()
