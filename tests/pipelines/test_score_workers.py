"""distil score with several SDK worker processes: one big review file is spread over the workers
(read as byte ranges that different workers read), each worker runs its own torch threads, and
the scored rows (lineage included) are the same as a single-process run's. Real Beam (FnApiRunner multi_processing), real
SeaweedFS S3, the tiny real classifier."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from score_fixtures import run_score

from distil import storage
from distil.pipelines.inference import local_cpus, worker_id
from distil.score import scored

N_ROWS = 5_000
WORDS = [
    "a",
    "the",
    "film",
    "movie",
    "plot",
    "acting",
    "boring",
    "wonderful",
    "terrible",
    "moving",
    "slow",
    "great",
    "awful",
    "score",
    "cast",
    "director",
    "scene",
    "ending",
    "dull",
    "brilliant",
    "loved",
    "hated",
    "script",
    "camera",
    "long",
    "short",
]


@pytest.fixture(scope="module")
def big_file_url(s3_server):
    """One JSONL file of 5,000 reviews of 3 to 40 words (so batches really differ in length)."""
    rng = np.random.default_rng(7)
    lines = []
    for i in range(N_ROWS):
        words = rng.choice(WORDS, size=int(rng.integers(3, 41)))
        lines.append(json.dumps({"id": f"r{i:05d}", "text": " ".join(words)}))
    url = f"s3://{s3_server.bucket}/big-{uuid.uuid4().hex[:8]}/reviews.jsonl"
    storage.write_bytes(url, ("\n".join(lines) + "\n").encode())
    return url


def _score(url, model_url, output, run_id, tmp_path, beam_args, **kw) -> dict:
    return run_score(url, model_url, output, run_id, tmp_path, max_length=64, batch_size=250,
                     micro_batch_size=50, rows_per_file=1_000, beam_args=beam_args, **kw)  # fmt: skip


def _sorted_rows(output: str, run_id: str) -> list[dict]:
    rows = scored.read_run(output, run_id).to_pylist()
    for r in rows:  # the only columns that differ between two runs by design
        del r["scored_at"], r["run_id"]
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.timeout(300)
def test_one_big_file_is_scored_by_several_worker_processes_with_identical_output(
    big_file_url, tiny_classifier_url, s3_server, tmp_path
):
    output = f"s3://{s3_server.bucket}/workers-{uuid.uuid4().hex[:8]}"
    single = _score(big_file_url, tiny_classifier_url, output, "single", tmp_path, [])
    multi = _score(
        big_file_url,
        tiny_classifier_url,
        output,
        "multi",
        tmp_path,
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
    )
    size = storage.get_fs(big_file_url)[0].size(big_file_url.split("://", 1)[1])
    for s in (single, multi):
        assert s["rows_in"] == s["scored"] == N_ROWS and s["accounted"] is True
        assert sum(s["scored_by_worker"].values()) == N_ROWS
        # read in ranges (the default split of a one-file run), counted once per file
        assert s["split_bytes"] < size
        assert s["files_in"] == [{"file": big_file_url, "records": N_ROWS}]

    # in_memory: everything runs in this (the launcher's) process, with all its CPUs for torch
    assert single["scored_by_worker"] == {worker_id(): N_ROWS}
    assert single["torch_threads"] == local_cpus()
    # multi_processing: two SDK worker processes, neither of them this one, each scoring a real
    # share of the one file; the CPUs are split between them
    workers = multi["scored_by_worker"]
    assert len(workers) == 2 and worker_id() not in workers, workers
    assert len({w.rsplit(":", 1)[1] for w in workers}) == 2
    assert min(workers.values()) >= N_ROWS // 10, workers
    assert multi["torch_threads"] == max(1, local_cpus() // 2)

    a, b = _sorted_rows(output, "single"), _sorted_rows(output, "multi")
    assert [r["id"] for r in a] == [f"r{i:05d}" for i in range(N_ROWS)]
    # Every column but the probabilities must match exactly. Those come from micro-batches of
    # different make-up (padding width, batch size, torch threads 2 vs 1) and differ in the last
    # bits: measured here up to 3.2e-6 (the tiny model's wide init makes large activations).
    probs_a = np.array([r.pop("probs") for r in a], np.float32)
    probs_b = np.array([r.pop("probs") for r in b], np.float32)
    scores_a = np.array([r.pop("score") for r in a], np.float32)
    scores_b = np.array([r.pop("score") for r in b], np.float32)
    np.testing.assert_allclose(probs_a, probs_b, rtol=0, atol=2e-5)
    np.testing.assert_allclose(scores_a, scores_b, rtol=0, atol=2e-5)
    assert a == b  # id, label, label_id, lineage, truncation, n_tokens, text hash, fingerprint
    assert {r["label"] for r in a} == {"negative", "positive"}
    assert all(r["source_file"] == big_file_url for r in a)
    assert sorted(r["source_row"] for r in a) == list(range(N_ROWS))


def _listening(port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Addresses with a TCP socket in LISTEN on ``port`` (this network namespace, /proc/net)."""
    out = []
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8))
            ip = ipaddress.ip_address(raw)
            out.append(getattr(ip, "ipv4_mapped", None) or ip)  # gRPC binds v4 as ::ffff:a.b.c.d
    return out


def _children(pid: int) -> set[int]:
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            kids.add(int(stat.parent.name))
    return kids


@pytest.fixture
def worker_pool(tmp_path):
    """The scheduled run's sidecar, as its container runs it: ``python -m
    distil.pipelines.worker_pool --port P``, in its own process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "pool.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "distil.pipelines.worker_pool", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.time() + 60
    while not _listening(port) and time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.timeout(240)
def test_external_worker_pool_runs_the_scoring_on_loopback_only(
    worker_pool, big_file_url, tiny_classifier_url, s3_server, tmp_path
):
    """``--environment_type=EXTERNAL --environment_config=localhost:P`` as the Flink CronJob passes
    it, through Beam's portable runner (in-process job service): the rows are scored in processes
    the pool started, not in the launcher, and the pool listens on loopback only."""
    port, pool_pid = worker_pool
    addrs = _listening(port)
    assert addrs and all(a.is_loopback for a in addrs), addrs

    output = f"s3://{s3_server.bucket}/external-{uuid.uuid4().hex[:8]}"
    summary = _score(
        big_file_url,
        tiny_classifier_url,
        output,
        "external",
        tmp_path,
        [
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{port}",
        ],
    )
    assert summary["scored"] == N_ROWS and summary["accounted"] is True
    assert summary["torch_threads"] == 1  # not a local runner: parallelism comes from bundles
    workers = summary["scored_by_worker"]
    assert worker_id() not in workers
    pids = {int(w.rsplit(":", 1)[1]) for w in workers}
    assert pids and pids <= _children(pool_pid), (pids, _children(pool_pid))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_launcher_killed_mid_run_then_rerun_leaves_one_copy_of_each_row(
    big_file_url, tiny_classifier_url, s3_server, tmp_path
):
    """``kill -9`` of the launcher while its two SDK worker processes are writing parts, then
    the same run id again: exactly one copy of each row, through the manifest and in the
    dataset, and nothing of the killed attempt left."""
    import os
    import signal

    import pyarrow.dataset as ds

    output = f"s3://{s3_server.bucket}/killed-{uuid.uuid4().hex[:8]}"
    multi = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    cmd = [
        sys.executable, "-m", "distil.pipelines.score_reviews", "--input", big_file_url,
        "--model", tiny_classifier_url, "--output", output, "--run-id", "k",
        "--model-cache", str(tmp_path / "model-cache"), "--max-length", "64",
        "--batch-size", "250", "--micro-batch-size", "50", "--rows-per-file", "250",
        "--runner", "FnApiRunner", *multi,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
    run_url = scored.run_dir(output, "k")
    fs, run_path = storage.get_fs(run_url)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no part was written in time"
            fs.invalidate_cache()
            if fs.glob(f"{run_path}/attempt-*/scored/part-*.parquet"):
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:  # the SDK workers the launcher started are orphans now: end them too
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    fs.invalidate_cache()
    assert not storage.is_committed(run_url)  # killed mid-run: nothing committed
    killed = {p.split("/attempt-", 1)[1].split("/", 1)[0] for p in fs.find(run_path)}
    assert len(killed) == 1  # its parts are there, uncommitted

    # the killed launcher still holds the output's lease: the operator who killed it breaks it
    # (otherwise the next run waits for it to expire: tests/pipelines/test_score_lease.py)
    summary = _score(
        big_file_url, tiny_classifier_url, output, "k", tmp_path, multi, break_lease=True
    )
    assert summary["guards"]["lease_took_over"].startswith("run k ")
    assert summary["scored"] == summary["rows_in"] == N_ROWS and summary["accounted"]
    assert len(summary["scored_by_worker"]) == 2
    # counters from both SDK worker processes, summed by the runner
    assert summary["beam_metrics"]["scored"] == summary["beam_metrics"]["rows_read"] == N_ROWS
    ids = scored.read_run(output, "k").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_ROWS
    afs, path = storage.arrow_filesystem(storage.join(output, "scored"))
    table = ds.dataset(path, filesystem=afs, format="parquet", partitioning="hive").to_table()
    assert sorted(table.column("id").to_pylist()) == [f"r{i:05d}" for i in range(N_ROWS)]
    fs.invalidate_cache()
    assert not [p for p in fs.find(run_path) if "/attempt-" in p]  # the killed attempt is gone
