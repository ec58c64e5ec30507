import argparse

import pytest
from pydantic import Field, ValidationError

from distil.config import StageConfig, add_config_args, config_from_args


class ToyConfig(StageConfig):
    seq_len: int = Field(128, description="tokens per sequence")
    cross_document: bool = Field(True, description="pack across documents")
    output: str = Field("out", description="where")


def test_yaml_then_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seq_len: 256\noutput: s3://b/x\n")
    p = argparse.ArgumentParser()
    add_config_args(p, ToyConfig)
    cfg = config_from_args(ToyConfig, p.parse_args(["--config", str(y), "--no-cross-document"]))
    assert cfg.seq_len == 256 and cfg.cross_document is False and cfg.output == "s3://b/x"
    cfg = config_from_args(ToyConfig, p.parse_args(["--config", str(y), "--seq-len", "512"]))
    assert cfg.seq_len == 512


def test_unknown_yaml_key_is_an_error(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("seq_lenn: 3\n")
    p = argparse.ArgumentParser()
    add_config_args(p, ToyConfig)
    with pytest.raises(ValidationError):
        config_from_args(ToyConfig, p.parse_args(["--config", str(y)]))


def test_help_lists_every_option(capsys):
    p = argparse.ArgumentParser()
    add_config_args(p, ToyConfig)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--seq-len", "--cross-document", "--output", "tokens per sequence"):
        assert flag in out
