"""Which input files ``distil score --incremental`` still has to score.

The ledger is the ``ledger`` list in each committed run's manifest (``OUTPUT/run_id=*/
manifest.json``): one entry per input file the run scored, with the file's URL, size, content
version (the object store's ETag, or the sha256 of the bytes where there is none) and the model
fingerprint. Keeping it in the manifest makes it exactly as committed as the rows: a run that dies
before its commit leaves no entry (its files are scored again), and a committed run always has
one (its files are not scored twice). A rerun of a run id replaces that run, so its own earlier
entries do not count. A file the run could not read at all is not in its ledger but in its
``failed_files`` (with the number of tries so far), so the next incremental run tries it again.
Runs plan and commit under the output's lease (``distil.score.lease``): two runs never plan
from the same ledger.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import posixpath
from typing import Any

from distil import storage

log = logging.getLogger("distil.score")

DATE_TEMPLATE = "{date}"


def resolve_date(value: str | None, now: dt.datetime | None = None) -> str | None:
    """``YYYY-MM-DD``, ``today`` or ``yesterday`` (UTC) -> ``YYYY-MM-DD``; None stays None."""
    if value is None:
        return None
    today = (now or dt.datetime.now(dt.UTC)).date()
    if value == "today":
        return today.isoformat()
    if value == "yesterday":
        return (today - dt.timedelta(days=1)).isoformat()
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ValueError(f"--date {value!r}: expected YYYY-MM-DD, today or yesterday") from None


def fill_date(inputs: list[str], date: str | None) -> list[str]:
    """``{date}`` in input URLs -> the run's date; a template without ``--date`` is an error
    (scoring a literal ``dt={date}`` folder would fail later and less clearly)."""
    if any(DATE_TEMPLATE in i for i in inputs) and date is None:
        raise ValueError(f"--input has {DATE_TEMPLATE} but no --date was given")
    return [i.replace(DATE_TEMPLATE, date) if date else i for i in inputs]


def file_version(url: str) -> dict[str, Any]:
    """URL, size and content version of one input file: the ETag where the store keeps one
    (S3, GCS: no read needed), otherwise the sha256 of its bytes."""
    fs, path = storage.get_fs(url)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    entry: dict[str, Any] = {"url": url, "size": int(info.get("size") or 0)}
    if etag:
        entry["etag"] = str(etag).strip('"')
    else:
        entry["sha256"] = storage.sha256_url(url)
    return entry


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["size"] == b["size"] and all(a.get(k) == b.get(k) for k in ("etag", "sha256"))


def committed_runs(output: str) -> dict[str, dict[str, Any]]:
    """``{run_id: manifest}`` of every committed run under ``output`` (one concurrent fetch)."""
    fs, path = storage.get_fs(output)
    fs.invalidate_cache()
    if not fs.exists(path):
        return {}
    paths = fs.glob(posixpath.join(path, f"run_id=*/{storage.MANIFEST}"))
    runs: dict[str, dict[str, Any]] = {}
    for data in (fs.cat(paths, on_error="omit") if paths else {}).values():
        manifest = json.loads(data)
        runs[manifest["run_id"]] = manifest
    return runs


def plan(
    versions: list[dict[str, Any]],
    runs: dict[str, dict[str, Any]],
    run_id: str,
    fingerprint: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """``(to_score, skipped, changed)``: the input file versions no other committed run scored
    with this model; those some run did (each with ``scored_by``: that run id); and, among
    ``to_score``, the files scored before with other content (``previous``: that entry)."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for rid, manifest in runs.items():
        if rid == run_id:  # this run replaces its own earlier commit
            continue
        for entry in manifest.get("ledger", []):
            if entry["model_fingerprint"] == fingerprint:
                seen.setdefault(entry["url"], []).append({**entry, "run_id": rid})
    to_score, skipped, changed = [], [], []
    for v in versions:
        before = seen.get(v["url"], [])
        match = next((e for e in before if same_content(e, v)), None)
        if match:
            skipped.append({**v, "scored_by": match["run_id"]})
            continue
        to_score.append(v)
        if before:
            previous = max(before, key=lambda e: e.get("scored_at", ""))
            changed.append({**v, "previous": previous})
            log.warning(
                "%s changed since run %s scored it (size %s -> %s): scoring it again",
                storage.redact(v["url"]),
                previous["run_id"],
                previous["size"],
                v["size"],
            )
    return to_score, skipped, changed


def previous_tries(
    versions: list[dict[str, Any]],
    runs: dict[str, dict[str, Any]],
    run_id: str,
    fingerprint: str,
) -> dict[str, int]:
    """``{url: tries}`` for the input files that committed runs (other than ``run_id``) could
    not read at all with this model, content unchanged: the latest such run's count
    (``failed_files`` in its manifest). A file with new content starts again from zero."""
    latest: dict[str, dict[str, Any]] = {}
    for rid, manifest in runs.items():
        if rid == run_id:
            continue
        for entry in manifest.get("failed_files", []):
            if entry["model_fingerprint"] != fingerprint:
                continue
            seen = latest.get(entry["url"])
            if seen is None or entry.get("scored_at", "") > seen.get("scored_at", ""):
                latest[entry["url"]] = entry
    out = {}
    for v in versions:
        entry = latest.get(v["url"])
        if entry is not None and same_content(entry, v):
            out[v["url"]] = int(entry.get("tries", 1))
    return out
