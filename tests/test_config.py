import argparse
import os

import pytest
from pydantic import Field, ValidationError

from distil.config import (
    ConfigError,
    StageConfig,
    add_config_args,
    config_from_args,
    load_config,
    packaged_configs,
    resolve_config_path,
)


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
    with pytest.raises(ConfigError, match="seq_lenn"):
        config_from_args(ToyConfig, p.parse_args(["--config", str(y)]))


def test_help_lists_every_option(capsys):
    p = argparse.ArgumentParser()
    add_config_args(p, ToyConfig)
    with pytest.raises(SystemExit):
        p.parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("--seq-len", "--cross-document", "--output", "tokens per sequence"):
        assert flag in out


STAGE_CLASSES = {
    "adapt": "distil.teacher.config:AdaptConfig",
    "logits": "distil.teacher.config:LogitsConfig",
    "distil": "distil.train.config:DistilConfig",
    "finetune": "distil.sentiment.config:FinetuneConfig",
    "score": "distil.score.config:ScoreConfig",
}


def test_every_packaged_config_validates_against_its_stage():
    """The configs ship inside the package (a wheel has no configs/ folder); every key of each
    must be a field of its stage (required fields such as --input may come from flags)."""
    import importlib

    import yaml

    names = packaged_configs()
    assert {"distil/cluster", "logits/cluster", "demo/tiny", "prepare/default"} <= set(names)
    for name in names:
        stage = name.split("/")[0]
        path = resolve_config_path(name)
        assert path.is_file() and path.parent.parent.name == "configs", path
        if stage in STAGE_CLASSES:
            module, cls = STAGE_CLASSES[stage].split(":")
            fields = getattr(importlib.import_module(module), cls).model_fields
            unknown = set(yaml.safe_load(path.read_text())) - set(fields)
            assert not unknown, f"{name}: {sorted(unknown)} are not {cls} fields"


def test_a_users_file_wins_over_a_packaged_name(tmp_path, monkeypatch):
    (tmp_path / "distil").mkdir()
    (tmp_path / "distil" / "tiny").write_text("seq_len: 300\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(ToyConfig, "distil/tiny").seq_len == 300
    with pytest.raises(ConfigError, match="packaged: .*distil/tiny"):
        resolve_config_path("distil/nope")


def test_distil_root_is_expanded_everywhere_in_a_config(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_ROOT", "s3://acme-ml/distil/")  # the trailing / is dropped
    y = tmp_path / "c.yaml"
    y.write_text("output: ${DISTIL_ROOT}/prepared\n")
    assert load_config(ToyConfig, y).output == "s3://acme-ml/distil/prepared"
    assert load_config(ToyConfig, y, output="/local/out").output == "/local/out"


def test_distil_root_unset_names_the_variable_and_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTIL_ROOT", raising=False)
    y = tmp_path / "c.yaml"
    y.write_text("output: ${DISTIL_ROOT}/prepared\n")
    with pytest.raises(ConfigError, match=r"output: .*DISTIL_ROOT is not set.*--output"):
        load_config(ToyConfig, y)
    assert load_config(ToyConfig, y, output="s3://b/x").output == "s3://b/x"  # a flag wins


@pytest.mark.parametrize(
    "name",
    ["prepare/cluster", "logits/cluster", "distil/cluster", "finetune/cluster", "score/scheduled"],
)
def test_cluster_configs_live_under_distil_root(name, monkeypatch, capsys):
    """Every object-storage path of the cluster configs comes from DISTIL_ROOT; unset, the CLI
    stops with the variable's name before any work."""
    import importlib

    import yaml

    from distil.cli import STAGES, main

    stage = name.split("/")[0]
    module, cls = STAGES[stage][1].split(":")
    monkeypatch.setenv("DISTIL_ROOT", "s3://acme-ml/team")
    # finetune/cluster names no reviews: the user's come as --train (its RayJob passes one)
    user_data = {"train": "${DISTIL_ROOT}/reviews/labelled/"} if stage == "finetune" else {}
    cfg = load_config(getattr(importlib.import_module(module), cls), name, **user_data)
    urls = [v for v in yaml.safe_load(cfg.model_dump_json()).values() if isinstance(v, str)]
    urls += [u for u in getattr(cfg, "input", None) or [] if isinstance(u, str)]
    s3 = [u for u in urls if u.startswith("s3://")]
    assert s3 and all(u.startswith("s3://acme-ml/team/") for u in s3), s3
    monkeypatch.delenv("DISTIL_ROOT")
    assert main([stage, "--config", name]) == 2
    assert "DISTIL_ROOT is not set" in capsys.readouterr().err


def _stage_config_classes() -> list[type[StageConfig]]:
    import distil.data.config
    import distil.score.config
    import distil.sentiment.config
    import distil.teacher.config
    import distil.train.config  # noqa: F401  (registers the subclasses)

    todo, out = list(StageConfig.__subclasses__()), []
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo += cls.__subclasses__()
    return out


class NeedsData(StageConfig):
    train: str = Field(..., description="your labelled reviews")
    output: str = Field("out", description="where")


@pytest.mark.parametrize("yaml_text", ["output: x\n", "train: null\noutput: x\n"])
def test_an_unset_required_field_is_named_with_its_flag_and_key(tmp_path, yaml_text):
    """Absent or ``null`` in the YAML, a required field is one line: the field, the flag and the
    key to set, and what it wants; not pydantic's ``Field required``."""
    y = tmp_path / "c.yaml"
    y.write_text(yaml_text)
    p = argparse.ArgumentParser()
    add_config_args(p, NeedsData)
    with pytest.raises(ConfigError) as e:
        config_from_args(NeedsData, p.parse_args(["--config", str(y)]))
    assert str(e.value) == (
        "NeedsData: `train` is not set: pass --train or set `train:` in the config "
        "(your labelled reviews)"
    )
    cfg = config_from_args(NeedsData, p.parse_args(["--config", str(y), "--train", "r.jsonl"]))
    assert cfg.train == "r.jsonl"


def test_other_validation_errors_keep_pydantic_s_message(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train: [1, 2]\n")
    p = argparse.ArgumentParser()
    add_config_args(p, NeedsData)
    with pytest.raises(ConfigError, match="valid string"):
        config_from_args(NeedsData, p.parse_args(["--config", str(y)]))


def test_path_fields_name_real_string_fields():
    """A typo in PATH_FIELDS would silently leave a relative path relative on the workers."""
    declared = [c for c in _stage_config_classes() if c.PATH_FIELDS]
    names = {c.__name__ for c in declared}
    assert {"PrepareConfig", "LogitsConfig", "DistilConfig", "FinetuneConfig"} <= names
    for cls in declared:
        for name in cls.PATH_FIELDS:
            assert name in cls.model_fields, f"{cls.__name__}.PATH_FIELDS: no field {name!r}"
            assert "str" in str(cls.model_fields[name].annotation), (cls.__name__, name)


def test_absolute_paths_anchors_local_relative_paths_only(tmp_path, monkeypatch):
    from distil.config import absolute_paths
    from distil.data.config import PrepareConfig
    from distil.train.config import DistilConfig

    monkeypatch.chdir(tmp_path)
    cfg = DistilConfig(
        cache=".distil/cache/latest.json",
        teacher="packaged:all-minilm-l6-v2",
        output="s3://bucket/student",
        storage_path="runs",
        run_name="keep-me",
    )
    out = absolute_paths(cfg)
    assert out.cache == str(tmp_path / ".distil/cache/latest.json")
    assert out.storage_path == str(tmp_path / "runs")
    assert out.teacher == "packaged:all-minilm-l6-v2"  # a packaged ref, not a path
    assert out.output == "s3://bucket/student"  # a URL
    assert out.data is None and out.run_name == "keep-me"  # unset / not a path field
    assert cfg.cache == ".distil/cache/latest.json"  # the input config is not changed
    assert absolute_paths(out) == out  # idempotent

    prep = PrepareConfig(input=["corpus/a.txt", "s3://b/c/*.jsonl", "/abs/d"], output="file:///x")
    fixed = absolute_paths(prep)
    assert fixed.input == [str(tmp_path / "corpus/a.txt"), "s3://b/c/*.jsonl", "/abs/d"]
    assert fixed.output == "file:///x"
    home = absolute_paths(PrepareConfig(input="~/corpus", output="o"))
    assert home.input == [os.path.expanduser("~/corpus")] and home.output == str(tmp_path / "o")

    from distil.score.config import ScoreConfig

    registry = ScoreConfig(input="r.jsonl", model="models:/reviews@champion", output="o")
    assert absolute_paths(registry).model == "models:/reviews@champion"  # a registry URI


def test_shipped_logits_configs_serve_the_shipped_distil_temperatures():
    """Each shipped cache config serves its distil config's KD temperature (and a sampled one
    draws at it), so the recipe's temperature check never stops a shipped pipeline."""
    import yaml

    from distil.teacher.config import LogitsConfig
    from distil.train.config import DistilConfig

    def field(cfg: dict, cls, name: str):
        return cfg.get(name, cls.model_fields[name].default)

    pairs = [
        (
            yaml.safe_load(resolve_config_path(f"logits/{n}").read_text()),
            yaml.safe_load(resolve_config_path(f"distil/{n}").read_text()),
        )
        for n in ("default", "cluster")
    ]
    for scale in ("tiny", "sample", "full"):
        demo = yaml.safe_load(resolve_config_path(f"demo/{scale}").read_text())
        pairs.append((demo["logits"], demo["distil"]))
    for logits, distil in pairs:
        t = field(distil, DistilConfig, "temperature")
        assert t in field(logits, LogitsConfig, "kd_temperatures"), (logits, distil)
        if field(logits, LogitsConfig, "sparsity") == "sampled":
            assert field(logits, LogitsConfig, "sample_temperature") == t
    assert LogitsConfig.model_fields["sample_temperature"].default == (
        DistilConfig.model_fields["temperature"].default
    )


def test_a_renamed_option_keeps_working_under_its_old_name_with_a_warning(tmp_path, caplog):
    from distil.sentiment.config import FinetuneConfig

    y = tmp_path / "ft.yaml"
    y.write_text(
        "output: out\ntrain: t.jsonl\ngrad_clip: 0.5\n"
    )  # a config written before the rename
    p = argparse.ArgumentParser()
    add_config_args(p, FinetuneConfig)
    with caplog.at_level("WARNING", logger="distil.config"):
        cfg = config_from_args(FinetuneConfig, p.parse_args(["--config", str(y)]))
    assert cfg.max_grad_norm == 0.5
    assert "'grad_clip' is deprecated" in caplog.text and "--max-grad-norm" in caplog.text
    # the old flag too; a new-name flag overrides an old-name key of the file
    cfg = config_from_args(
        FinetuneConfig, p.parse_args(["--output", "o", "--train", "t.jsonl", "--grad-clip", "2"])
    )
    assert cfg.max_grad_norm == 2.0
    cfg = config_from_args(
        FinetuneConfig, p.parse_args(["--config", str(y), "--max-grad-norm", "3"])
    )
    assert cfg.max_grad_norm == 3.0
    with pytest.raises(ValueError, match="grad_clip is the old name of max_grad_norm"):
        FinetuneConfig(output="o", train="t.jsonl", grad_clip=1.0, max_grad_norm=2.0)
    assert "--grad-clip" not in p.format_help()  # old names work but are not advertised
    assert "--max-grad-norm" in p.format_help()


def test_ray_train_options_are_one_model_for_both_ray_train_stages():
    from distil.config import RayTrainOptions
    from distil.sentiment.config import FinetuneConfig
    from distil.train.config import DistilConfig

    for cls in (DistilConfig, FinetuneConfig):
        assert issubclass(cls, RayTrainOptions)
        assert set(RayTrainOptions.model_fields) <= set(cls.model_fields)
    # the stricter checks hold for both (they had drifted: the fine-tune's took 0 CPUs)
    with pytest.raises(ValidationError, match="cpus_per_worker"):
        FinetuneConfig(output="o", train="t.jsonl", cpus_per_worker=0)
    with pytest.raises(ValidationError, match="num_workers"):
        FinetuneConfig(output="o", train="t.jsonl", num_workers=0)
    assert (
        FinetuneConfig(output="o", train="t.jsonl", placement_strategy="SPREAD").placement_strategy
        == "SPREAD"
    )
    assert DistilConfig(cache="c", output="o", storage_path="s").num_workers == 2
    assert FinetuneConfig(output="o", train="t.jsonl").num_workers == 1
    p = argparse.ArgumentParser()
    add_config_args(p, FinetuneConfig)
    ray_help = p.format_help().split("Ray Train options (override --config):")[1]
    assert "--placement-strategy" in ray_help and "--cpus-per-worker" in ray_help
    assert "--max-grad-norm" not in ray_help  # a training option, in the stage's own group
