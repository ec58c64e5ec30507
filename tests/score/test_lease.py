"""The one-writer lease of a scoring output and the checks before any work, on local paths and
the test S3 server: one winner among runs that race, refusal naming the holder and expiry,
renewal, takeover of an expired lease, --break-lease, a lost lease, release; an output that is
a file or read-only refused. (The pipeline runs: tests/pipelines/test_score_lease.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from distil import storage
from distil.score import lease
from distil.score.lease import (
    LeaseKeeper,
    LeaseLostError,
    OutputBusyError,
    OutputNotWritableError,
    acquire,
    check_output,
)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_url")


def _holder(output: str) -> dict:
    # read as the lease code reads it: a plain GET. s3fs pins the ETag it listed, so its read of
    # an object a LeaseKeeper replaces every 0.1 s can fail with "no longer exists"
    found = storage.read_versioned(lease.lease_url(output))
    assert found is not None
    return json.loads(found[0])


def test_one_of_many_racing_runs_gets_the_lease(output):
    def take(i: int):
        try:
            return acquire(output, f"run-{i}", f"attempt-{i}", 60)
        except OutputBusyError as e:
            return e

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(take, range(8)))
    won = [g for g in got if isinstance(g, lease.Lease)]
    assert len(won) == 1
    holder = _holder(output)
    assert holder["run_id"] == won[0].run_id and holder["token"] == won[0].token
    for refused in (g for g in got if isinstance(g, OutputBusyError)):
        msg = str(refused)
        assert f"run {won[0].run_id} ({won[0].attempt}, host " in msg
        assert f"pid {os.getpid()}" in msg and holder["expires_at"] in msg
        assert "--break-lease" in msg


def test_renew_release_and_take_a_released_lease(output):
    first = acquire(output, "a", "attempt-a", 60)
    before = _holder(output)["expires_unix"]
    time.sleep(0.05)
    first.renew()
    assert _holder(output)["expires_unix"] > before and first.renewals == 1
    # another process of the same run (the Beam step that commits) renews from the handle
    lease.Lease.from_handle(first.handle()).renew()
    first.renew()  # the launcher's version is stale now: it reads again and renews
    assert _holder(output)["pid"] == os.getpid()
    with pytest.raises(OutputBusyError):
        acquire(output, "b", "attempt-b", 60)
    first.release()
    assert _holder(output)["released"] is True
    second = acquire(output, "b", "attempt-b", 60)
    assert second.took_over is None  # a released lease is free, nothing was taken from anyone
    assert _holder(output)["run_id"] == "b"


def test_an_expired_lease_is_taken_over_and_its_run_cannot_commit(output, caplog):
    dead = acquire(output, "crashed", "attempt-c", 1)  # its launcher "dies": no renewal
    with pytest.raises(OutputBusyError, match="run crashed"):
        acquire(output, "next", "attempt-n", 60)
    time.sleep(1.2)
    with caplog.at_level("WARNING", logger="distil.score"):
        taken = acquire(output, "next", "attempt-n", 60)
    assert taken.took_over["run_id"] == "crashed"
    assert "took over the expired the lease of run crashed" in caplog.text
    with pytest.raises(LeaseLostError, match="held by run next"):
        dead.renew()  # what the crashed run's commit step does first: it stops there
    dead.release()  # not its lease any more: nothing happens
    assert _holder(output)["run_id"] == "next" and not _holder(output)["released"]


def test_break_lease_takes_a_live_lease(output, caplog):
    live = acquire(output, "stuck", "attempt-s", 600)
    with caplog.at_level("WARNING", logger="distil.score"):
        broke = acquire(output, "operator", "attempt-o", 60, break_lease=True)
    assert broke.took_over["run_id"] == "stuck" and "--break-lease: broke" in caplog.text
    with pytest.raises(LeaseLostError):
        live.renew()


def test_keeper_renews_while_the_run_runs(output):
    held = acquire(output, "long", "attempt-l", 0.3)  # renewed every 0.1 s
    with LeaseKeeper(held) as keeper:
        time.sleep(1.0)  # three times the lease's life
        assert _holder(output)["expires_unix"] > time.time()
    assert held.renewals >= 5 and keeper.lost is None
    with pytest.raises(OutputBusyError):
        acquire(output, "other", "attempt-x", 60)


def test_holder_that_is_gone_from_this_host_is_named_in_the_refusal(tmp_path):
    out = str(tmp_path / "out")
    held = acquire(out, "gone", "attempt-g", 600)
    body = json.loads(storage.read_bytes(lease.lease_url(out)))
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    body["pid"] = dead_pid.pid
    storage.write_bytes(lease.lease_url(out), json.dumps(body).encode())
    with pytest.raises(OutputBusyError, match="not running on this host"):
        acquire(out, "next", "attempt-n", 60)
    assert held.run_id == "gone"


def test_output_checks_refuse_a_file_an_object_and_an_unwritable_folder(
    tmp_path, s3_url, read_only_dir, files_not_folders
):
    for out in files_not_folders:
        with pytest.raises(OutputNotWritableError, match="is a file, not a folder"):
            check_output(out)
    with pytest.raises(OutputNotWritableError, match="cannot be written"):
        check_output(str(read_only_dir / "out"))
    with pytest.raises(OutputNotWritableError, match="cannot be written"):
        check_output(f"{files_not_folders[0]}/below")
    # a writable one passes and keeps nothing of the probe
    for out in (str(tmp_path / "fresh"), f"{s3_url}/fresh"):
        check_output(out)
        fs, path = storage.get_fs(out)
        fs.invalidate_cache()
        # (SeaweedFS may keep the emptied folder as an entry: look for the probes themselves)
        found = fs.find(path, withdirs=True)
        assert not [p for p in found if "distil-check" in p or "_lease-probe" in p]
        assert lease._conditional_create_honoured(out)  # SeaweedFS refuses a second create


def test_a_lease_object_this_code_did_not_write_is_refused_until_broken(output):
    storage.write_bytes(lease.lease_url(output), b"someone's notes")
    with pytest.raises(OutputBusyError, match="is not a lease this program wrote"):
        acquire(output, "r", "attempt-r", 60)
    taken = acquire(output, "r", "attempt-r", 60, break_lease=True)
    assert taken.took_over is None and _holder(output)["run_id"] == "r"
