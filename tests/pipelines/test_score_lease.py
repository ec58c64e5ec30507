"""distil score with more than one run on one output, and runs that die: real Beam (FnApiRunner),
launchers as real processes, local paths and the real SeaweedFS S3, the tiny real classifier.

Two runs started together: one scores, the other is refused before it reads anything, and the
dataset has each row once; a second run of the same run id started while the first runs: the
same, and the output stays usable; a run killed with ``kill -9`` leaves its lease, which the
next run takes over once it expires (or at once with ``--break-lease``); a launcher killed in
the middle of its publish: the next run finishes that publish, each row once. An output that is
a file or read-only is refused in seconds, before the model is looked at."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from score_fixtures import run_score

from distil import storage
from distil.score import scored
from distil.score.lease import OutputBusyError, lease_url

REPO = Path(__file__).resolve().parents[2]
FILES, ROWS = 4, 400  # per file


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(input folder, output) on local disk or on the test S3 server, the inputs written. The
    lease itself is tested on both stores in tests/score/test_lease.py; here the runs that
    take a test's time are spread over the two."""
    if request.param == "local":
        base = str(tmp_path / "data")
    else:
        base = f"s3://{request.getfixturevalue('s3_server').bucket}/lease-{uuid.uuid4().hex[:8]}"
    for f in range(FILES):
        lines = [json.dumps({"id": f"f{f}-{i}", "text": f"review {i} of file {f}, fine"})
                 for i in range(ROWS)]  # fmt: skip
        storage.write_bytes(f"{base}/in/r{f}.jsonl", ("\n".join(lines) + "\n").encode())
    return f"{base}/in", f"{base}/out"


def _args(inp: str, model: str, out: str, run_id: str, cache: Path, *extra: str) -> list[str]:
    return [
        "--input", inp, "--model", model, "--output", out, "--run-id", run_id,
        "--model-cache", str(cache), "--max-length", "32", "--batch-size", "64",
        "--micro-batch-size", "32", "--rows-per-file", "100", "--runner", "FnApiRunner", *extra,
    ]  # fmt: skip


def _launch(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """The scheduled job's command, ``python pipelines/score_reviews.py …``, as its own process
    (group): INFO logs on, a busy output is exit 2 with one error line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "pipelines/score_reviews.py"), *args],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )


def _score(inp, model, out, run_id, tmp_path, **kw) -> dict:
    return run_score(inp, model, out, run_id, tmp_path, max_length=32, batch_size=64,
                     micro_batch_size=32, rows_per_file=100, **kw)  # fmt: skip


def _holder(out: str) -> dict | None:
    got = storage.read_versioned(lease_url(out))
    return json.loads(got[0]) if got else None


def _wait_for_holder(out: str, procs: list[subprocess.Popen], logs: list[Path], timeout=180):
    deadline = time.time() + timeout
    while True:
        holder = _holder(out)
        if holder and not holder["released"]:
            return holder
        for p, log in zip(procs, logs, strict=True):
            assert p.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no run took the lease in time"
        time.sleep(0.05)


def _end(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGCONT)
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)


def _dataset_ids(out: str) -> list[str]:
    fs, path = storage.arrow_filesystem(storage.join(out, "scored"))
    table = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()
    return sorted(table.column("id").to_pylist())


ALL_IDS = sorted(f"f{f}-{i}" for f in range(FILES) for i in range(ROWS))


def _refused_before_reading(log: Path, holder: dict) -> str:
    text = log.read_text()
    assert "score_reviews: error: --output" in text, text[-3000:]
    assert f"is being written by run {holder['run_id']} ({holder['attempt']}" in text
    assert f"lease expiring {holder['expires_at'][:16]}" in text  # the expiry, to the minute
    # nothing listed, read or loaded: the first INFO line of the work is never reached
    assert "scoring " not in text and "INFO:distil.score:read " not in text, text[-3000:]
    assert "Loading weights" not in text
    return text


@pytest.mark.timeout(300)
def test_two_runs_started_together_one_scores_one_is_refused_before_reading(
    where, tiny_classifier_url, tmp_path
):
    inp, out = where
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        _launch(_args(inp, tiny_classifier_url, out, rid, tmp_path / "cache", "--incremental"), log)
        for rid, log in zip(("night-a", "night-b"), logs, strict=True)
    ]
    try:
        holder = _wait_for_holder(out, procs, logs)
        # the holder is held still until the other has tried: it must find the lease taken
        os.kill(holder["pid"], signal.SIGSTOP)
        winner = next(i for i, p in enumerate(procs) if p.pid == holder["pid"])
        loser = 1 - winner
        assert procs[loser].wait(180) == 2, logs[loser].read_text()[-3000:]
        os.kill(holder["pid"], signal.SIGCONT)
        assert procs[winner].wait(180) == 0, logs[winner].read_text()[-3000:]
    finally:
        _end(procs)
    _refused_before_reading(logs[loser], holder)
    loser_id = ("night-a", "night-b")[loser]
    fs, out_path = storage.get_fs(out)
    fs.invalidate_cache()
    assert not fs.exists(f"{out_path}/run_id={loser_id}")
    assert _dataset_ids(out) == ALL_IDS  # each row once
    manifest = storage.read_manifest(scored.run_dir(out, holder["run_id"]))
    assert len(manifest["ledger"]) == FILES
    assert _holder(out)["released"] is True


@pytest.mark.timeout(300)
def test_same_run_id_started_while_it_runs_is_refused_and_the_output_stays_usable(
    tiny_classifier_url, s3_server, tmp_path
):
    base = f"s3://{s3_server.bucket}/same-id-{uuid.uuid4().hex[:8]}"
    inp, out = f"{base}/in", f"{base}/out"
    for f in range(FILES):
        lines = [json.dumps({"id": f"f{f}-{i}", "text": f"review {i}"}) for i in range(ROWS)]
        storage.write_bytes(f"{inp}/r{f}.jsonl", ("\n".join(lines) + "\n").encode())
    args = _args(inp, tiny_classifier_url, out, "nightly", tmp_path / "cache", "--incremental")
    first = _launch(args, tmp_path / "first.log")
    procs = [first]
    try:
        holder = _wait_for_holder(out, [first], [tmp_path / "first.log"])
        os.kill(first.pid, signal.SIGSTOP)  # "still running" for as long as the second needs
        second = _launch(args, tmp_path / "second.log")
        procs.append(second)
        assert second.wait(180) == 2, (tmp_path / "second.log").read_text()[-3000:]
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(180) == 0, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        _end(procs)
    _refused_before_reading(tmp_path / "second.log", holder)
    # usable: the run reads through its manifest, the dataset has each row once, the next
    # incremental run plans from the ledger and skips every file
    assert sorted(scored.read_run(out, "nightly").column("id").to_pylist()) == ALL_IDS
    assert _dataset_ids(out) == ALL_IDS
    nxt = _score(inp, tiny_classifier_url, out, "next", tmp_path, incremental=True)
    assert (nxt["rows_in"], nxt["files_skipped"]) == (0, FILES)


def _kill_when_scoring(args, log, out, env=None) -> dict:
    """Start a launcher, ``kill -9`` it (and its group) once it holds the lease and has written
    a part; returns the lease it left behind."""
    proc = _launch(args, log, env)
    try:
        holder = _wait_for_holder(out, [proc], [log])
        run_url = scored.run_dir(out, holder["run_id"])
        fs, run_path = storage.get_fs(run_url)
        deadline = time.time() + 120
        while not fs.glob(f"{run_path}/attempt-*/scored/part-*.parquet"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no part written in time"
            fs.invalidate_cache()
            time.sleep(0.05)
    finally:
        _end([proc])
    return holder


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["local"], indirect=True)
def test_a_killed_runs_lease_expires_and_the_next_run_takes_over(
    where, tiny_classifier_url, tmp_path
):
    inp, out = where
    args = _args(inp, tiny_classifier_url, out, "nightly", tmp_path / "cache",
                 "--lease-seconds", "10")  # fmt: skip
    dead = _kill_when_scoring(args, tmp_path / "killed.log", out)
    assert not _holder(out)["released"]  # kill -9: nobody released it
    t0 = time.time()
    with pytest.raises(OutputBusyError, match="is being written by run nightly"):
        _score(inp, tiny_classifier_url, out, "retry", tmp_path)
    assert time.time() - t0 < 10
    time.sleep(max(0.0, _holder(out)["expires_unix"] - time.time()) + 0.5)
    summary = _score(inp, tiny_classifier_url, out, "nightly", tmp_path)
    assert summary["guards"]["lease_took_over"].startswith(f"run nightly ({dead['attempt']}")
    assert summary["scored"] == FILES * ROWS and summary["accounted"]
    assert _dataset_ids(out) == ALL_IDS
    fs, run_path = storage.get_fs(scored.run_dir(out, "nightly"))
    fs.invalidate_cache()
    assert not [p for p in fs.find(run_path) if "/attempt-" in p]  # the killed attempt's parts
    assert _holder(out)["released"] is True


@pytest.mark.timeout(180)
def test_break_lease_takes_a_live_lease_and_without_it_nothing_is_read(
    tiny_classifier_url, tmp_path, caplog
):
    from distil.score.lease import acquire

    out = str(tmp_path / "out")
    acquire(out, "stuck", "attempt-stuck", 3600)  # a run that will not come back
    t0 = time.time()
    # not even the input or the model is looked at: neither exists
    with pytest.raises(OutputBusyError, match=r"run stuck \(attempt-stuck"):
        _score(str(tmp_path / "no-input"), str(tmp_path / "no-model"), out, "r", tmp_path)
    assert time.time() - t0 < 10
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "r.jsonl").write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "also"}\n')
    with caplog.at_level("WARNING", logger="distil.score"):
        summary = _score(str(inp), tiny_classifier_url, out, "r", tmp_path, break_lease=True)
    assert "--break-lease: broke the lease of run stuck" in caplog.text
    assert summary["scored"] == 2 and summary["guards"]["lease_took_over"].startswith("run stuck")
    # what bench/score_scale.py adds up: each guard timed where it ran
    guards = summary["guards"]
    assert all(guards[k] > 0 for k in ("output_check_s", "lease_s", "lease_commit_check_s"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["s3"], indirect=True)
def test_launcher_killed_during_publish_then_rerun_leaves_each_row_once(
    where, tiny_classifier_url, tmp_path
):
    inp, out = where
    log = tmp_path / "publish.log"
    args = _args(inp, tiny_classifier_url, out, "n1", tmp_path / "cache", "--incremental")
    # the launcher runs the commit step itself (FnApiRunner, one process): it dies by SIGKILL
    # right after publishing its first part into the dataset
    proc = _launch(args, log, {"DISTIL_SCORE_CRASH_AT": "publish"})
    try:
        assert proc.wait(180) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        _end([proc])
    manifest = storage.read_manifest(scored.run_dir(out, "n1"))
    assert manifest["published"] is False and len(manifest["files"]) > 1
    # one part in the dataset, the others not: a publish cut in the middle
    assert len(_dataset_ids(out)) == manifest["files"][0]["rows"] < FILES * ROWS
    # the next night (the operator breaks the dead launcher's lease): it finishes n1's publish,
    # scores nothing again, and the dataset has each row once
    nxt = _score(inp, tiny_classifier_url, out, "n2", tmp_path, incremental=True, break_lease=True)
    assert (nxt["rows_in"], nxt["files_skipped"]) == (0, FILES)
    assert storage.read_manifest(scored.run_dir(out, "n1"))["published"] is True
    assert _dataset_ids(out) == ALL_IDS
    # and a rerun of n1 itself replaces it: still once
    again = _score(inp, tiny_classifier_url, out, "n1", tmp_path)
    assert again["scored"] == FILES * ROWS and _dataset_ids(out) == ALL_IDS


@pytest.mark.timeout(180)
def test_an_output_that_is_a_file_or_read_only_is_refused_in_seconds(
    tmp_path, read_only_dir, files_not_folders
):
    # the model and the input do not exist: a refusal that looked at them would say so
    for out, why in (
        *((f, "is a file, not a folder") for f in files_not_folders),
        (str(read_only_dir / "scored"), "cannot be written"),
    ):
        t0 = time.time()
        res = subprocess.run(
            [sys.executable, "-m", "distil.cli", "score", "--input", str(tmp_path / "none"),
             "--model", str(tmp_path / "no-model"), "--output", out],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        took = time.time() - t0
        assert res.returncode == 2, res.stderr[-3000:]
        assert f"distil score: error: --output {out} {why}" in res.stderr
        assert "no-model" not in res.stderr and "Traceback" not in res.stderr
        assert took < 10, f"{out}: refused after {took:.1f} s"
