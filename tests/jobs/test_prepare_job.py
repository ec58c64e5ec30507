"""Stage 1 on a real local Ray: worker-count independence, kill -9 + resume, S3 output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prepare_corpus import (
    paragraph,
    real_wiki_xml,
    write_bad_corpus,
    write_dup_corpus,
    write_good_corpus,
    write_multistream,
)

from distil import storage
from distil.data.config import PrepareConfig

REPO = Path(__file__).resolve().parents[2]


def shard_bytes(out: str) -> dict[str, bytes]:
    return {Path(u).name: storage.read_bytes(u) for u in storage.committed_files(out)}


def output_bytes(out: str) -> dict[str, bytes]:
    """Every committed byte: shards, dead-letter files, the dedup audit list and the manifest."""
    m = storage.read_manifest(out)
    files = {Path(u).name: storage.read_bytes(u) for u in storage.committed_files(out)}
    for name in m["dead_letter"]["files"]:
        files[name] = storage.read_bytes(storage.join(out, name))
    if m["dedup"]["enabled"]:
        name = m["dedup"]["removed_file"]
        files[name] = storage.read_bytes(storage.join(out, name))
    files["manifest.json"] = storage.read_bytes(storage.join(out, "manifest.json"))
    return files


@pytest.mark.timeout(240)
def test_one_worker_and_two_workers_write_identical_bytes(ray_local, tmp_path):
    from distil.jobs.prepare import run

    root = tmp_path / "corpus"
    write_dup_corpus(root, scale=3)  # duplicates within and across files: dedup is on
    write_bad_corpus(root / "bad")
    one = run(PrepareConfig(input=str(root), output=str(tmp_path / "w1"), num_workers=1))
    two = run(PrepareConfig(input=str(root), output=str(tmp_path / "w2"), num_workers=2))
    assert one["rows"] > 0 and one["dead_letter"] > 0
    kept = one["documents"] - 5  # write_dup_corpus plants 4 exact and 1 near duplicate
    assert one["dedup"] == {"exact_removed": 4, "near_removed": 1, "documents_kept": kept}
    assert one["fingerprint"] == two["fingerprint"]
    assert output_bytes(str(tmp_path / "w1")) == output_bytes(str(tmp_path / "w2"))
    # a rerun of a committed output reuses every shard
    again = run(PrepareConfig(input=str(root), output=str(tmp_path / "w2"), num_workers=2))
    assert again["shards_reused"] == again["shards"]


@pytest.mark.timeout(240)
def test_split_multistream_dump_on_two_workers_matches_one_unit(ray_local, tmp_path):
    from distil.data.prepare_ranges import run_serial
    from distil.jobs.prepare import run

    root = tmp_path / "corpus"
    write_multistream(real_wiki_xml(), root / "wiki")
    write_good_corpus(root / "more")
    run_serial(PrepareConfig(input=str(root), output=str(tmp_path / "one")))  # dump: 1 unit
    split = tmp_path / "split"
    summary = run(
        PrepareConfig(input=str(root), output=str(split), num_workers=2, wiki_range_bytes=100_000)
    )
    assert len(list((split / "_markers").glob("shard-*-range-*.json"))) >= 10
    assert output_bytes(str(tmp_path / "one")) == output_bytes(str(split))
    assert summary["documents"] == 106 + 4 + 2 + 40 + 30
    again = run(
        PrepareConfig(input=str(root), output=str(split), num_workers=2, wiki_range_bytes=100_000)
    )
    assert again["shards_reused"] == again["shards"]


@pytest.mark.timeout(240)
def test_s3_output_matches_local_output(ray_local, s3_url, tmp_path):
    import datasets

    from distil.jobs.prepare import run

    root = tmp_path / "corpus"
    write_good_corpus(root)
    # input on S3 too: upload the corpus
    storage.upload_dir(str(root), f"{s3_url}/corpus")
    local = run(PrepareConfig(input=str(root), output=str(tmp_path / "local")))
    remote = run(PrepareConfig(input=f"{s3_url}/corpus", output=f"{s3_url}/prepared"))
    assert remote["fingerprint"] == local["fingerprint"]
    assert shard_bytes(f"{s3_url}/prepared") == shard_bytes(str(tmp_path / "local"))
    ds = datasets.load_dataset(
        "parquet",
        data_files=storage.committed_files(f"{s3_url}/prepared"),
        split="train",
        storage_options=storage.storage_options(s3_url),
    )
    assert ds.num_rows == remote["rows"]


def _big_corpus(root: Path, shards: int = 6, docs: int = 400) -> None:
    import json
    import random

    rng = random.Random(3)
    root.mkdir(parents=True)
    for s in range(shards):
        lines = [json.dumps({"text": paragraph(rng, 12)}) for _ in range(docs)]
        (root / f"part-{s:02d}.jsonl").write_text("\n".join(lines) + "\n")


def kill_9_when(root: Path, out: Path, ready, *flags: str) -> Path:
    """Run ``python jobs/prepare.py`` on one worker in its own process group, ``kill -9`` the
    group as soon as ``ready(markers folder)`` holds; returns the markers folder."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "jobs" / "prepare.py"),
            "--input",
            str(root),
            "--output",
            str(out),
            "--num-workers",
            "1",
            "--cpus-per-worker",
            "1",
            *flags,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches its Ray workers too
    )
    markers = out / "_markers"
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and proc.poll() is None:
            if markers.exists() and ready(markers):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the job ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    return markers


@pytest.mark.timeout(300)
def test_kill_9_mid_run_then_rerun_gives_identical_bytes(ray_local, tmp_path):
    from distil.jobs.prepare import run

    root = tmp_path / "corpus"
    _big_corpus(root)
    write_multistream(real_wiki_xml(), root / "wiki")  # split into byte ranges: the range path
    killed = tmp_path / "killed"
    markers = kill_9_when(root, killed, lambda m: any(m.iterdir()), "--wiki-range-bytes", "100000")
    done = [m.name for m in markers.iterdir()]
    done_whole = [n for n in done if "-range-" not in n]  # whole input files finished
    assert done and not storage.is_committed(str(killed))

    kw = {"input": str(root), "num_workers": 2, "wiki_range_bytes": 100_000}
    rerun = run(PrepareConfig(output=str(killed), **kw))
    run(PrepareConfig(output=str(tmp_path / "clean"), **kw))
    assert rerun["shards_reused"] >= len(done_whole)
    assert output_bytes(str(killed)) == output_bytes(str(tmp_path / "clean"))
    assert not (killed / "_staging").exists()


@pytest.mark.timeout(300)
def test_kill_9_mid_dedup_then_rerun_gives_identical_bytes(ray_local, tmp_path):
    """Killed after the first band's bucket grouping finished (every unit's signatures
    written, clusters not yet resolved), then rerun on two workers: the same bytes as an
    uninterrupted run, the finished bands reused."""
    from distil.jobs.prepare import run

    root = tmp_path / "corpus"
    _big_corpus(root, shards=24, docs=150)
    write_dup_corpus(root / "dups")
    killed = tmp_path / "killed"
    markers = kill_9_when(root, killed, lambda m: any(m.glob("dedup-*.json")))
    bands = sorted(m.name for m in markers.glob("dedup-*.json"))
    assert bands and len(bands) < 15, bands  # some bands done, not all
    assert not (markers / "dedup.json").exists() and not storage.is_committed(str(killed))
    assert not list(markers.glob("shard-?????.json"))  # nothing packed yet
    band_marker = storage.read_marker(str(killed), bands[0][: -len(".json")])

    rerun = run(PrepareConfig(input=str(root), output=str(killed), num_workers=2))
    clean = run(PrepareConfig(input=str(root), output=str(tmp_path / "clean"), num_workers=1))
    assert rerun["dedup"] == clean["dedup"] and rerun["dedup"]["exact_removed"] == 4
    assert output_bytes(str(killed)) == output_bytes(str(tmp_path / "clean"))
    assert not (killed / "_staging").exists() and not (killed / "_dedup").exists()
    # the bands finished before the kill were made for the rerun's inputs: it reused them
    assert storage.read_marker(str(killed), "dedup")["key"] == band_marker["key"]
