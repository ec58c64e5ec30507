"""Compare the final outputs of two demo runs (e.g. an uninterrupted one and one killed mid-stage
and rerun): byte hashes of every committed data/model file and the scored rows minus their
timestamps. Prints one line per artifact and exits non-zero on any difference.

    python scripts/compare_demo_runs.py s3://distil/killA/tiny s3://distil/killB/tiny
"""

from __future__ import annotations

import sys

import pyarrow.parquet as pq

from distil import storage

ARTIFACTS = [
    "shards",
    "teacher",
    "cache",
    "student_mlm",
    "classifier_teacher",
    "classifier_student",
]
# wall-clock fields (train_seconds, ...) differ between any two runs; everything else must not
TIMING_FILES = {"metrics.json"}
SCORED_COLUMNS = ["id", "label", "score", "probs", "model_fingerprint", "source_row"]


def file_hashes(url: str) -> dict[str, str]:
    """sha256 of every committed file (names relative to the artifact dir)."""
    manifest = storage.read_manifest(url)
    names = manifest.get("files", [])
    out = {}
    for entry in names:
        name = entry["name"] if isinstance(entry, dict) else entry
        if name not in TIMING_FILES:
            out[name] = storage.sha256_url(storage.join(url, name))
    return out


def scored_rows(run_url: str) -> list[tuple]:
    rows = []
    for f in storage.committed_files(run_url, key="files"):
        fs, path = storage.arrow_filesystem(f)
        t = pq.read_table(path, filesystem=fs, columns=SCORED_COLUMNS)
        rows += list(zip(*[t.column(c).to_pylist() for c in SCORED_COLUMNS], strict=True))
    return sorted(rows, key=lambda r: (r[0], r[-1]))


def main(a: str, b: str) -> int:
    run_a, run_b = (storage.read_json(storage.join(u, "run.json")) for u in (a, b))
    same = True
    for name in ARTIFACTS:
        ha = file_hashes(run_a["artifacts"][name]["url"])
        hb = file_hashes(run_b["artifacts"][name]["url"])
        ok = ha == hb
        same &= ok
        print(f"{name:20s} {'identical' if ok else 'DIFFERENT'} ({len(ha)} files)")
    ra = scored_rows(run_a["artifacts"]["scored"]["url"])
    rb = scored_rows(run_b["artifacts"]["scored"]["url"])
    ok = ra == rb
    same &= ok
    print(f"{'scored rows':20s} {'identical' if ok else 'DIFFERENT'} ({len(ra)} rows)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
