"""The Beam graph of ``distil score`` (the launcher, which checks the output, takes its lease and
plans the files, is ``distil.pipelines.score_reviews``)::

    files ─ Reshuffle ─ PlanRanges ─ Reshuffle ─ ReadReviews ─┬─ reviews ─ RunInference(keyed) ─ ToRow ─┬─ WriteParts(scored)
                                                              ├─ dead letters ────────── WriteParts(dead_letter)
                                                              └─ per-range record counts (CoGroupByKey with the
                                                                                teacher cache → agreement)
    Finalize (side inputs: part lists, counts, agreement): accounting check, lease renewed,
    summary, manifest (the ledger), publish.

A big file is cut into ranges (``review_files.plan_ranges``: byte ranges at record boundaries,
Parquet row groups) that different workers read, so one file's rows are scored by every worker
while only the small range descriptions go through a shuffle: reading, inference and writing
are one fused stage, and a worker's memory does not grow with the input.
The model handler is in ``distil.pipelines.inference`` (torch threads per SDK worker process).

Files are read and Parquet is written with fsspec/pyarrow inside DoFns (``distil.storage``), so
the same code reaches s3://, gs://, local paths on every runner without Beam's cloud IO extras.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from distil import storage
from distil.pipelines.inference import ERROR, METRICS, WORKER, ReviewClassifierHandler
from distil.sentiment import review_files, scored
from distil.sentiment.config import ScoreConfig

log = logging.getLogger("distil.score")

OK, DEAD, COUNTS = "reviews", "dead_letter", "counts"


def _count_dead(reason: str) -> None:
    # Runners show counters while the job runs (Flink and Dataflow UIs): one per reason.
    Metrics.counter(METRICS, "dead_letter").inc()
    Metrics.counter(METRICS, f"dead_letter_{reason}").inc()


class ReadReviews(beam.DoFn):
    """One file range in; every record out once: a Review (main), a DeadLetter, and the count."""

    def __init__(
        self,
        text_column: str,
        id_column: str | None,
        input_format: str,
        keep: list[tuple[str, str]] | None = None,
    ):
        self.text_column, self.id_column, self.input_format = text_column, id_column, input_format
        self.keep = tuple(keep or ())
        self.rows_read = Metrics.counter(METRICS, "rows_read")

    def process(self, part: review_files.FileRange) -> Iterable[Any]:
        n = unreadable = 0
        error = None
        for item in review_files.iter_reviews(
            part, self.text_column, self.id_column, self.input_format, self.keep
        ):
            n += 1
            self.rows_read.inc()
            if isinstance(item, review_files.Review):
                yield (item.id, asdict(item))
            else:
                if item.reason == review_files.UNREADABLE_FILE:
                    unreadable, error = unreadable + 1, item.detail
                _count_dead(item.reason)
                yield beam.pvalue.TaggedOutput(DEAD, asdict(item))
        name = review_files.escape_text(part.url)
        where = "" if part.end is None and not part.start else f" [{part.start}, {part.end})"
        log.info("read %s%s: %d records", storage.redact(name), where, n)
        counts = {"file": name, "records": n, "unreadable": unreadable, "error": error}
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


class ToScoredRow(beam.DoFn):
    """A prediction -> a scored row (main), or, for a row the model raised on, a dead letter."""

    def __init__(self, run_id: str, id2label: dict[int, str], fingerprint: str):
        self.run_id, self.id2label, self.fingerprint = run_id, id2label, fingerprint
        self.scored = Metrics.counter(METRICS, "scored")
        self.truncated = Metrics.counter(METRICS, "truncated")

    def process(self, keyed: tuple[str, PredictionResult]) -> Iterable[Any]:
        _, pred = keyed
        row, inf = pred.example, pred.inference
        if ERROR in inf:
            _count_dead(review_files.INFERENCE_ERROR)
            dead = review_files.DeadLetter(
                row["id"],
                row["source_file"],
                row["source_row"],
                review_files.INFERENCE_ERROR,
                review_files.escape_text(inf[ERROR])[: review_files.RAW_PREVIEW],
                row["text"][: review_files.RAW_PREVIEW],
            )
            yield beam.pvalue.TaggedOutput(DEAD, asdict(dead))
            return
        self.scored.inc()
        if inf["truncated"]:
            self.truncated.inc()
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
            **row["columns"],
            WORKER: inf[WORKER],  # counted by WriteParts into the summary, not written
        }


class WriteParts(beam.DoFn):
    """Rows → Parquet parts of up to ``rows_per_file`` rows in the attempt dir, each built as
    its rows arrive (``scored.PartWriter``), so a worker's memory does not grow with the part
    size; emits each part's manifest entry (the last, partial part of a bundle at its end)."""

    def __init__(
        self,
        run_url: str,
        rel_dir: str,
        kind: str,
        run_id: str,
        rows_per_file: int,
        schema: pa.Schema | None = None,
    ):
        self.run_url, self.rel_dir, self.kind, self.run_id = run_url, rel_dir, kind, run_id
        self.rows_per_file = rows_per_file
        self.schema = scored.DEAD_SCHEMA if kind == "dead_letter" else schema
        self._part: scored.PartWriter | None = None

    def start_bundle(self) -> None:
        self._part, self._workers = None, Counter()

    def process(self, row: dict) -> Iterable[dict]:
        if self.kind == "dead_letter":
            row = {**row, "run_id": self.run_id, "recorded_at": scored.now_utc()}
        self._workers[row.pop(WORKER, None)] += 1
        if self._part is None:
            self._part = scored.PartWriter(self.run_url, self.rel_dir, self.schema)
        self._part.add(row)
        if self._part.rows >= self.rows_per_file:
            yield self._close()

    def finish_bundle(self) -> Iterable[WindowedValue]:
        if self._part is not None:
            yield WindowedValue(self._close(), GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _close(self) -> dict:
        info = self._part.close()
        if self.kind == "scored":
            info["workers"] = dict(self._workers)
        self._part, self._workers = None, Counter()
        log.info("wrote %s (%d rows)", info["name"], info["rows"])
        return info


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
    return scored.finalize_run(
        ctx["output"],
        ctx["run_id"],
        ctx["attempt"],
        list(scored_parts),
        list(dead_parts),
        list(counts),
        agreement,
        ctx["meta"],
        ctx["ledger"],
        ctx["max_inference_error_rate"],
        ctx["lease"],
        ctx["failed_before"],
    )


def _plan(file: tuple[bytes, int], split_bytes: int, input_format: str) -> list:
    # The URL travels as bytes: a local file name that is not UTF-8 (a str with surrogates,
    # as Python lists it) would crash Beam's string coder; FileRange goes by pickle.
    url = file[0].decode("utf-8", "surrogateescape")
    return review_files.plan_ranges(url, file[1], split_bytes, input_format)


def build(
    p: beam.Pipeline,
    cfg: ScoreConfig,
    files: list[tuple[str, int]],
    ctx: dict,
    id2label: dict[int, str],
) -> None:
    """Add the scoring graph to ``p`` for ``files`` ((url, size) pairs; ``ctx``: run_url, run_id,
    attempt, model_url, split_bytes, meta, the lease handle)."""
    encoded = [(url.encode("utf-8", "surrogateescape"), size) for url, size in files]
    read = (
        p
        | "Files" >> beam.Create(encoded)
        | "SpreadFiles" >> beam.Reshuffle()
        # a big file becomes ranges (scanned for record boundaries by the worker that got it)
        | "PlanRanges" >> beam.FlatMap(_plan, ctx["split_bytes"], cfg.input_format)
        | "SpreadRanges" >> beam.Reshuffle()
        | "Read"
        >> beam.ParDo(
            ReadReviews(cfg.text_column, cfg.id_column, cfg.input_format, ctx["keep"])
        ).with_outputs(DEAD, COUNTS, main=OK)
    )
    handler = KeyedModelHandler(
        ReviewClassifierHandler(ctx["model_url"], ctx["fingerprint"], cfg, ctx["torch_threads"])
    )
    classified = (
        read[OK]
        # no shuffle of the rows: the ranges spread the work (a row carries its lineage,
        # source_file and source_row, whichever worker reads it)
        | "Classify" >> RunInference(handler)
        | "ToRow"
        >> beam.ParDo(ToScoredRow(ctx["run_id"], id2label, ctx["fingerprint"])).with_outputs(
            DEAD, main=OK
        )
    )
    rows = classified[OK]
    attempt = ctx["attempt"]
    schema = scored.scored_schema(ctx["keep"])
    scored_parts = rows | "WriteScored" >> beam.ParDo(
        WriteParts(ctx["run_url"], f"{attempt}/scored", "scored", ctx["run_id"],
                   cfg.rows_per_file, schema)
    )  # fmt: skip
    dead_parts = (
        (read[DEAD], classified[DEAD])
        | "AllDead" >> beam.Flatten()
        | "WriteDead"
        >> beam.ParDo(
            WriteParts(
                ctx["run_url"],
                f"{attempt}/dead_letter",
                "dead_letter",
                ctx["run_id"],
                cfg.rows_per_file,
            )
        )  # fmt: skip
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


def pipeline_metrics(result: PipelineResult) -> dict[str, Any]:
    """The stage's Beam metrics from a pipeline result (committed values where the runner has
    them): counters as numbers, distributions as count/sum/min/max/mean."""
    out: dict[str, Any] = {}
    found = result.metrics().query(MetricsFilter().with_namespace(METRICS))
    for kind in ("counters", "distributions"):
        for m in found[kind]:
            value = m.committed if m.committed is not None else m.attempted
            name = m.key.metric.name
            if kind == "counters":
                out[name] = out.get(name, 0) + value
            elif value is not None and value.count:
                out[name] = {
                    "count": value.count,
                    "sum": value.sum,
                    "min": value.min,
                    "max": value.max,
                    "mean": value.mean,
                }
    return dict(sorted(out.items()))
