"""Typed stage configs: pydantic models, loaded from YAML and overridden by flags.

The YAML files that ship with the package live in ``distil/configs/<stage>/<name>.yaml`` and are
named ``<stage>/<name>`` on the command line (``--config distil/cluster``); any other value of
``--config`` is a path to the user's own file. Each stage declares one ``StageConfig`` subclass.
``add_config_args`` turns its fields into ``--flag`` options (with the field description as help
text), so ``distil <stage> --help`` documents every option without a second list to keep in sync.

Object-storage locations are written ``${DISTIL_ROOT}/prepared``: the bucket/prefix is set once,
in the ``DISTIL_ROOT`` environment variable (on Kubernetes, the ``distil-storage`` ConfigMap),
not in every file.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

C = TypeVar("C", bound="StageConfig")
log = logging.getLogger("distil.config")


class RunStopped(RuntimeError):
    """A run that stopped for a reason its user must read, not a bug (a failed quality gate, a
    step ``--from`` left out that is not done): the CLI prints it without a traceback."""


class ConfigError(ValueError):
    """A config file or option the user gave that cannot be used; the message says why."""


ROOT_VAR = "DISTIL_ROOT"
ROOT_REF = "${DISTIL_ROOT}"


def expand_root(value: Any, where: str = "value") -> Any:
    """``${DISTIL_ROOT}`` in strings (also inside lists/mappings) -> the variable's value, minus
    any trailing ``/``. Unset while used is a ``ConfigError`` naming the variable and the key."""
    if isinstance(value, dict):
        return {k: expand_root(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_root(v, where) for v in value]
    if not isinstance(value, str) or ROOT_REF not in value:
        return value
    root = os.environ.get(ROOT_VAR, "").rstrip("/")
    if not root:
        raise ConfigError(
            f"{where}: {value!r} uses {ROOT_REF} but {ROOT_VAR} is not set: export "
            f"{ROOT_VAR}=s3://your-bucket/prefix (on Kubernetes: the distil-storage ConfigMap), "
            f"or pass --{where.replace('_', '-')} with a full URL"
        )
    return value.replace(ROOT_REF, root)


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    # Fields naming data the stage's workers read or write (a path, URL or ``packaged:`` ref, or a
    # list of them): ``absolute_paths`` anchors the local relative ones to the driver's cwd.
    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()
    # old name -> new name of a renamed field: the old YAML key and --flag still work for one
    # release, with a logged warning (one name per concept across the stages)
    RENAMED: ClassVar[dict[str, str]] = {}
    # fields added after fingerprints of this config existed -> the value that was built in
    # before: ``fingerprint_dump`` leaves them out at that value, so caches keep their keys
    IMPLICIT_BEFORE: ClassVar[dict[str, Any]] = {}

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return cls.new_names(data) if isinstance(data, dict) else data

    @classmethod
    def new_names(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with every old (``RENAMED``) key under its new name, each one warned about;
        an old and a new name of one field together are an error."""
        if not any(old in data for old in cls.RENAMED):
            return data
        data = dict(data)
        for old, new in cls.RENAMED.items():
            if old not in data:
                continue
            if new in data:
                raise ValueError(
                    f"{old} and {new} are both set: {old} is the old name of {new}; keep {new}"
                )
            log.warning(
                "%s: %r is deprecated and will be refused in the next release: use %r (--%s)",
                cls.__name__,
                old,
                new,
                new.replace("_", "-"),
            )
            data[new] = data.pop(old)
        return data

    def fingerprint_dump(self, **kwargs: Any) -> dict[str, Any]:
        """``model_dump(**kwargs)`` as a fingerprint hashes it: renamed fields under their old
        names and ``IMPLICIT_BEFORE`` fields left out at their old value, so a rename or a new
        option changes no fingerprint (and no cache key) of a config that means the same."""
        dump = self.model_dump(**kwargs)
        for name, before in self.IMPLICIT_BEFORE.items():
            if name in dump and dump[name] == before:
                del dump[name]
        old_name = {new: old for old, new in self.RENAMED.items()}
        return {old_name.get(k, k): v for k, v in dump.items()}


class RayTrainOptions(StageConfig):
    """How a Ray Train stage (``distil distil``, ``distil finetune``) runs its workers: the
    options of ``distil.jobs._ray_train.torch_trainer``, one definition for every such stage."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL) instead of CPU (gloo)")
    gpu_wait_s: float = Field(
        300.0,
        ge=0,
        description="use_gpu: seconds to wait for num_workers GPUs to join (an autoscaling "
        "cluster starts its GPU group at zero) before failing instead of hanging",
    )
    cpus_per_worker: float = Field(0.5, gt=0, description="logical CPUs each worker reserves")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK",
        description="how Ray places the workers on nodes: PACK fills few nodes, SPREAD puts "
        "them on different nodes where possible (STRICT_*: or fail to place)",
    )
    max_failures: int = Field(
        2, ge=0, description="worker-group restarts (from the latest checkpoint) before giving up"
    )
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept in Ray Train storage")


def is_local_path(ref: str) -> bool:
    """A plain filesystem path: not a URL (``s3://``, ``file://``), not a ``packaged:`` ref and
    not a model registry URI (``models:/NAME@ALIAS``)."""
    return "://" not in ref and not ref.startswith(("packaged:", "models:/"))


def absolute_paths(cfg: C) -> C:
    """``cfg`` with every local relative path in its ``PATH_FIELDS`` made absolute (``~``
    expanded). Stages call it on the driver before handing the config to Ray: Ray Train and Ray
    Data workers run in their own working directory, where ``.distil/cache`` means another
    folder (or nothing)."""

    def fix(ref: str) -> str:
        return os.path.abspath(os.path.expanduser(ref)) if ref and is_local_path(ref) else ref

    update: dict[str, Any] = {}
    for name in cfg.PATH_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, str):
            new: Any = fix(value)
        elif isinstance(value, list):
            new = [fix(v) if isinstance(v, str) else v for v in value]
        else:
            continue
        if new != value:
            update[name] = new
    return cfg.model_copy(update=update) if update else cfg


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_type(annotation: Any) -> tuple[Any, bool]:
    """(python type for argparse, is_optional) for a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0])[0], True
    if origin is typing.Literal:
        return str, False
    return annotation, False


def add_config_args(parser: argparse.ArgumentParser, cls: type[StageConfig]) -> None:
    parser.add_argument(
        "--config",
        type=str,
        default=None,
        help="YAML file with defaults for this stage, or a packaged config by name "
        f"({', '.join(packaged_configs()) or 'none'})",
    )
    track = parser.add_argument_group("MLflow tracking (off unless a tracking URI is set)")
    track.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking server (default: $MLFLOW_TRACKING_URI); credentials come from "
        "$MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD",
    )
    track.add_argument(
        "--run-group",
        default=None,
        help="nest this stage's MLflow run under the pipeline run NAME (default: "
        "$DISTIL_RUN_GROUP)",
    )
    group = parser.add_argument_group(f"{cls.__name__} options (override --config)")
    # the Ray Train options (inherited, so first in field order) get their own group, last
    ray = set(RayTrainOptions.model_fields) if issubclass(cls, RayTrainOptions) else set()
    ray_group = parser.add_argument_group("Ray Train options (override --config)") if ray else None
    for name, field in cls.model_fields.items():
        help_text = (field.description or "").replace("%", "%%")
        if field.is_required():
            help_text += " (required)"
        else:
            help_text += f" (default: {field.get_default(call_default_factory=True)!r})"
        _add_field_flag(ray_group if name in ray else group, name, field, help_text)
    for old, new in cls.RENAMED.items():  # accepted for one release, not shown in --help
        _add_field_flag(group, old, cls.model_fields[new], argparse.SUPPRESS)


def _add_field_flag(group: Any, name: str, field: Any, help_text: str) -> None:
    """``--name`` for a config field (its value lands in ``args.<name>``), or the flag the field
    names itself (``json_schema_extra={"flag": "--from"}``: a field called ``from`` cannot be)."""
    flag = (field.json_schema_extra or {}).get("flag") or _flag(name)
    typ, _ = _scalar_type(field.annotation)
    choices = None
    if typing.get_origin(field.annotation) is typing.Literal:
        choices = list(typing.get_args(field.annotation))
    if typ is bool:
        group.add_argument(
            flag,
            dest=name,
            action=argparse.BooleanOptionalAction,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    elif typing.get_origin(typ) in (list, tuple, dict) or typ in (list, dict):
        group.add_argument(
            flag,
            dest=name,
            type=yaml.safe_load,
            default=argparse.SUPPRESS,
            help=help_text if help_text == argparse.SUPPRESS else help_text + " [YAML value]",
        )
    else:
        group.add_argument(
            flag,
            dest=name,
            type=typ if typ in (int, float, str) else str,
            choices=choices,
            default=argparse.SUPPRESS,
            help=help_text,
        )


def packaged_configs() -> list[str]:
    """Names (``<stage>/<name>``) of the YAML configs shipped inside the package."""
    root = resources.files("distil") / "configs"
    return sorted(
        f"{stage.name}/{f.name[: -len('.yaml')]}"
        for stage in root.iterdir()
        if stage.is_dir()
        for f in stage.iterdir()
        if f.name.endswith(".yaml")
    )


def resolve_config_path(ref: str | Path) -> Path:
    """A user's YAML file when ``ref`` is an existing path, else the packaged config named
    ``ref`` (``distil/cluster``, ``demo/tiny``); anything else is an error that lists both."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    name = str(ref).removesuffix(".yaml")
    packaged = Path(str(resources.files("distil") / "configs" / f"{name}.yaml"))
    if name in packaged_configs() and packaged.is_file():
        return packaged
    raise ConfigError(
        f"config {str(ref)!r}: no such file, and no packaged config of that name "
        f"(packaged: {', '.join(packaged_configs())})"
    )


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Defaults < YAML file < explicit overrides; unknown keys are an error, not ignored;
    ``${DISTIL_ROOT}`` is expanded in every value."""
    data: dict[str, Any] = {}
    if path:
        path = resolve_config_path(path)
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping at top level, got {type(loaded).__name__}"
            )
        data.update(cls.new_names(loaded))  # a flag's new name then overrides a file's old one
    data.update(cls.new_names({k: v for k, v in overrides.items() if v is not None}))
    return cls.model_validate(expand_root(data))


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The stage config from ``--config`` and flags; a ``ConfigError`` names what is wrong.
    ``--tracking-uri`` / ``--run-group`` go to the environment (``distil.tracking``), which the
    stage's child processes inherit."""
    from distil import tracking

    tracking.apply_flags(getattr(args, "tracking_uri", None), getattr(args, "run_group", None))
    names = set(cls.model_fields) | set(cls.RENAMED)
    overrides = {k: v for k, v in vars(args).items() if k in names}
    try:
        return load_config(cls, getattr(args, "config", None), **overrides)
    except ValidationError as e:
        raise ConfigError(f"{cls.__name__}: {unset_fields_message(cls, e) or e}") from e


def unset_fields_message(cls: type[StageConfig], error: ValidationError) -> str | None:
    """For a config that leaves required fields unset (absent, or ``null`` in the YAML): one line
    per field naming its flag and YAML key, and what it wants (the field's description), instead
    of pydantic's ``Field required``; ``None`` when anything else is wrong too."""
    names = []
    for err in error.errors():
        loc = err.get("loc") or ()
        name = loc[0] if len(loc) == 1 else None
        field = cls.model_fields.get(name) if isinstance(name, str) else None
        unset = err["type"] == "missing" or err.get("input", ...) is None
        if field is None or not field.is_required() or not unset:
            return None
        names.append(name)
    return "; ".join(
        f"`{n}` is not set: pass {_flag(n)} or set `{n}:` in the config "
        f"({cls.model_fields[n].description})"
        for n in names
    )


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` a parser accepts (for "did you mean" suggestions)."""
    return sorted(o for a in parser._actions for o in a.option_strings if o.startswith("--"))


def unknown_flags_message(extras: Sequence[str], known: Iterable[str]) -> str:
    """``unrecognized arguments: --modle x (did you mean --model?)`` for argparse leftovers; the
    suggestions matter because ``--run_id`` for ``--run-id`` is an easy slip."""
    known = list(known)
    hints = []
    for arg in extras:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.75)
            if close:
                hints.append(f"{name}: did you mean {' or '.join(close)}?")
    msg = f"unrecognized arguments: {' '.join(extras)}"
    return msg + (f" ({'; '.join(hints)})" if hints else "")


def reject_unknown(parser: argparse.ArgumentParser, extras: Sequence[str]) -> NoReturn:
    """A Ray stage has no engine options to pass on: any leftover flag is a mistake."""
    parser.error(unknown_flags_message(extras, option_strings(parser)))


def stage_parser(cls: type[StageConfig], **kwargs: Any) -> argparse.ArgumentParser:
    """A parser for one stage's flags. Abbreviations are off: ``--mod`` must not silently mean
    ``--model``, and an engine option must never be taken for a prefix of a stage option."""
    parser = argparse.ArgumentParser(allow_abbrev=False, **kwargs)
    add_config_args(parser, cls)
    return parser


def parse_job_args(cls: type[C], description: str, argv: list[str] | None = None) -> C:
    """For the ``distil.jobs.*`` entry points: the same flags as the ``distil`` subcommand."""
    parser = stage_parser(cls, description=description)
    args, extras = parser.parse_known_args(argv)
    if extras:
        reject_unknown(parser, extras)
    try:
        return config_from_args(cls, args)
    except ConfigError as e:
        parser.error(str(e))


RESULT_PREFIX = "DISTIL_RESULT "


def setup_logging(force: bool = False) -> None:
    """INFO lines with time and logger name, for every job process (drivers, Ray workers and
    actors: ``force`` in Ray Train workers, whose root logger Ray has already configured)."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=force
    )


def job_main(
    cls: type[C], run: Callable[[C], dict[str, Any]], doc: str | None, argv: list[str] | None
) -> dict[str, Any]:
    """Every stage module's ``main``: flags (``doc``'s first line as the description) -> ``run``
    -> the summary as indented JSON on stdout and as the machine-readable result line."""
    import json

    from distil import tracking

    cfg = parse_job_args(cls, (doc or "").splitlines()[0], argv)
    summary = tracking.tracked(tracking.stage_name(run), run, cfg)
    print(json.dumps(summary, indent=2, default=str), flush=True)
    emit_result(summary)
    return summary


def emit_result(summary: dict[str, Any]) -> None:
    """Print a job's summary as one machine-readable line (the demo reads it from the job log)."""
    import json

    print(RESULT_PREFIX + json.dumps(summary, default=str), flush=True)


def distil_home() -> Path:
    """Where distil keeps this machine's state: the local stack, package and model caches
    (``DISTIL_HOME``, default ``.distil`` in the working directory)."""
    return Path(os.environ.get("DISTIL_HOME", ".distil")).resolve()
