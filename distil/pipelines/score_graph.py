"""The Beam graph of ``distil score`` (the launcher, which checks the output, takes its lease and
plans the files, is ``distil.pipelines.score_reviews``)::

    files ─ Reshuffle ─ PlanRanges ─ Reshuffle ─ ReadReviews ─┬─ review batches ─ RunInference ─ ToRows ─┬─ scored batches ─ WriteParts(scored)
                                                              │                                          └─ inference errors ─┐
                                                              ├─ dead letters ─────────────────────────────────────── Flatten ─ WriteParts(dead_letter)
                                                              └─ per-range record counts
    (scored rows: CoGroupByKey with the teacher cache → agreement)
    Finalize (side inputs: part lists, counts, agreement): accounting check, lease renewed,
    summary, manifest (the ledger), publish.

Reviews travel as Arrow record batches (``review_schema``: up to ``batch_size`` rows of one
range) and scored rows as record batches in the output schema, so the model handler, ``ToScored``
and the writer work column by column, with no Python per row beyond reading and hashing it.

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
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.runners.runner import PipelineResult
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from distil import storage
from distil.data.readers import review_files
from distil.data.readers.records import DeadLetter
from distil.pipelines.inference import (
    ERROR,
    METRICS,
    WORKER,
    ReviewClassifierHandler,
    batch_sizes,
)
from distil.score import scored
from distil.score.commit import finalize_run
from distil.score.config import ScoreConfig
from distil.score.plan import RunPlan

log = logging.getLogger("distil.score")

OK, DEAD, COUNTS = "reviews", "dead_letter", "counts"


def _count_dead(reason: str) -> None:
    # Runners show counters while the job runs (Flink and Dataflow UIs): one per reason.
    Metrics.counter(METRICS, "dead_letter").inc()
    Metrics.counter(METRICS, f"dead_letter_{reason}").inc()


def review_schema(keep: list[tuple[str, str]] | tuple[tuple[str, str], ...]) -> pa.Schema:
    """The columns of the review batches ``ReadReviews`` emits: a ``Review``'s fields and the
    ``--keep-columns``."""
    fields = [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source_file", pa.string()),
        ("source_row", pa.int64()),
        ("id_generated", pa.bool_()),
    ]
    fields += [(name, scored.KEEP_ARROW_TYPES[typ]) for name, typ in keep]
    return pa.schema(fields)


class ReadReviews(beam.DoFn):
    """One file range in; every record out once: the reviews in Arrow batches of up to
    ``batch_rows`` (main: what the model handler, ``ToScored`` and the writer work on, column by
    column), each dead letter, and the range's count."""

    def __init__(
        self,
        text_column: str,
        id_column: str | None,
        input_format: str,
        keep: list[tuple[str, str]] | None = None,
        batch_rows: int = 512,
    ):
        self.text_column, self.id_column, self.input_format = text_column, id_column, input_format
        self.keep = tuple(keep or ())
        self.batch_rows = batch_rows
        self.rows_read = Metrics.counter(METRICS, "rows_read")

    def process(self, part: review_files.FileRange) -> Iterable[Any]:
        n = unreadable = 0
        error = None
        schema = review_schema(self.keep)
        reviews: list[review_files.Review] = []
        for item in review_files.iter_reviews(
            part, self.text_column, self.id_column, self.input_format, self.keep
        ):
            n += 1
            if isinstance(item, review_files.Review):
                reviews.append(item)
                if len(reviews) == self.batch_rows:
                    yield _review_batch(reviews, schema)
                    reviews = []
            else:
                if item.reason == review_files.UNREADABLE_FILE:
                    unreadable, error = unreadable + 1, item.detail
                _count_dead(item.reason)
                yield beam.pvalue.TaggedOutput(DEAD, item.to_review_row())
        if reviews:
            yield _review_batch(reviews, schema)
        self.rows_read.inc(n)
        name = review_files.escape_text(part.url)
        where = "" if part.end is None and not part.start else f" [{part.start}, {part.end})"
        log.info("read %s%s: %d records", storage.redact(name), where, n)
        counts = {"file": name, "records": n, "unreadable": unreadable, "error": error}
        yield beam.pvalue.TaggedOutput(COUNTS, counts)


def _review_batch(reviews: list[review_files.Review], schema: pa.Schema) -> pa.RecordBatch:
    columns = [
        [r.id for r in reviews],
        [r.text for r in reviews],
        [r.source_file for r in reviews],
        [r.source_row for r in reviews],
        [r.id_generated for r in reviews],
    ]
    columns += [[r.columns.get(name) for r in reviews] for name in schema.names[5:]]
    return pa.RecordBatch.from_arrays(
        [pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)], schema=schema
    )


class ToScored(beam.DoFn):
    """A review batch's predictions -> one batch of scored rows in ``schema`` (main, with the
    worker that scored it: ``(worker, RecordBatch)``), built column by column; each row the
    model raised on becomes a dead letter instead."""

    def __init__(self, run_id: str, id2label: dict[int, str], fingerprint: str, schema: pa.Schema):
        self.run_id, self.fingerprint, self.schema = run_id, fingerprint, schema
        self.labels = np.array([id2label[i] for i in range(len(id2label))], dtype=object)
        self.scored = Metrics.counter(METRICS, "scored")
        self.truncated = Metrics.counter(METRICS, "truncated")

    def process(self, pred: PredictionResult) -> Iterable[Any]:
        rows, inf = pred.example, pred.inference
        errors = inf[ERROR]
        failed = [i for i, e in enumerate(errors) if e is not None]
        if failed:
            texts = rows.column("text")
            for i in failed:
                _count_dead(review_files.INFERENCE_ERROR)
                dead = DeadLetter(
                    source=rows.column("source_file")[i].as_py(),
                    offset=rows.column("source_row")[i].as_py(),
                    reason=review_files.INFERENCE_ERROR,
                    detail=review_files.escape_text(errors[i])[: review_files.RAW_PREVIEW],
                    raw=texts[i].as_py()[: review_files.RAW_PREVIEW],
                    id=rows.column("id")[i].as_py(),
                )
                yield beam.pvalue.TaggedOutput(DEAD, dead.to_review_row())
            ok = np.array([e is None for e in errors])
            rows = rows.filter(pa.array(ok))
            inf = {k: v[ok] for k, v in inf.items() if k not in (ERROR, WORKER)}
        n = rows.num_rows
        if n == 0:
            return
        label_id = np.asarray(inf["label_id"], np.int32)
        probs = np.asarray(inf["probs"], np.float32)
        truncated = np.asarray(inf["truncated"], bool)
        self.scored.inc(n)
        self.truncated.inc(int(truncated.sum()))
        width = probs.shape[1]
        new = {
            "label": pa.array(self.labels[label_id], pa.string()),
            "label_id": pa.array(label_id),
            "score": pa.array(probs[np.arange(n), label_id]),
            "probs": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * width + 1, width, dtype=np.int32)),
                pa.array(probs.reshape(-1)),
            ),
            "model_fingerprint": pa.array([self.fingerprint] * n, pa.string()),
            "run_id": pa.array([self.run_id] * n, pa.string()),
            # the batch was scored at once: one time for its rows
            "scored_at": pa.array([scored.now_utc()] * n, pa.timestamp("us", tz="UTC")),
            "truncated": pa.array(truncated),
            "n_tokens": pa.array(np.asarray(inf["n_tokens"], np.int32)),
            "text_sha256": pa.array(
                [review_files.text_sha256(t) for t in rows.column("text").to_pylist()]
            ),
        }
        columns = [new[f.name] if f.name in new else rows.column(f.name) for f in self.schema]
        yield pred.inference[WORKER], pa.RecordBatch.from_arrays(columns, schema=self.schema)


class WriteParts(beam.DoFn):
    """Rows → Parquet parts of up to ``rows_per_file`` rows in the attempt dir, each built as
    its rows arrive (``scored.PartWriter``), so a worker's memory does not grow with the part
    size; emits each part's manifest entry (the last, partial part of a bundle at its end).
    Scored rows come as ``(worker, RecordBatch)`` from ``ToScored``, dead letters as dicts."""

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

    def process(self, item: dict | tuple[str, pa.RecordBatch]) -> Iterable[dict]:
        if self.kind == "dead_letter":  # dead letters come one by one
            row = {**item, "run_id": self.run_id, "recorded_at": scored.now_utc()}
            self._part = self._part or scored.PartWriter(self.run_url, self.rel_dir, self.schema)
            self._part.add(row)
            if self._part.rows >= self.rows_per_file:
                yield self._close()
            return
        worker, rows = item  # scored rows come in batches, cut where a part is full
        start = 0
        while start < rows.num_rows:
            self._part = self._part or scored.PartWriter(self.run_url, self.rel_dir, self.schema)
            take = min(self.rows_per_file - self._part.rows, rows.num_rows - start)
            self._part.add_batch(rows.slice(start, take))
            self._workers[worker] += take
            start += take
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


def _probs_by_text_hash(item: tuple[str, pa.RecordBatch]) -> Iterable[tuple[str, list]]:
    _, rows = item
    return zip(
        rows.column("text_sha256").to_pylist(), rows.column("probs").to_pylist(), strict=True
    )


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


def _finalize(_: Any, scored_parts, dead_parts, counts, agreement, plan: RunPlan) -> dict:
    return finalize_run(plan, list(scored_parts), list(dead_parts), list(counts), agreement)


def _plan(file: tuple[bytes, int], split_bytes: int, input_format: str) -> list:
    # The URL travels as bytes: a local file name that is not UTF-8 (a str with surrogates,
    # as Python lists it) would crash Beam's string coder; FileRange goes by pickle.
    url = file[0].decode("utf-8", "surrogateescape")
    return review_files.plan_ranges(url, file[1], split_bytes, input_format)


def build(p: beam.Pipeline, cfg: ScoreConfig, plan: RunPlan) -> None:
    """Add the scoring graph of ``plan`` (its files, model, attempt, lease) to ``p``."""
    encoded = [(url.encode("utf-8", "surrogateescape"), size) for url, size in plan.files]
    read = (
        p
        | "Files" >> beam.Create(encoded)
        | "SpreadFiles" >> beam.Reshuffle()
        # a big file becomes ranges (scanned for record boundaries by the worker that got it)
        | "PlanRanges" >> beam.FlatMap(_plan, plan.split_bytes, cfg.input_format)
        | "SpreadRanges" >> beam.Reshuffle()
        | "Read"
        >> beam.ParDo(
            ReadReviews(cfg.text_column, cfg.id_column, cfg.input_format, plan.keep,
                        batch_sizes(cfg)[0])
        ).with_outputs(DEAD, COUNTS, main=OK)
    )  # fmt: skip
    handler = ReviewClassifierHandler(plan.model_url, plan.fingerprint, cfg, plan.torch_threads)
    schema = scored.scored_schema(plan.keep)
    classified = (
        read[OK]
        # no shuffle of the rows: the ranges spread the work (a row carries its lineage,
        # source_file and source_row, whichever worker reads it)
        | "Classify" >> RunInference(handler)
        | "ToRows"
        >> beam.ParDo(ToScored(plan.run_id, plan.id2label, plan.fingerprint, schema)).with_outputs(
            DEAD, main=OK
        )
    )
    rows = classified[OK]
    attempt = plan.attempt
    scored_parts = rows | "WriteScored" >> beam.ParDo(
        WriteParts(plan.run_url, f"{attempt}/scored", "scored", plan.run_id,
                   cfg.rows_per_file, schema)
    )  # fmt: skip
    dead_parts = (
        (read[DEAD], classified[DEAD])
        | "AllDead" >> beam.Flatten()
        | "WriteDead"
        >> beam.ParDo(
            WriteParts(
                plan.run_url,
                f"{attempt}/dead_letter",
                "dead_letter",
                plan.run_id,
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
        student = rows | "ByTextHash" >> beam.FlatMap(_probs_by_text_hash)
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
            plan,
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
