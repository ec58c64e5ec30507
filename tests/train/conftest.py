"""Stage-3 fixtures: prepared shards and real teacher caches (see stage3_data.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).with_name("stage3_data.py")
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, real_tokenizer_dir) -> str:
    return stage3_data.write_prepared(str(tmp_path_factory.mktemp("prepared")), real_tokenizer_dir)


@pytest.fixture(scope="session")
def topk_cache(prepared_dir, tmp_path_factory, tiny_teacher_dir) -> str:
    root = str(tmp_path_factory.mktemp("caches"))
    return stage3_data.build_cache(prepared_dir, root, tiny_teacher_dir, sparsity="topk", k=8)


@pytest.fixture(scope="session")
def sampled_cache(prepared_dir, tmp_path_factory, tiny_teacher_dir) -> str:
    root = str(tmp_path_factory.mktemp("caches"))
    return stage3_data.build_cache(prepared_dir, root, tiny_teacher_dir, sparsity="sampled", k=16)


@pytest.fixture(scope="session")
def packed_prepared_dir(tmp_path_factory, real_tokenizer_dir) -> str:
    """Every sequence fills seq_len (packed text): the step then runs with no attention mask."""
    url = str(tmp_path_factory.mktemp("packed"))
    return stage3_data.write_prepared(url, real_tokenizer_dir, packed=True)


@pytest.fixture(scope="session")
def packed_cache(packed_prepared_dir, tmp_path_factory, tiny_teacher_dir) -> str:
    root = str(tmp_path_factory.mktemp("packed-caches"))
    return stage3_data.build_cache(packed_prepared_dir, root, tiny_teacher_dir, k=8)
