"""Score review files with a fine-tuned classifier: Apache Beam, any runner.

    distil score --input s3://bucket/reviews/ --model s3://bucket/models/latest.json \
        --output s3://bucket/scored --run-id 2026-11-26 --runner FnApiRunner
    python pipelines/score_reviews.py --config score/scheduled --runner FlinkRunner \
        --flink_master=host:8081 --environment_type=EXTERNAL --environment_config=localhost:50000

Graph::

    files ─ Reshuffle ─ PlanRanges ─ Reshuffle ─ ReadReviews ─┬─ reviews ─ RunInference(keyed) ─ ToRow ─┬─ WriteParts(scored)
                                                              ├─ dead letters ────────── WriteParts(dead_letter)
                                                              └─ per-range record counts (CoGroupByKey with the
                                                                                teacher cache → agreement)
    Finalize (side inputs: part lists, counts, agreement): accounting check, lease renewed,
    summary, manifest (the ledger), publish.

Before the graph runs, the launcher checks the output writable and takes its lease (one run per
output: ``distil.sentiment.lease``), renewed by a thread until the run ends; only then does it
verify the model and list the inputs.

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
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

if __package__ in (None, ""):  # run as a script: import the repo's distil, not an installed one
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil import storage  # noqa: E402
from distil.config import absolute_paths  # noqa: E402
from distil.pipelines.inference import (  # noqa: E402
    ERROR,
    METRICS,
    WORKER,
    ReviewClassifierHandler,
    default_torch_threads,
)
from distil.sentiment import classifier, ledger, review_files, scored  # noqa: E402
from distil.sentiment.config import ScoreConfig  # noqa: E402
from distil.sentiment.lease import Lease, LeaseKeeper, acquire, check_output, describe  # noqa: E402

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


def _pipeline_args(cfg: ScoreConfig) -> list[str]:
    args = list(cfg.beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = [f"--runner={cfg.runner}", *args]
    return args


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


class FileErrors(RuntimeError):
    """Input files failed as a whole; the run committed the others (``summary``)."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def run(cfg: ScoreConfig) -> dict:
    """Run the pipeline to completion; returns the run summary (also at RUN/summary.json), with
    the Beam metrics read from the pipeline result (``beam_metrics``) and the time the output
    checks and the lease took (``guards``).

    Order: the options are checked; the output is checked writable and its lease taken (nothing
    read yet: a busy, read-only or wrong output is refused in seconds); then the model is
    verified, the inputs listed and planned, and the pipeline run, all under the lease, which a
    thread renews until the end."""
    t0 = time.time()
    cfg = absolute_paths(cfg)  # local runners keep the cwd; recorded lineage names files fully
    run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    date = ledger.resolve_date(cfg.date)
    inputs = ledger.fill_date(cfg.input, date)
    keep = scored.parse_keep_columns(cfg.keep_columns)
    if cfg.quantize and cfg.bf16:
        raise ValueError("--quantize and --bf16 are exclusive: choose one")
    if cfg.bf16 is None:  # bf16 by default where it is the fast path: a GPU's tensor cores
        cfg = cfg.model_copy(update={"bf16": cfg.device.startswith("cuda") and not cfg.quantize})
    if cfg.quantize and cfg.device != "cpu":
        raise ValueError("--quantize is CPU-only: drop it, or score with --device cpu")
    attempt = scored.new_attempt()
    probe_s = check_output(cfg.output)
    held = acquire(cfg.output, run_id, attempt, cfg.lease_seconds, cfg.break_lease)
    try:
        with LeaseKeeper(held) as keeper:
            summary = _run_leased(cfg, t0, run_id, date, inputs, keep, attempt, held)
        if keeper.lost:
            raise keeper.lost
    finally:
        t_release = time.perf_counter()
        try:
            held.release()
        except Exception as e:  # the run's outcome stands; the lease expires on its own
            log.warning("could not release the lease %s: %s", held.url, e)
        release_s = time.perf_counter() - t_release
    summary["guards"] = {
        "output_check_s": round(probe_s, 4),
        "lease_s": round(held.store_s + release_s, 4),  # take, renewals, release
        "lease_commit_check_s": summary.get("lease_commit_check_s", 0.0),
        "lease_renewals": held.renewals,
        "lease_took_over": describe(held.took_over) if held.took_over else None,
    }
    summary["wall_s"] = round(time.time() - t0, 2)
    if summary["files_failed"] and not cfg.allow_file_errors:
        failed = "; ".join(f"{storage.redact(f['file'])} (try {f['tries']}): {f['error']}"
                           for f in summary["files_failed"])  # fmt: skip
        raise FileErrors(
            f"{len(summary['files_failed'])} input file(s) could not be read at all: {failed}. "
            "The run committed every other file; these are not marked scored, so the next "
            "run tries them again. --allow-file-errors makes this exit 0.",
            summary,
        )
    return summary


def _run_leased(
    cfg: ScoreConfig,
    t0: float,
    run_id: str,
    date: str | None,
    inputs: list[str],
    keep: list[tuple[str, str]],
    attempt: str,
    held: Lease,
) -> dict:
    dt = date or time.strftime("%Y-%m-%d", time.gmtime(t0))
    model_url = classifier.resolve_model_url(cfg.model)
    # Every model file against its sha256 here, on the launcher: a tampered or half-copied model
    # is refused before a worker starts (the workers check again as they load it).
    manifest = classifier.verify_model(model_url)
    if manifest.get("kind") != classifier.MODEL_KIND:
        raise ValueError(f"{model_url} is not a fine-tuned model dir (distil finetune output)")
    id2label = {int(k): v for k, v in manifest["id2label"].items()}
    if cfg.teacher_cache:
        from distil.sentiment.teacher_cache import check_labels, open_teacher_cache

        check_labels(open_teacher_cache(cfg.teacher_cache), id2label)
    all_files = review_files.expand_inputs(inputs, cfg.input_format)
    runs = ledger.committed_runs(cfg.output)
    for rid, m in runs.items():
        if not m.get("published", True):  # its launcher died between commit and publish
            log.warning("run %s was committed but not published: publishing it now", rid)
            scored.publish(cfg.output, rid)
    for name in scored.remove_stale_attempts(cfg.output, run_id, attempt):
        log.warning("removed %s of run %s: an attempt that died before its commit", name, run_id)
    versions = [ledger.file_version(u) for u in all_files]
    fingerprint = manifest["fingerprint"]
    if cfg.incremental and not cfg.rescore:
        todo, skipped, changed = ledger.plan(versions, runs, run_id, fingerprint)
    else:
        todo, skipped, changed = versions, [], []
    failed_before = ledger.previous_tries(todo, runs, run_id, fingerprint)
    for url, tries in failed_before.items():
        log.warning("%s could not be read by %d earlier run(s): trying again", url, tries)
    files = [(v["url"], v["size"]) for v in todo]
    split_bytes = cfg.split_bytes or review_files.default_split_bytes(sum(v["size"] for v in todo))
    run_url = scored.run_dir(cfg.output, run_id)
    options = PipelineOptions(_pipeline_args(cfg))
    threads = default_torch_threads(cfg, options)
    now = scored.now_utc().isoformat()
    ctx = {
        "output": cfg.output,
        "run_url": run_url,
        "run_id": run_id,
        "attempt": attempt,
        "model_url": model_url,
        "fingerprint": fingerprint,
        "torch_threads": threads,
        "split_bytes": split_bytes,
        "keep": keep,
        "max_inference_error_rate": cfg.max_inference_error_rate,
        "lease": held.handle(),
        "failed_before": failed_before,
        "ledger": [
            {**v, "model_fingerprint": fingerprint, "run_id": run_id, "scored_at": now}
            for v in todo
        ],
        "meta": {
            "model": storage.redact(model_url),
            "model_fingerprint": fingerprint,
            "quantize": cfg.quantize,
            "bf16": cfg.bf16,
            "runner": cfg.runner,
            "torch_threads": threads,
            "split_bytes": split_bytes,
            "teacher_cache": storage.redact(cfg.teacher_cache) if cfg.teacher_cache else None,
            scored.PARTITION: dt,
            "incremental": cfg.incremental and not cfg.rescore,
            "files_skipped": len(skipped),
            "files_changed": [
                {"url": storage.redact(c["url"]), "previous_run_id": c["previous"]["run_id"]}
                for c in changed
            ],
            "keep_columns": [f"{n}:{t}" for n, t in keep],
        },
    }
    log.info(
        "scoring %d files (%d already scored with this model, %d changed) into %s (run %s)",
        len(files),
        len(skipped),
        len(changed),
        storage.redact(run_url),
        run_id,
    )
    p = beam.Pipeline(options=options)
    build(p, cfg, files, ctx, id2label)
    result = p.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"the scoring pipeline ended in state {state}")
    # The summary was written by a worker process: drop this process's cached listings (the
    # ledger listed OUTPUT above) or s3fs answers from them that the file does not exist.
    storage.get_fs(run_url)[0].invalidate_cache()
    summary = storage.read_json(storage.join(run_url, scored.SUMMARY))
    if summary.get("attempt") != attempt:
        raise RuntimeError("the pipeline finished but did not commit this attempt's summary")
    summary["beam_metrics"] = pipeline_metrics(result)
    failed = len(summary["files_failed"])
    print(
        f"rows in {summary['rows_in']} = scored {summary['scored']} + dead-letter "
        f"{summary['dead_letter']} ({summary['dead_letter_by_reason']}); "
        f"truncated {summary['truncated']}; files scored {len(files) - failed}, failed "
        f"{failed} (tried again next run), skipped {len(skipped)} (scored before), changed "
        f"{len(changed)}; dataset "
        f"{storage.redact(storage.join(cfg.output, scored.DATASETS['files']))}/"
        f"{scored.PARTITION}={dt}/",
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

    from distil.config import ConfigError

    logging.basicConfig(level=logging.INFO)
    # Run the importable module's main so the DoFns pickle by reference to distil.pipelines.score_reviews
    # (importable on remote workers), not as __main__ classes.
    from distil.pipelines.score_reviews import main as _main

    try:
        print(json.dumps(_main(), indent=2, default=str))
    except ConfigError as e:  # an option that cannot be used, a busy or unwritable output
        print(f"score_reviews: error: {e}", file=sys.stderr)
        sys.exit(2)
