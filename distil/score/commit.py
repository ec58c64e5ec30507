"""The end of a ``distil score`` run, run once by the graph's last step with everything the
graph wrote: the row accounting (every record read is scored or a dead letter, or nothing is
committed), the inference-error ceiling, the lease renewed, summary.json, the manifest (the
commit point, with the run's ledger) and the publish into the datasets
(``distil.score.scored``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from distil import storage
from distil.data.readers.review_files import INFERENCE_ERROR, escape_text
from distil.score.lease import Lease
from distil.score.plan import RunPlan
from distil.score.scored import KIND, PARTITION, SUMMARY, now_utc, publish


def finalize_run(
    plan: RunPlan,
    scored_parts: list[dict],
    dead_parts: list[dict],
    file_counts: list[dict],
    agreement: tuple[int, int, float] | None,
) -> dict[str, Any]:
    """Check the accounting of what the graph wrote (its part lists, the per-range record
    counts, the teacher-agreement sums), renew the output's lease (a run that lost it stops
    here, uncommitted), write summary.json, commit the manifest (with the ledger of the input
    file versions this run scored, less the files that failed as a whole: those go to
    ``failed_files``, their try counted on from ``plan.failed_before``), publish into the
    dataset."""
    run_url, run_id, attempt = plan.run_url, plan.run_id, plan.attempt
    per_file: Counter = Counter()  # a file read in ranges has one count per range
    unreadable: Counter = Counter()  # its unreadable_file records, one per range that failed
    errors: dict[str, str] = {}
    for c in file_counts:
        per_file[c["file"]] += c["records"]
        unreadable[c["file"]] += c.get("unreadable", 0)
        if c.get("error"):
            errors.setdefault(c["file"], c["error"])
    file_counts = [{"file": f, "records": n} for f, n in per_file.items()]
    rows_in = sum(per_file.values())
    # A file that failed as a whole gave nothing but unreadable_file records: none of its rows
    # is in this commit, so it is not marked scored and the next run tries it again. A file that
    # failed part-way keeps its rows and its ledger entry (its dead letter says what was lost):
    # scoring it again would score the rows before the failure twice.
    whole = {f for f, n in per_file.items() if n and unreadable[f] == n}
    done = [e for e in plan.ledger if escape_text(e["url"]) not in whole]
    failed_files = [
        {
            **e,
            "tries": plan.failed_before.get(e["url"], 0) + 1,
            "error": errors.get(escape_text(e["url"]), ""),
        }
        for e in plan.ledger
        if escape_text(e["url"]) in whole
    ]
    scored = sum(p["rows"] for p in scored_parts)
    dead = sum(p["rows"] for p in dead_parts)
    by_reason: Counter = Counter()
    for p in dead_parts:
        by_reason.update(p["by_reason"])
    by_worker: Counter = Counter()  # host:pid of the SDK worker process that scored the rows
    for p in scored_parts:
        by_worker.update(p.get("workers", {}))
    summary = {
        "run_id": run_id,
        "attempt": attempt,
        "rows_in": rows_in,
        "scored": scored,
        "dead_letter": dead,
        "dead_letter_by_reason": dict(sorted(by_reason.items())),
        "truncated": sum(p["truncated"] for p in scored_parts),
        "scored_by_worker": dict(sorted(by_worker.items())),
        "accounted": rows_in == scored + dead,
        "files_in": sorted(file_counts, key=lambda c: c["file"]),
        "files_failed": [
            {"file": escape_text(f["url"]), "tries": f["tries"], "error": f["error"]}
            for f in failed_files
        ],
        "finished_at": now_utc().isoformat(),
        **plan.summary_fields(),
    }
    if agreement is not None:
        covered, agree, kl_sum = agreement
        summary["teacher_agreement"] = {
            "covered_rows": covered,
            "label_agreement": agree / covered if covered else None,
            "mean_kl": kl_sum / covered if covered else None,
        }
    failed = by_reason.get(INFERENCE_ERROR, 0)
    if not summary["accounted"]:
        error = (
            f"row accounting failed: {rows_in} in != {scored} scored + {dead} dead-letter; "
            "not committing this run"
        )
    elif failed and failed > plan.max_inference_error_rate * (scored + failed):
        # A model that raises on most rows is broken, not the rows: fail instead of committing
        # a night of dead letters.
        error = (
            f"{failed} of {scored + failed} rows raised in the model (inference_error), more "
            f"than --max-inference-error-rate {plan.max_inference_error_rate}; not committing this "
            "run"
        )
    else:
        error = None
    if error:
        storage.write_json(storage.join(run_url, attempt, SUMMARY), summary)
        raise RuntimeError(error)
    # the commit, the ledger and the publish happen under the lease
    held = Lease.from_handle(plan.lease)
    held.renew()
    summary["lease_commit_check_s"] = round(held.store_s, 4)
    storage.write_json(storage.join(run_url, SUMMARY), summary)
    manifest = {
        "kind": KIND,
        "run_id": run_id,
        "attempt": attempt,
        PARTITION: plan.date,
        "files": sorted(scored_parts, key=lambda p: p["name"]),
        "dead_letter_files": sorted(dead_parts, key=lambda p: p["name"]),
        "ledger": done,
        "failed_files": failed_files,
        "published": False,
        "summary": summary,
        "fingerprint": storage.fingerprint([run_id, attempt]),
    }
    storage.commit(run_url, manifest, cleanup=False)
    publish(plan.output, run_id)
    return summary
