"""Beam pipeline options given on the command line after ``distil score``'s own flags.

Beam (2.77) does not refuse an option it does not know: ``PipelineOptions`` logs "Discarding
unparseable args" and the pipeline runs without it (only Dataflow, Prism and Flink/Spark uber-jar
submission forward unknown options). A mistyped stage flag (``--modle``, ``--run_id``) or runner
option (``--flink_mastr``) would be lost with a log line nobody reads, so the flags passed through
are checked against the options Beam declares, and anything else is an error naming the closest
matches. A runner option that only the Java job server declares goes in ``--beam-args`` (a YAML
list), which is passed on unchecked: that list is written on purpose, not a leftover.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Sequence

from distil.config import C, ConfigError, unknown_flags_message


def _beam_parser() -> argparse.ArgumentParser:
    """The parser Beam itself builds from every ``PipelineOptions`` subclass (public hook:
    ``add_extra_args_fn`` is handed that parser before it parses)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    got: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=got.append)
    parser = got[0]
    parser.exit_on_error = False  # a bad value raises ArgumentError instead of printing usage
    return parser


def beam_option_names() -> list[str]:
    """Every ``--option`` the installed Beam declares (runner, portable, setup, Dataflow, …)."""
    parser = _beam_parser()
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


def check_pass_through(flags: Sequence[str], stage_flags: Iterable[str]) -> list[str]:
    """``flags`` unchanged when Beam knows every one of them (and their values parse); otherwise a
    ``ConfigError`` that lists the unknown ones with the closest stage or Beam option names."""
    flags = list(flags)
    if not flags:
        return flags
    parser = _beam_parser()
    try:
        _, unknown = parser.parse_known_args(flags)
    except argparse.ArgumentError as e:
        raise ConfigError(f"Beam pipeline option: {e}") from e
    if unknown:
        known = [*stage_flags, *beam_option_names()]
        raise ConfigError(
            unknown_flags_message(unknown, known)
            + ". Flags after the stage's own options are passed to Beam as pipeline options, "
            "and Beam does not declare these (it would drop them with a warning). For a runner "
            "option only the Java job server knows, pass it on purpose: "
            "--beam-args '[\"--name=value\"]'."
        )
    return flags


def with_beam_args(
    make_cfg: Callable[[], C], passed: Sequence[str], stage_flags: Iterable[str]
) -> C:
    """The stage config (``make_cfg()``, a config with a ``beam_args`` field) with the flags
    passed through after the stage's own appended to ``beam_args`` unchanged. The flags are
    checked first: a typo explains a missing option better than the validation error does."""
    passed = check_pass_through(passed, stage_flags)
    cfg = make_cfg()
    return cfg.model_copy(update={"beam_args": [*cfg.beam_args, *passed]})
