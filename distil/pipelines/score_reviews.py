"""Score review files with a fine-tuned classifier: Apache Beam, any runner.

    distil score --input s3://bucket/reviews/ --model s3://bucket/models/latest.json \
        --output s3://bucket/scored --run-id 2026-11-26 --runner FnApiRunner
    python pipelines/score_reviews.py --config score/scheduled --runner FlinkRunner \
        --flink_master=host:8081 --environment_type=EXTERNAL --environment_config=localhost:50000

Graph::

    file URLs ─ Reshuffle ─ ReadReviews ─┬─ reviews ─ Reshuffle ─ RunInference(keyed) ─ ToRow ─┬─ WriteParts(scored)
                                         ├─ dead letters ──────────────── WriteParts(dead_letter)
                                         └─ per-file record counts       (CoGroupByKey with the
                                                                         teacher cache → agreement)
    Finalize (side inputs: part lists, counts, agreement): accounting check, summary, manifest.

The second Reshuffle spreads one big file's rows over every worker (a file is read by one).
The model handler is in ``distil.pipelines.inference`` (torch threads per SDK worker process).

Files are read and Parquet is written with fsspec/pyarrow inside DoFns (``distil.storage``), so
the same code reaches s3://, gs://, local paths on every runner without Beam's cloud IO extras.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

if __package__ in (None, ""):  # run as a script: import the repo's distil, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil import storage  # noqa: E402
from distil.config import absolute_paths  # noqa: E402
from distil.pipelines.inference import (  # noqa: E402
    WORKER,
    ReviewClassifierHandler,
    default_torch_threads,
)
from distil.sentiment import classifier, review_files, scored  # noqa: E402
from distil.sentiment.config import ScoreConfig  # noqa: E402

log = logging.getLogger("distil.score")

OK, DEAD, COUNTS = "reviews", "dead_letter", "counts"


class ReadReviews(beam.DoFn):
    """One file URL in; every record out once: a Review (main), a DeadLetter, and the count."""

    def __init__(self, text_column: str, id_column: str | None, input_format: str):
        self.text_column, self.id_column, self.input_format = text_column, id_column, input_format

    def process(self, url: str) -> Iterable[Any]:
        n = 0
        for item in review_files.iter_reviews(
            url, self.text_column, self.id_column, self.input_format
        ):
            n += 1
            if isinstance(item, review_files.Review):
                yield (item.id, asdict(item))
            else:
                yield beam.pvalue.TaggedOutput(DEAD, asdict(item))
        log.info("read %s: %d records", storage.redact(url), n)
        yield beam.pvalue.TaggedOutput(COUNTS, {"file": url, "records": n})


class ToScoredRow(beam.DoFn):
    def __init__(self, run_id: str, id2label: dict[int, str], fingerprint: str):
        self.run_id, self.id2label, self.fingerprint = run_id, id2label, fingerprint

    def process(self, keyed: tuple[str, PredictionResult]) -> Iterable[dict]:
        _, pred = keyed
        row, inf = pred.example, pred.inference
        probs = np.asarray(inf["probs"], np.float32)
        yield {
            "id": row["id"],
            "label": self.id2label[inf["label_id"]],
            "label_id": inf["label_id"],
            "score": float(probs[inf["label_id"]]),
            "probs": probs.tolist(),
            "model_fingerprint": self.fingerprint,
            "run_id": self.run_id,
            "scored_at": scored.now_utc(),
            "source_file": row["source_file"],
            "source_row": row["source_row"],
            "id_generated": row["id_generated"],
            "truncated": inf["truncated"],
            "n_tokens": inf["n_tokens"],
            "text_sha256": review_files.text_sha256(row["text"]),
            WORKER: inf[WORKER],  # counted by WriteParts into the summary, not written
        }


class WriteParts(beam.DoFn):
    """A batch of rows → one Parquet part in the attempt dir; emits the part's manifest entry."""

    def __init__(self, run_url: str, rel_dir: str, kind: str, run_id: str):
        self.run_url, self.rel_dir, self.kind, self.run_id = run_url, rel_dir, kind, run_id

    def process(self, rows: list[dict]) -> Iterable[dict]:
        if self.kind == "dead_letter":
            now = scored.now_utc()
            rows = [{**r, "run_id": self.run_id, "recorded_at": now} for r in rows]
            schema = scored.DEAD_SCHEMA
        else:
            schema = scored.SCORED_SCHEMA
        workers = Counter(r.pop(WORKER, None) for r in rows)
        info = scored.write_part(self.run_url, self.rel_dir, rows, schema)
        if self.kind == "scored":
            info["workers"] = dict(workers)
        log.info("wrote %s (%d rows)", info["name"], info["rows"])
        yield info


def _teacher_pairs(file_url: str) -> Iterable[tuple[str, np.ndarray]]:
    from distil.sentiment.teacher_cache import iter_teacher_file

    yield from iter_teacher_file(file_url)


def _agreement_rows(item: tuple[str, dict[str, list]]) -> Iterable[tuple[int, int, float]]:
    _, grouped = item
    teacher = grouped["teacher"]
    if not teacher:
        return
    for probs in grouped["student"]:
        agree, kl = scored.agreement_terms(np.asarray(probs, np.float32), np.asarray(teacher[0]))
        yield (1, agree, kl)


def _sum_terms(terms: Iterable[tuple[int, int, float]]) -> tuple[int, int, float]:
    covered = agree = 0
    kl = 0.0
    for c, a, k in terms:
        covered, agree, kl = covered + c, agree + a, kl + k
    return covered, agree, kl


def _finalize(_: Any, scored_parts, dead_parts, counts, agreement, ctx: dict) -> dict:
    summary = scored.finalize_run(
        ctx["run_url"],
        ctx["run_id"],
        ctx["attempt"],
        list(scored_parts),
        list(dead_parts),
        list(counts),
        agreement,
        ctx["meta"],
    )
    return summary


def build(
    p: beam.Pipeline, cfg: ScoreConfig, files: list[str], ctx: dict, id2label: dict[int, str]
) -> None:
    """Add the scoring graph to ``p`` (``ctx``: run_url, run_id, attempt, model_url, meta)."""
    read = (
        p
        | "Files" >> beam.Create(files)
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read"
        >> beam.ParDo(ReadReviews(cfg.text_column, cfg.id_column, cfg.input_format)).with_outputs(
            DEAD, COUNTS, main=OK
        )
    )
    handler = KeyedModelHandler(
        ReviewClassifierHandler(ctx["model_url"], ctx["fingerprint"], cfg, ctx["torch_threads"])
    )
    rows = (
        read[OK]
        # One big file is read by one worker; its rows are spread over all workers here, so
        # inference (the expensive part) does not stay with the reader. Each row carries its
        # lineage (source_file, source_row), so the order it arrives in does not matter.
        | "SpreadRows" >> beam.Reshuffle()
        | "Classify" >> RunInference(handler)
        | "ToRow" >> beam.ParDo(ToScoredRow(ctx["run_id"], id2label, ctx["fingerprint"]))
    )
    attempt = ctx["attempt"]
    scored_parts = (
        rows
        | "BatchScored"
        >> beam.BatchElements(min_batch_size=cfg.rows_per_file, max_batch_size=cfg.rows_per_file)
        | "WriteScored"
        >> beam.ParDo(WriteParts(ctx["run_url"], f"{attempt}/scored", "scored", ctx["run_id"]))
    )
    dead_parts = (
        read[DEAD]
        | "BatchDead"
        >> beam.BatchElements(min_batch_size=cfg.rows_per_file, max_batch_size=cfg.rows_per_file)
        | "WriteDead"
        >> beam.ParDo(
            WriteParts(ctx["run_url"], f"{attempt}/dead_letter", "dead_letter", ctx["run_id"])
        )
    )
    agreement = None
    if cfg.teacher_cache:
        teacher = (
            p
            | "TeacherFiles" >> beam.Create(storage.committed_files(cfg.teacher_cache))
            | "ReadTeacher" >> beam.FlatMap(_teacher_pairs)
        )
        student = rows | "ByTextHash" >> beam.Map(lambda r: (r["text_sha256"], r["probs"]))
        agreement = beam.pvalue.AsSingleton(
            {"student": student, "teacher": teacher}
            | "JoinTeacher" >> beam.CoGroupByKey()
            | "AgreementTerms" >> beam.FlatMap(_agreement_rows)
            | "SumAgreement" >> beam.CombineGlobally(_sum_terms)
        )
    _ = (
        p
        | "Once" >> beam.Create([None])
        | "Finalize"
        >> beam.Map(
            _finalize,
            beam.pvalue.AsList(scored_parts),
            beam.pvalue.AsList(dead_parts),
            beam.pvalue.AsList(read[COUNTS]),
            agreement,
            ctx,
        )
    )


def _pipeline_args(cfg: ScoreConfig) -> list[str]:
    args = list(cfg.beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = [f"--runner={cfg.runner}", *args]
    return args


def run(cfg: ScoreConfig) -> dict:
    """Run the pipeline to completion; returns the run summary (also at RUN/summary.json)."""
    t0 = time.time()
    cfg = absolute_paths(cfg)  # local runners keep the cwd; recorded lineage names files fully
    run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    model_url = classifier.resolve_model_url(cfg.model)
    manifest = storage.read_manifest(model_url)  # our exports are committed: refuse half a model
    if manifest.get("kind") != classifier.MODEL_KIND:
        raise ValueError(f"{model_url} is not a fine-tuned model dir (distil finetune output)")
    id2label = {int(k): v for k, v in manifest["id2label"].items()}
    if cfg.quantize and cfg.bf16:
        raise ValueError("--quantize and --bf16 are exclusive: choose one")
    if cfg.quantize and cfg.device != "cpu":
        raise ValueError("--quantize is CPU-only: drop it, or score with --device cpu")
    if cfg.teacher_cache:
        from distil.sentiment.teacher_cache import check_labels, open_teacher_cache

        check_labels(open_teacher_cache(cfg.teacher_cache), id2label)
    files = review_files.expand_inputs(cfg.input, cfg.input_format)
    run_url = scored.run_dir(cfg.output, run_id)
    options = PipelineOptions(_pipeline_args(cfg))
    threads = default_torch_threads(cfg, options)
    ctx = {
        "run_url": run_url,
        "run_id": run_id,
        "attempt": scored.new_attempt(),
        "model_url": model_url,
        "fingerprint": manifest["fingerprint"],
        "torch_threads": threads,
        "meta": {
            "model": storage.redact(model_url),
            "model_fingerprint": manifest["fingerprint"],
            "quantize": cfg.quantize,
            "bf16": cfg.bf16,
            "runner": cfg.runner,
            "torch_threads": threads,
            "teacher_cache": storage.redact(cfg.teacher_cache) if cfg.teacher_cache else None,
        },
    }
    log.info("scoring %d files into %s (run %s)", len(files), storage.redact(run_url), run_id)
    with beam.Pipeline(options=options) as p:
        build(p, cfg, files, ctx, id2label)
    summary = storage.read_json(storage.join(run_url, scored.SUMMARY))
    if summary.get("attempt") != ctx["attempt"]:
        raise RuntimeError("the pipeline finished but did not commit this attempt's summary")
    summary["wall_s"] = round(time.time() - t0, 2)
    print(
        f"rows in {summary['rows_in']} = scored {summary['scored']} + dead-letter "
        f"{summary['dead_letter']} ({summary['dead_letter_by_reason']}); "
        f"truncated {summary['truncated']}; output {storage.redact(run_url)}",
        file=sys.stderr,
    )
    return summary


def parse_args(argv: list[str] | None = None) -> ScoreConfig:
    """``ScoreConfig`` flags (and ``--config``); every other flag is a Beam pipeline option,
    checked against Beam's option names (``distil.pipelines.beam_options``)."""
    from distil.config import ConfigError, config_from_args, option_strings, stage_parser
    from distil.pipelines.beam_options import with_beam_args

    parser = stage_parser(ScoreConfig, description=__doc__.splitlines()[0])
    args, passed = parser.parse_known_args(argv)
    try:
        flags = option_strings(parser)
        return with_beam_args(lambda: config_from_args(ScoreConfig, args), passed, flags)
    except ConfigError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> dict:
    """Script entry (``python pipelines/score_reviews.py …``, the scheduled job's command)."""
    from distil import tracking
    from distil.config import emit_result

    summary = tracking.tracked("score", run, parse_args(argv))
    emit_result(summary)
    return summary


if __name__ == "__main__":
    import json

    logging.basicConfig(level=logging.INFO)
    # Run the importable module's main so the DoFns pickle by reference to distil.pipelines.score_reviews
    # (importable on remote workers), not as __main__ classes.
    from distil.pipelines.score_reviews import main as _main

    print(json.dumps(_main(), indent=2, default=str))
