import os
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distil import storage


def _write_parquet(dir_url: str, name: str, n: int) -> None:
    table = pa.table({"x": list(range(n))})
    with storage.staged_file(dir_url, name) as f:
        pq.write_table(table, f)


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_parquet_round_trip_and_commit(kind, tmp_path, request):
    if kind == "local":
        url = str(tmp_path / "out")
    elif kind == "memory":
        url = f"memory://distil-test/{tmp_path.name}"
    else:
        url = request.getfixturevalue("s3_url")
    _write_parquet(url, "part-0.parquet", 5)
    assert not storage.is_committed(url)
    storage.commit(url, {"files": ["part-0.parquet"], "rows": 5})
    [f] = storage.committed_files(url)
    fs, path = storage.get_fs(f)
    with fs.open(path, "rb") as fh:
        assert pq.read_table(fh)["x"].to_pylist() == [0, 1, 2, 3, 4]
    # staging dirs are gone after commit
    fs, root = storage.get_fs(url)
    assert not fs.exists(f"{root}/_staging")


def test_s3_read_via_pyarrow_native_fs(s3_url):
    _write_parquet(s3_url, "a.parquet", 3)
    storage.commit(s3_url, {"files": ["a.parquet"]})
    fs, path = storage.arrow_filesystem(storage.committed_files(s3_url)[0])
    assert pq.read_table(path, filesystem=fs).num_rows == 3


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_writer_killed_before_commit_is_invisible(kind, tmp_path, request):
    """A real writer process dies (SIGKILL) after writing data, before its manifest."""
    url = str(tmp_path / "out") if kind == "local" else request.getfixturevalue("s3_url")
    script = textwrap.dedent(
        f"""
        import os, signal
        import pyarrow as pa, pyarrow.parquet as pq
        from distil import storage
        url = {url!r}
        with storage.staged_file(url, "part-0.parquet") as f:
            pq.write_table(pa.table({{"x": [1, 2, 3]}}), f)
        os.kill(os.getpid(), signal.SIGKILL)  # dies before storage.commit
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env=os.environ.copy())
    assert proc.returncode == -9
    assert storage.exists(storage.join(url, "part-0.parquet"))  # the data landed...
    assert not storage.is_committed(url)  # ...but nothing committed it
    with pytest.raises(storage.NotCommittedError):
        storage.committed_files(url)


def test_failed_write_leaves_nothing(tmp_path):
    url = str(tmp_path / "out")
    with pytest.raises(RuntimeError), storage.staged_file(url, "x.bin") as f:
        f.write(b"half")
        raise RuntimeError("boom")
    assert not storage.exists(storage.join(url, "x.bin"))


def test_markers_and_fingerprint(tmp_path):
    url = str(tmp_path)
    assert storage.read_marker(url, "shard-0") is None
    storage.mark_done(url, "shard-0", {"rows": 3})
    assert storage.read_marker(url, "shard-0") == {"rows": 3}
    assert storage.fingerprint({"a": 1, "b": 2}) == storage.fingerprint({"b": 2, "a": 1})
    assert storage.fingerprint({"a": 1}) != storage.fingerprint({"a": 2})


def test_s3_options_from_env_and_redaction(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    opts = storage.storage_options("s3://b/x")
    assert opts["endpoint_url"] == "http://127.0.0.1:1" and opts["key"] == "k"
    assert storage.storage_options("/tmp/x") == {}
    assert storage.redact("s3://user:pw@host/b") == "s3://***@host/b"
    assert storage.join("s3://b/x", "y", "z") == "s3://b/x/y/z"
