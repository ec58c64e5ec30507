"""A stage asked for GPUs on a cluster without any (the CPU-only ``ray_local``) stops with an
error naming what it asked for and what it saw, instead of hanging in ``TorchTrainer.fit()`` or
quietly running the teacher on CPU; ``device: auto`` says which device it chose."""

from __future__ import annotations

import logging
import time

import pytest

from distil.ops.cluster import GPUUnavailableError
from distil.teacher.config import LogitsConfig
from distil.train.config import DistilConfig


def test_distil_use_gpu_fails_fast_on_a_cpu_cluster(ray_local, s3_cache, tmp_path):
    import distil.jobs.distil as job

    assert ray_local.cluster_resources().get("GPU", 0) == 0
    cfg = DistilConfig(
        cache=s3_cache,  # checked (teacher family, identity), but no training starts
        output=str(tmp_path / "student"),
        storage_path=str(tmp_path / "runs"),
        num_workers=2,
        use_gpu=True,
        gpu_wait_s=0.5,
    )
    t0 = time.monotonic()
    with pytest.raises(GPUUnavailableError) as e:
        job.run(cfg)
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "distil (use_gpu: true): asked for 2 GPU(s) but the Ray cluster has 0" in msg
    assert "gpu_wait_s" in msg and "--no-use-gpu" in msg
    assert not (tmp_path / "runs").exists() and not (tmp_path / "student").exists()


def test_finetune_use_gpu_fails_fast_on_a_cpu_cluster(ray_local, tiny_base_dir, tmp_path):
    import distil.jobs.finetune as job
    from distil.sentiment.config import FinetuneConfig

    train = tmp_path / "reviews.jsonl"
    train.write_text('{"id": "a", "text": "great", "label": 1}\n')
    cfg = FinetuneConfig(
        model=str(tiny_base_dir),
        train=str(train),
        output=str(tmp_path / "clf"),
        num_workers=2,
        use_gpu=True,
        gpu_wait_s=0.5,
    )
    with pytest.raises(GPUUnavailableError) as e:
        job.run(cfg)
    assert "finetune (use_gpu: true): asked for 2 GPU(s) but the Ray cluster has 0" in str(e.value)
    assert not (tmp_path / "clf").exists()


def _logits_cfg(tmp_path, device: str) -> LogitsConfig:
    return LogitsConfig(
        input=str(tmp_path / "prepared"),
        cache_root=str(tmp_path / "cache"),
        teacher="packaged:x",
        num_actors=2,
        device=device,
        gpu_wait_s=0,
    )


def test_logits_device_cuda_refuses_a_cpu_cluster(ray_local, tmp_path):
    from distil.jobs.teacher_logits import actor_resources

    with pytest.raises(
        GPUUnavailableError,
        match=r"asked for 2 GPU\(s\), needs at least 1, but the Ray cluster has 0",
    ):
        actor_resources(_logits_cfg(tmp_path, "cuda"))


def test_logits_device_auto_says_it_chose_cpu(ray_local, tmp_path, caplog):
    from distil.jobs.teacher_logits import actor_resources

    with caplog.at_level(logging.WARNING, logger="distil.logits"):
        res = actor_resources(_logits_cfg(tmp_path, "auto"))
    assert res["device"] == "cpu" and res["size"] == 2 and "num_gpus" not in res
    assert "device auto chose CPU" in caplog.text and "device: cuda" in caplog.text
