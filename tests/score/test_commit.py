"""The commit that ends a distil score run, on a local output without Beam: the row accounting
gates it, a file that failed as a whole stays out of the ledger (with its tries counted), and
the parts are published into the dataset."""

from __future__ import annotations

import pytest

from distil import storage
from distil.data.readers.review_files import UNREADABLE_FILE
from distil.score import scored
from distil.score.commit import finalize_run
from distil.score.lease import acquire
from distil.score.plan import RunPlan


def _plan(output: str, files: list[str], failed_before: dict[str, int]) -> RunPlan:
    attempt = scored.new_attempt()
    held = acquire(output, "r1", attempt, 60)
    return RunPlan(
        output=output, run_id="r1", attempt=attempt, date="2026-12-01", model_url="/m",
        registry_version=None,
        fingerprint="f" * 16, id2label={0: "negative", 1: "positive"}, torch_threads=1,
        split_bytes=65536, keep=(), max_inference_error_rate=0.1, lease=held.handle(),
        ledger=tuple({"url": u, "size": 10, "sha256": "0" * 64, "model_fingerprint": "f" * 16,
                      "run_id": "r1", "scored_at": "2026-12-01T00:00:00+00:00"} for u in files),
        failed_before=failed_before, quantize=False, bf16=False, runner="FnApiRunner",
        teacher_cache=None, incremental=True, files_skipped=0, files_changed=(),
    )  # fmt: skip


def _dead_part(plan: RunPlan, file: str) -> dict:
    part = scored.PartWriter(plan.run_url, f"{plan.attempt}/dead_letter", scored.DEAD_SCHEMA)
    part.add({"id": None, "source_file": file, "source_row": -1, "reason": UNREADABLE_FILE,
              "detail": "not parquet", "raw": "", "run_id": "r1",
              "recorded_at": scored.now_utc()})  # fmt: skip
    return part.close()


def test_rows_that_do_not_add_up_are_not_committed(tmp_path):
    plan = _plan(str(tmp_path / "out"), ["/in/a.jsonl"], {})
    counts = [{"file": "/in/a.jsonl", "records": 1, "unreadable": 0, "error": None}]
    with pytest.raises(RuntimeError, match="row accounting failed: 1 in != 0 scored"):
        finalize_run(plan, [], [], counts, None)
    assert not storage.is_committed(plan.run_url)
    # the refused summary stays beside the attempt's parts, for the operator
    kept = storage.read_json(storage.join(plan.run_url, plan.attempt, scored.SUMMARY))
    assert kept["accounted"] is False and kept["rows_in"] == 1


def test_a_file_that_failed_as_a_whole_stays_out_of_the_ledger_with_its_tries(tmp_path):
    plan = _plan(str(tmp_path / "out"), ["/in/a.jsonl", "/in/d.parquet"], {"/in/d.parquet": 2})
    counts = [
        {"file": "/in/a.jsonl", "records": 0, "unreadable": 0, "error": None},
        {"file": "/in/d.parquet", "records": 1, "unreadable": 1, "error": "not parquet"},
    ]
    summary = finalize_run(plan, [], [_dead_part(plan, "/in/d.parquet")], counts, None)
    assert summary["accounted"] and summary["dead_letter_by_reason"] == {UNREADABLE_FILE: 1}
    assert summary["files_failed"] == [
        {"file": "/in/d.parquet", "tries": 3, "error": "not parquet"}
    ]
    manifest = storage.read_manifest(plan.run_url)
    assert [e["url"] for e in manifest["ledger"]] == ["/in/a.jsonl"]
    assert [(e["url"], e["tries"]) for e in manifest["failed_files"]] == [("/in/d.parquet", 3)]
    # published: the dead letter is a row of the dataset, read back through the manifest
    assert manifest["published"] is True
    assert scored.read_run(plan.output, "r1", "dead_letter_files").column("reason").to_pylist() == [
        UNREADABLE_FILE
    ]
