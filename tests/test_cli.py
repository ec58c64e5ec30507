"""``distil <stage>`` argument parsing: Beam options pass through ``score`` unchanged, typos stop
the command with the closest names, and the README's scoring commands parse as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from distil.cli import build_parser, main, parse_args
from distil.config import ConfigError, option_strings
from distil.score.config import ScoreConfig

REPO = Path(__file__).resolve().parents[1]
BASE = ["score", "--input", "s3://b/in/", "--model", "s3://b/m/latest.json", "--output", "s3://b/o"]
SCORE_COMMANDS = ("distil score", "python pipelines/score_reviews.py")


def readme_score_commands() -> list[list[str]]:
    """Every ``distil score`` / ``python pipelines/score_reviews.py`` command in a fenced block
    of the README or a page under docs/, continuation lines joined and trailing comments
    dropped."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(SCORE_COMMANDS):
                commands.append(shlex.split(line, comments=True))
    return commands


def expected_beam_args(argv: list[str], parser) -> list[str]:
    """The tokens of ``argv`` that are not a stage option or its value, worked out from the
    stage parser's own option table (not from argparse's leftovers)."""
    takes_value = {
        o: a.nargs != 0 for a in parser._actions for o in a.option_strings if o.startswith("--")
    }
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in takes_value:
            i += 2 if takes_value[name] and "=" not in argv[i] else 1
        else:
            out.append(argv[i])
            i += 1
    return out


def _stage_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["score"]


def test_readme_scoring_commands_parse_and_keep_beam_options_unchanged(monkeypatch):
    from apache_beam.options.pipeline_options import PipelineOptions

    from distil.pipelines import score_reviews

    # the scheduled config names its URLs under ${DISTIL_ROOT}, as the README says to export
    monkeypatch.setenv("DISTIL_ROOT", "s3://acme-ml/distil")

    commands = readme_score_commands()
    kinds = {c[0] for c in commands}
    assert kinds == {"distil", "python"}, commands
    runners = set()
    stage = _stage_parser()
    for cmd in commands:
        argv = cmd[2:]
        cfg = (
            parse_args(["score", *argv]).cfg
            if cmd[0] == "distil"
            else score_reviews.parse_args(argv)
        )
        assert isinstance(cfg, ScoreConfig)
        passed = expected_beam_args(argv, stage)
        assert cfg.beam_args == passed, shlex.join(cmd)
        runners.add(cfg.runner)
        options = PipelineOptions(score_reviews._pipeline_args(cfg))
        assert options.get_all_options()["runner"] == cfg.runner
    # the runner examples the README promises are all there (and each carries its own options)
    assert {"FlinkRunner", "SparkRunner", "DataflowRunner", "FnApiRunner"} <= runners


def test_flink_options_pass_through_in_order():
    args = parse_args(
        [
            *BASE,
            "--runner",
            "FlinkRunner",
            "--flink_master",
            "jm:8081",
            "--batch-size",
            "64",
            "--environment_type=LOOPBACK",
        ]
    )
    assert args.cfg.runner == "FlinkRunner" and args.cfg.batch_size == 64
    assert args.cfg.beam_args == ["--flink_master", "jm:8081", "--environment_type=LOOPBACK"]


@pytest.mark.parametrize(
    "typo, hint",
    [
        (["--modle", "x"], "did you mean --model?"),
        (["--run_id", "x"], "did you mean --run-id?"),
        (["--flink_mastr=jm:8081"], "did you mean --flink_master?"),
    ],
)
def test_a_typo_is_an_error_not_a_dropped_beam_option(typo, hint):
    with pytest.raises(ConfigError, match="unrecognized arguments") as e:
        parse_args([*BASE, *typo])
    assert hint in str(e.value) and "--beam-args" in str(e.value)


def test_a_bad_beam_value_and_a_stray_word_are_errors():
    with pytest.raises(ConfigError, match="invalid choice"):
        parse_args([*BASE, "--flink_version=0.9"])
    with pytest.raises(ConfigError, match="unrecognized arguments: stray"):
        parse_args([*BASE, "--flink_master", "jm:8081", "stray"])


def test_explicit_beam_args_are_passed_unchecked():
    """A Java-only job-server option has no Python declaration: --beam-args is the way in."""
    args = parse_args([*BASE, "--beam-args", "[--checkpointing_interval=60000]"])
    assert args.cfg.beam_args == ["--checkpointing_interval=60000"]


def test_abbreviations_are_refused():
    with pytest.raises(ConfigError, match="--mod: did you mean --model"):
        parse_args(["score", "--input", "a", "--mod", "m", "--output", "o"])


def test_ray_stages_refuse_unknown_flags_with_suggestions(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["prepare", "--input", "a", "--output", "o", "--num_workers", "4"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --num_workers 4" in err
    assert "did you mean --num-workers?" in err


def test_job_modules_refuse_unknown_flags_too(capsys):
    from distil.config import parse_job_args
    from distil.data.config import PrepareConfig

    with pytest.raises(SystemExit):
        parse_job_args(PrepareConfig, "prepare", ["--input", "a", "--output", "o", "--inptu", "b"])
    assert "did you mean --input?" in capsys.readouterr().err


def test_main_reports_a_typo_and_exits_2(capsys):
    assert main([*BASE, "--modle", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distil score: error: unrecognized arguments: --modle x")


def test_score_script_refuses_a_typo(capsys):
    from distil.pipelines.score_reviews import parse_args as script_parse_args

    with pytest.raises(SystemExit):
        script_parse_args([*BASE[1:], "--modle", "x"])
    assert "did you mean --model?" in capsys.readouterr().err


def test_stage_options_are_known_to_the_suggestions():
    assert "--run-id" in option_strings(_stage_parser())
