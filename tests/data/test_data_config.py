from __future__ import annotations

import pytest
from pydantic import ValidationError

from distil.config import load_config
from distil.data.config import PrepareConfig


def test_yaml_configs_load_and_flags_override():
    cfg = load_config(PrepareConfig, "prepare/default", seq_len=512)
    assert cfg.seq_len == 512 and cfg.input == [".distil/samples/corpus"]


def test_cli_flags(repo_root):
    from distil.cli import build_parser
    from distil.config import config_from_args

    args = build_parser().parse_args(
        ["prepare", "--input", "s3://b/corpus", "--output", "o", "--no-cross-document"]
    )
    cfg = config_from_args(PrepareConfig, args)
    assert cfg.input == ["s3://b/corpus"] and cfg.cross_document is False
    args = build_parser().parse_args(["prepare", "--input", "[a, b]", "--output", "o"])
    assert config_from_args(PrepareConfig, args).input == ["a", "b"]
    # globs and numbers-as-names are plain strings, not YAML
    args = build_parser().parse_args(["prepare", "--input", "*.jsonl", "--output", "o"])
    assert config_from_args(PrepareConfig, args).input == ["*.jsonl"]


def test_bad_values_are_rejected():
    with pytest.raises(ValidationError):
        PrepareConfig(input="x", output="y", seq_len=2)
    with pytest.raises(ValidationError):
        PrepareConfig(input=[], output="y")
    with pytest.raises(ValidationError):
        PrepareConfig(input="x", output="y", unknown=1)


def test_cli_registry_names_resolve():
    from distil.cli import STAGES, SUBGROUPS, _load

    for ref in (*STAGES["prepare"][1:], *SUBGROUPS["data"]["samples"][1:]):
        assert callable(_load(ref))
