"""Job fixtures: stage 1's generated corpora (tests/data/prepare_corpus.py) and, for stage 3,
prepared shards + a real teacher cache on S3 (SeaweedFS fixture)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).parents[1] / "train" / "stage3_data.py"
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)


@pytest.fixture(scope="session")
def s3_cache(s3_server, tiny_teacher_dir, real_tokenizer_dir) -> str:
    """A committed top-k teacher cache on s3:// built from a prepared dataset on s3://."""
    root = f"s3://{s3_server.bucket}/stage3"
    prepared = stage3_data.write_prepared(f"{root}/prepared", real_tokenizer_dir)
    return stage3_data.build_cache(prepared, f"{root}/cache", tiny_teacher_dir)
