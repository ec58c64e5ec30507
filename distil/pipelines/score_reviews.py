"""Score review files with a fine-tuned classifier: Apache Beam, any runner.

    distil score --input s3://bucket/reviews/ --model s3://bucket/models/latest.json \
        --output s3://bucket/scored --run-id 2026-11-26 --runner FnApiRunner
    python pipelines/score_reviews.py --config score/scheduled --runner FlinkRunner \
        --flink_master=host:8081 --environment_type=EXTERNAL --environment_config=localhost:50000

The launcher: it checks the output (a folder, writable) and takes its lease (one run per output:
``distil.score.lease``, renewed by a thread until the run ends) before anything else; only
then does it plan the run (``distil.score.plan``: the model verified, the input files listed
against the incremental ledger) and run the Beam graph (``distil.pipelines.score_graph``).
Beam, torch and the model are imported only after the guards, so a busy, read-only or wrong
output is refused in about a second.
"""

from __future__ import annotations

import logging
import sys
import time

from distil import storage
from distil.config import absolute_paths
from distil.score import ledger, scored
from distil.score.config import ScoreConfig
from distil.score.lease import Lease, LeaseKeeper, acquire, check_output, describe
from distil.score.plan import check_options, plan_run

log = logging.getLogger("distil.score")


def _pipeline_args(cfg: ScoreConfig) -> list[str]:
    args = list(cfg.beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = [f"--runner={cfg.runner}", *args]
    return args


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
    read yet: a busy, read-only or wrong output is refused in seconds); then the run is planned
    (``distil.score.plan``: the model verified, the inputs listed against the ledger) and the
    pipeline run, all under the lease, which a thread renews until the end."""
    t0 = time.time()
    cfg = absolute_paths(cfg)  # local runners keep the cwd; recorded lineage names files fully
    run_id = cfg.run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    date = ledger.resolve_date(cfg.date)
    inputs = ledger.fill_date(cfg.input, date)
    cfg = check_options(cfg)
    attempt = scored.new_attempt()
    probe_s = check_output(cfg.output)
    held = acquire(cfg.output, run_id, attempt, cfg.lease_seconds, cfg.break_lease)
    try:
        with LeaseKeeper(held) as keeper:
            day = date or time.strftime("%Y-%m-%d", time.gmtime(t0))
            summary = _run_leased(cfg, run_id, attempt, day, inputs, held)
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
    cfg: ScoreConfig, run_id: str, attempt: str, date: str, inputs: list[str], held: Lease
) -> dict:
    # the heavy imports (Beam, torch through Beam's RunInference) only now, past the guards
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.runner import PipelineState

    from distil.pipelines.inference import default_torch_threads
    from distil.pipelines.score_graph import build, pipeline_metrics

    options = PipelineOptions(_pipeline_args(cfg))
    plan = plan_run(
        cfg,
        run_id=run_id,
        attempt=attempt,
        date=date,
        inputs=inputs,
        held=held,
        torch_threads=default_torch_threads(cfg, options),
    )
    n_files, n_changed = len(plan.files), len(plan.files_changed)
    log.info(
        "scoring %d files (%d already scored with this model, %d changed) into %s (run %s)",
        n_files,
        plan.files_skipped,
        n_changed,
        storage.redact(plan.run_url),
        run_id,
    )
    p = beam.Pipeline(options=options)
    build(p, cfg, plan)
    result = p.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RuntimeError(f"the scoring pipeline ended in state {state}")
    # The summary was written by a worker process: drop this process's cached listings (the
    # ledger listed OUTPUT above) or s3fs answers from them that the file does not exist.
    storage.get_fs(plan.run_url)[0].invalidate_cache()
    summary = storage.read_json(storage.join(plan.run_url, scored.SUMMARY))
    if summary.get("attempt") != attempt:
        raise RuntimeError("the pipeline finished but did not commit this attempt's summary")
    summary["beam_metrics"] = pipeline_metrics(result)
    failed = len(summary["files_failed"])
    print(
        f"rows in {summary['rows_in']} = scored {summary['scored']} + dead-letter "
        f"{summary['dead_letter']} ({summary['dead_letter_by_reason']}); "
        f"truncated {summary['truncated']}; files scored {n_files - failed}, failed "
        f"{failed} (tried again next run), skipped {plan.files_skipped} (scored before), "
        f"changed {n_changed}; dataset "
        f"{storage.redact(storage.join(cfg.output, scored.DATASETS['files']))}/"
        f"{scored.PARTITION}={date}/",
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
