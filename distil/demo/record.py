"""``run.json``: the machine-readable record of one demo run, assembled from the steps' results
and their committed artifacts.

Every number in it is read back from what the run wrote (manifests, ``metrics.json``, the scored
output) rather than from what the driver believes happened, so the report built from ``run.json``
alone shows what is actually on storage — for reused steps as much as for fresh ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distil import storage
from distil.chain.steps import Step
from distil.demo.config import DemoConfig
from distil.demo.report_data import compare_models, score_histogram


def pick(d: dict[str, Any], *prefixes: str) -> dict[str, Any]:
    """The scalar entries of ``d`` whose key starts with one of ``prefixes``."""
    return {
        k: v for k, v in d.items() if k.startswith(prefixes) and not isinstance(v, (dict, list))
    }


def per_s(n: float, st: Step) -> str:
    """``"1,234/s"`` over the step's wall time; empty for a step that took no time."""
    return f"{n / st.wall_s:,.0f}/s" if st.wall_s else ""


def stage_entry(st: Step, metrics: dict[str, Any], throughput: str = "") -> dict[str, Any]:
    entry = {
        "url": st.output,
        "fingerprint": st.fingerprint,
        "wall_s": st.wall_s,
        "reused": st.reused,
        "command": " ".join(st.argv),
        "metrics": metrics,
        "throughput": throughput,
    }
    if st.skipped:  # not run: ``url`` is the input it was given (e.g. a teacher with a head)
        entry["skipped"] = st.skipped
    return entry


def run_json(
    cfg: DemoConfig,
    run_url: str,
    steps: dict[str, Step],
    started: str,
    wall_s: float,
    samples: dict[str, Any],
    ood_max_rows: int | None = None,
) -> dict[str, Any]:
    """run.json for a finished run: per stage URL/fingerprint/command/metrics, every artifact,
    the distillation curves, the teacher-vs-student comparison and the score histogram."""
    from distil.ops import stack

    s = steps
    prep = storage.read_manifest(s["prepare"].output)
    cache = storage.read_manifest(s["logits"].output)
    student_metrics = storage.read_json(storage.join(s["distil"].output, "metrics.json"))
    # a skipped adaptation has no manifest: its "output" is the teacher as given
    adapt = {} if s["adapt_teacher"].skipped else storage.read_manifest(s["adapt_teacher"].output)
    clf = {k: storage.read_manifest(s[k].output) for k in ("finetune_teacher", "finetune_student")}
    score = s["score"].result

    stages = {
        "samples": {
            "url": cfg.samples,
            "wall_s": samples["wall_s"],
            "reused": samples["reused"],
            "metrics": {
                "docs": samples["summary"]["corpus"]["docs"],
                "words": samples["summary"]["corpus"]["words"],
            },
        },
        "prepare": stage_entry(
            s["prepare"],
            {k: prep[k] for k in ("rows", "tokens", "padding_fraction") if k in prep},
            per_s(prep["tokens"], s["prepare"]) + " tokens",
        ),
        "adapt_teacher": stage_entry(
            s["adapt_teacher"], pick(adapt.get("metrics", adapt), "heldout")
        ),
        "logits": stage_entry(
            s["logits"],
            {k: cache[k] for k in ("positions", "bytes_per_token", "bytes_per_position")},
            per_s(cache["rows"], s["logits"]) + " sequences",
        ),
        "distil": stage_entry(
            s["distil"],
            {
                k: v
                for k, v in student_metrics.items()
                if k.startswith("eval_") and k != "eval_history"
            }
            | {"steps": student_metrics["step"]}
            | pick(student_metrics, "tokens_per_s_global", "tokens_seen_global", "world_size"),
            # all workers' tokens (tokens_seen is rank 0's alone; older students have only it)
            per_s(
                student_metrics.get("tokens_seen_global", student_metrics.get("tokens_seen", 0)),
                s["distil"],
            )
            + " tokens",
        ),
        "finetune_teacher": stage_entry(
            s["finetune_teacher"], pick(clf["finetune_teacher"]["metrics"], "accuracy", "f1")
        ),
        "finetune_student": stage_entry(
            s["finetune_student"], pick(clf["finetune_student"]["metrics"], "accuracy", "f1")
        ),
        **(
            {
                "gate": stage_entry(
                    s["gate"],
                    pick(
                        storage.read_manifest(s["gate"].output)["figures"],
                        "teacher_share",
                        "int8_drop_points",
                        "validation_rows",
                    ),  # fmt: skip
                )
            }
            if "gate" in s
            else {}
        ),
        "score": stage_entry(
            s["score"],
            {k: score[k] for k in ("rows_in", "scored", "dead_letter") if k in score}
            | {f"teacher_{k}": v for k, v in (score.get("teacher_agreement") or {}).items()},
            per_s(score.get("rows_in", 0), s["score"]) + " reviews",
        ),
    }
    artifacts = {
        "shards": {"url": s["prepare"].output, "fingerprint": prep["fingerprint"]},
        "teacher": {
            "url": s["adapt_teacher"].output,
            "fingerprint": adapt.get("fingerprint", s["adapt_teacher"].fingerprint),
        },
        "cache": {"url": s["logits"].output, "fingerprint": cache.get("fingerprint", "")},
        "student_mlm": {
            "url": s["distil"].output,
            "fingerprint": storage.read_manifest(s["distil"].output)["fingerprint"],
        },
        "classifier_teacher": {
            "url": s["finetune_teacher"].output,
            "fingerprint": clf["finetune_teacher"]["fingerprint"],
        },
        "classifier_student": {
            "url": s["finetune_student"].output,
            "fingerprint": clf["finetune_student"]["fingerprint"],
        },
        "scored": {"url": s["score"].output, "fingerprint": score.get("model_fingerprint", "")},
        "dead_letter": {"url": s["score"].output + " (dead_letter_files)", "fingerprint": ""},
    }
    curves = {
        "distil": {
            "train_loss": [
                [h["step"], h["loss"]] for h in student_metrics.get("train_history", [])
            ],
            "eval_kl_to_teacher": [
                [h["step"], h["eval_kl_to_teacher"]]
                for h in student_metrics.get("eval_history", [])
                if "eval_kl_to_teacher" in h
            ],
        }
    }
    return {
        "run_id": Path(run_url).name + "-" + storage.fingerprint(artifacts)[:8],
        "scale": cfg.scale,
        "started_at": started,
        "wall_s": round(wall_s, 2),
        "stack": {
            "s3_endpoint": os.environ.get("AWS_ENDPOINT_URL", ""),
            "ray_address": cfg.ray_address or "embedded",
            "local_stack": stack.status() if cfg.start_stack else None,
        },
        "stages": stages,
        "artifacts": artifacts,
        "curves": curves,
        "comparison": compare_models(
            teacher_mlm=s["adapt_teacher"].output,
            student_mlm=s["distil"].output,
            teacher_clf=s["finetune_teacher"].output,
            student_clf=s["finetune_student"].output,
            student_agreement=student_metrics.get("eval_teacher_agreement"),
            student_kl=student_metrics.get("eval_kl_to_teacher"),
            reviews=storage.join(cfg.samples, "reviews", "amazon_snippets.jsonl"),
            max_length=clf["finetune_student"]["metrics"]["config"]["max_length"],
            ood_max_rows=ood_max_rows,
        ),
        "scores": score_histogram(s["score"].output, score),
    }
