"""distil.chain.config: the pipeline's one config refuses, before any stage runs, what the chain
could not run (a missing data field, a key a stage lacks or the chain sets, a bad value, an
unknown step), and a section naming a stage config takes its settings less the linked ones."""

from __future__ import annotations

import re

import pytest

from distil.chain.config import STEPS, PipelineConfig
from distil.cli import main

DATA = {"root": "s3://b/p", "corpus": ["s3://b/corpus/"], "train": "s3://b/reviews.jsonl"}


def test_the_cluster_config_stops_naming_the_data_it_needs(monkeypatch, capsys):
    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    assert main(["pipeline", "run", "--config", "pipeline/cluster"]) == 2
    err = capsys.readouterr().err
    assert "--corpus" in err and "--train" in err, err


def test_a_section_naming_a_stage_config_takes_it_less_the_linked_keys(monkeypatch):
    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    cfg = PipelineConfig(**DATA, distil={"config": "distil/cluster", "max_steps": 7})
    distil = cfg.stage("distil")
    assert distil["max_steps"] == 7  # the section's own key wins
    assert distil["num_workers"] == 8  # distil/cluster's
    assert not {"cache", "teacher", "output"} & set(distil)  # the chain links these
    assert cfg.stage("prepare") == {}


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ({"distil": {"max_step": 5}}, "distil.max_step: DistilConfig has no such field (did you "
         "mean max_steps?)"),
        ({"prepare": {"output": "s3://elsewhere"}}, "prepare.output: set by the pipeline"),
        ({"distil": {"max_steps": 0}}, "distil.max_steps: Input should be greater than or equal"),
        ({"gate": {"min_teacher_share": -1}}, "gate.min_teacher_share: Input should be greater"),
        ({"from_stage": "distill"}, "no step 'distill' (did you mean distil?)"),
        ({"from_stage": "distil", "only": "gate"}, "give one"),
    ],
)  # fmt: skip
def test_what_the_chain_could_not_run_is_refused_up_front(section, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        PipelineConfig(**DATA, **section)


def test_from_and_only_select_the_steps_that_may_run():
    assert all(PipelineConfig(**DATA).selected(s) for s in STEPS)
    after = PipelineConfig(**DATA, from_stage="finetune_teacher")
    assert [s for s in STEPS if after.selected(s)] == [
        "finetune_teacher", "pool", "finetune_student", "gate",
    ]  # fmt: skip
    only = PipelineConfig(**DATA, only="gate")
    assert [s for s in STEPS if only.selected(s)] == ["gate"]


def test_the_from_flag_is_spelled_as_operators_type_it():
    from distil.cli import parse_args

    args = parse_args(
        ["pipeline", "run", *_flags(DATA), "--from", "distil", "--distil", "{max_steps: 5}"]
    )
    assert args.cfg.from_stage == "distil"
    assert args.cfg.distil == {"max_steps": 5}  # a section as a YAML mapping on the command line


def _flags(data: dict) -> list[str]:
    return ["--root", data["root"], "--corpus", str(data["corpus"]), "--train", data["train"]]
