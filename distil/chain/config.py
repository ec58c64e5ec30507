"""``PipelineConfig``: the options of ``distil pipeline run``: the user's data, the teacher, where
everything goes, and each stage's own settings (a section per stage, with that stage's field
names: ``distil <stage> --help`` lists them).

The pipeline fills in what links the stages (each one's input is the one before's output), so a
section never names inputs or outputs; a key a stage does not have, or a value it refuses, stops
the command before any stage runs.
"""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from distil.config import StageConfig
from distil.packaged import PACKAGED_TEACHER

# The chain, in order. Each name is a step (``--from`` / ``--only`` take these); ``adapt_teacher``
# and ``pool`` run only when the config asks for them.
STEPS = (
    "prepare",
    "adapt_teacher",
    "logits",
    "distil",
    "finetune_teacher",
    "pool",
    "finetune_student",
    "gate",
)

# section -> the stage config class its keys belong to
SECTIONS: dict[str, str] = {
    "prepare": "distil.data.config:PrepareConfig",
    "adapt": "distil.teacher.config:AdaptConfig",
    "logits": "distil.teacher.config:LogitsConfig",
    "distil": "distil.train.config:DistilConfig",
    "finetune": "distil.sentiment.config:FinetuneConfig",
    "finetune_teacher": "distil.sentiment.config:FinetuneConfig",
    "finetune_student": "distil.sentiment.config:FinetuneConfig",
    "pool": "distil.sentiment.config:PoolConfig",
    "gate": "distil.quality.gate:PromoteConfig",
}

FINETUNE_LINKED = (
    "model", "train", "exclude", "run_name", "output", "teacher_cache", "storage_path",
)  # fmt: skip

# what the pipeline itself sets in a section (a section that sets them is refused: it would
# silently be overwritten, or cut the chain)
LINKED = {
    "prepare": ("input", "output"),
    "adapt": ("input", "output", "teacher"),
    "logits": ("input", "teacher", "cache_root"),
    "distil": ("cache", "teacher", "storage_path", "run_name", "output"),
    "finetune": FINETUNE_LINKED,
    "finetune_teacher": tuple(k for k in FINETUNE_LINKED if k != "model"),  # may be another
    "finetune_student": FINETUNE_LINKED,
    "pool": ("train", "exclude", "teacher", "output"),
    "gate": ("student", "teacher", "output", "pointer"),
}


def _class(ref: str) -> type[StageConfig]:
    import importlib

    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def section(what: str) -> Any:
    """A stage's section of the config: a mapping of that stage's own fields."""
    return Field(default_factory=dict, description=f"settings of {what}")


class PipelineConfig(StageConfig):
    """The whole chain: prepare -> (adapt) -> logits -> distil -> fine-tune teacher and student
    -> gate and publish."""

    PATH_FIELDS = ("root", "corpus", "train", "exclude", "cache_root")

    root: str = Field(
        ..., description="URL under which every stage's output goes (object storage on a cluster)"
    )
    corpus: list[str] = Field(
        ..., description="corpus files or folders (URLs) prepare reads: the MLM distillation data"
    )
    train: str = Field(
        ..., description="labelled reviews (file or folder URL) both classifiers fine-tune on"
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="review files no classifier may train on in any form (evaluation sets): "
        "rows whose text is in one are dropped from training",
    )
    teacher: str = Field(
        PACKAGED_TEACHER, description="the teacher: a model dir/URL or packaged:NAME"
    )
    # teacher-logit caches are keyed by their content: chains that share this root share them
    cache_root: str | None = Field(None, description="teacher-logit caches; default ROOT/cache")
    adapt_teacher: bool | None = Field(
        None, description="adapt the teacher first: true always, false never, unset if it lacks "
        "a trained MLM head",
    )  # fmt: skip
    # empty (or unset, with no $RAY_ADDRESS): each stage a local process with an embedded Ray
    ray_address: str | None = Field(
        None, description="Ray job API for the stages (default $RAY_ADDRESS; '': local processes)"
    )
    from_stage: str | None = Field(
        None,
        description="start at this step: the steps before it must be done already (they are "
        f"reused, never run); one of {', '.join(STEPS)}",
        json_schema_extra={"flag": "--from"},
    )
    only: str | None = Field(
        None, description="run this step alone: the steps before it must be done already"
    )
    # a section per stage: that stage's settings under its own field names (distil <stage> --help)
    prepare: dict[str, Any] = section("prepare")
    adapt: dict[str, Any] = section("teacher adaptation (distil teacher adapt)")
    logits: dict[str, Any] = section("teacher logits")
    distil: dict[str, Any] = section("distillation")
    finetune: dict[str, Any] = section("both fine-tunes (distil finetune)")
    finetune_teacher: dict[str, Any] = section(
        "the teacher classifier, over finetune's (model: another teacher for the task; default "
        "the MLM teacher)"
    )
    finetune_student: dict[str, Any] = section("the student classifier, over finetune's")
    pool: dict[str, Any] | None = Field(
        None,
        description="task distillation (distil pool) between the fine-tunes; unset: the student "
        "learns from the teacher's logits on the training rows alone",
    )
    gate: dict[str, Any] = section("the quality gate (distil promote: min_teacher_share, ...)")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        for name in ("from_stage", "only"):
            value = getattr(self, name)
            if value is not None and value not in STEPS:
                close = difflib.get_close_matches(value, STEPS, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise ValueError(f"{name}: no step {value!r}{hint}; steps: {', '.join(STEPS)}")
        if self.from_stage and self.only:
            raise ValueError("from_stage and only: give one")
        for section, ref in SECTIONS.items():
            values = getattr(self, section)
            if values:
                check_section(section, values, _class(ref))
        return self

    def stage(self, section: str) -> dict[str, Any]:
        """A section's settings: the stage config it names (``config: distil/cluster``, a packaged
        name or a YAML file) less what the pipeline links, under the section's own keys."""
        values = dict(getattr(self, section) or {})
        ref = values.pop("config", None)
        if ref is None:
            return values
        return {**stage_file(section, ref), **values}

    def selected(self, step: str) -> bool:
        """Whether ``--from`` / ``--only`` let ``step`` run (else it must be reused)."""
        if self.only:
            return step == self.only
        if self.from_stage:
            return STEPS.index(step) >= STEPS.index(self.from_stage)
        return True


def stage_file(section: str, ref: str) -> dict[str, Any]:
    """The stage config file ``ref`` names (``${DISTIL_ROOT}`` expanded, old names renamed), less
    the keys the pipeline links (a cluster config's input/output are the chain's to set)."""
    from distil.config import ConfigError, expand_root, resolve_config_path

    cls = _class(SECTIONS[section])
    path = resolve_config_path(ref)
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{section}.config {ref}: not a mapping")
    values = cls.new_names(expand_root(loaded))
    return {k: v for k, v in values.items() if k not in LINKED.get(section, ())}


def check_section(section: str, values: dict[str, Any], cls: type[StageConfig]) -> None:
    """Refuse, before any stage runs, a key ``cls`` lacks, a key the pipeline sets itself, and a
    value ``cls`` would refuse (the fields the pipeline fills in are not asked for here).
    ``config`` names a stage config file whose settings the section's keys override."""
    known = set(cls.model_fields) | set(cls.RENAMED) | {"config"}
    if "config" in values:
        values = {**stage_file(section, values["config"]), **values}
        values.pop("config")
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{section}.{key}: {cls.__name__} has no such field{hint}")
        if key in LINKED.get(section, ()):
            raise ValueError(
                f"{section}.{key}: set by the pipeline (each stage reads the one before's output); "
                "name the data with the top-level root / corpus / train / exclude / teacher"
            )
    try:
        cls.model_validate(values)
    except ValidationError as e:
        wrong = [err for err in e.errors() if err["type"] != "missing"]
        if wrong:
            where = ", ".join(
                f"{section}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in wrong
            )
            raise ValueError(where) from None
