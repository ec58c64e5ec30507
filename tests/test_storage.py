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


def test_a_read_after_a_listing_sees_another_writers_rewrite(s3_url):
    """A listing caches each object's ETag; a later read must not pin it (another process
    rewrites pointers and run records between this process's listing and its read)."""
    import fsspec

    url = f"{s3_url}/rewritten/run.json"
    storage.write_json(url, {"v": 1})
    fs, path = storage.get_fs(url)
    fs.find(path.rsplit("/", 1)[0])  # the listing this process caches
    other = fsspec.filesystem("s3", skip_instance_cache=True, **storage.storage_options(url))
    with other.open(path, "wb") as f:  # another process's rewrite: a new ETag
        f.write(b'{"v": 2}')
    assert storage.read_json(url) == {"v": 2}


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


S3_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
)


@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path):
    """No AWS_* settings and no ~/.aws, so each test sets exactly what it means."""
    for k in S3_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_keys_and_session_token_reach_s3fs_and_arrow(clean_aws_env):
    import pyarrow.fs as pafs

    clean_aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "k")
    clean_aws_env.setenv("AWS_SECRET_ACCESS_KEY", "s")
    clean_aws_env.setenv("AWS_SESSION_TOKEN", "t")
    clean_aws_env.setenv("AWS_REGION", "eu-west-3")
    assert storage.storage_options("s3://b/x") == {
        "endpoint_url": "http://127.0.0.1:1",
        "key": "k",
        "secret": "s",
        "token": "t",
        "client_kwargs": {"region_name": "eu-west-3"},
    }
    arrow = storage.arrow_s3_options("s3://b/x")
    assert arrow == {
        "endpoint_override": "127.0.0.1:1",
        "scheme": "http",
        "access_key": "k",
        "secret_key": "s",
        "session_token": "t",
        "region": "eu-west-3",
    }
    assert pafs.S3FileSystem(**arrow).region == "eu-west-3"  # pyarrow accepts every kwarg
    assert storage.storage_options("/tmp/x") == {}


def test_no_keys_means_no_credential_kwargs_and_no_guessed_region(clean_aws_env):
    """The client's own chain (profile, ~/.aws, pod/instance role) must get to choose."""
    clean_aws_env.setenv("AWS_SESSION_TOKEN", "t")  # a token alone is not a credential
    assert storage.storage_options("s3://b/x") == {}
    assert storage.arrow_s3_options("s3://b/x") == {}
    clean_aws_env.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    clean_aws_env.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example.com/")
    assert storage.storage_options("s3://b/x") == {
        "endpoint_url": "https://s3.example.com/",
        "client_kwargs": {"region_name": "ap-south-1"},
    }
    assert storage.arrow_s3_options("s3://b/x") == {
        "endpoint_override": "s3.example.com",
        "scheme": "https",
        "region": "ap-south-1",
    }


def test_half_a_key_pair_is_an_error_naming_the_missing_variable(clean_aws_env):
    clean_aws_env.setenv("AWS_ACCESS_KEY_ID", "k")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY is not"):
        storage.storage_options("s3://b/x")


def test_profile_credentials_round_trip_on_real_s3(s3_server, clean_aws_env, tmp_path):
    """No AWS_* keys: s3fs and Arrow both find the profile in the shared credentials file."""
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[distil-test]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    clean_aws_env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    clean_aws_env.setenv("AWS_PROFILE", "distil-test")
    clean_aws_env.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    url = f"s3://{s3_server.bucket}/profile-{tmp_path.name}"
    assert "key" not in storage.storage_options(url)
    storage.write_bytes(storage.join(url, "a.bin"), b"via s3fs")
    assert storage.read_bytes(storage.join(url, "a.bin")) == b"via s3fs"
    _write_parquet(url, "b.parquet", 4)
    fs, path = storage.arrow_filesystem(storage.join(url, "b.parquet"))
    assert pq.read_table(path, filesystem=fs).num_rows == 4


def test_session_token_goes_on_the_wire_for_s3fs_and_arrow(s3_server, s3_url, monkeypatch):
    """SeaweedFS looks a request's keys up among STS sessions when it carries a token, so static
    keys + a made-up token are refused: the refusal shows that both clients sent the token."""
    storage.write_bytes(storage.join(s3_url, "a.bin"), b"x")
    _write_parquet(s3_url, "b.parquet", 2)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "made-up-token")
    with pytest.raises(PermissionError):
        storage.read_bytes(storage.join(s3_url, "a.bin"))
    fs, path = storage.arrow_filesystem(storage.join(s3_url, "b.parquet"))
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        pq.read_table(path, filesystem=fs)
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    assert storage.read_bytes(storage.join(s3_url, "a.bin")) == b"x"


def test_redaction_and_join():
    assert storage.redact("s3://user:pw@host/b") == "s3://***@host/b"
    assert storage.join("s3://b/x", "y", "z") == "s3://b/x/y/z"


def test_counting_filesystem_counts_the_bytes_read(tmp_path):
    """What a reader fetched through ``CountingFileSystem``: ranged reads count only their bytes."""
    (tmp_path / "f.bin").write_bytes(bytes(range(256)) * 40)
    counter = storage.CountingFileSystem(storage.get_fs(str(tmp_path))[0])
    with storage.open_for_ranges(str(tmp_path / "f.bin"), counter) as f:
        f.seek(1000)
        assert f.read(24) == (bytes(range(256)) * 40)[1000:1024]
    assert counter.bytes_read == 24 and counter.reads == 1
    assert counter.exists(str(tmp_path / "f.bin"))  # everything else is the wrapped fs


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_conditional_writes_create_once_and_swap_only_the_version_read(kind, tmp_path, request):
    url = (str(tmp_path) if kind == "local" else request.getfixturevalue("s3_url")) + "/x.json"
    assert storage.conditional_writes(url)
    assert storage.read_versioned(url) is None
    v1 = storage.create_exclusive(url, b"one")
    with pytest.raises(storage.WriteConflict):
        storage.create_exclusive(url, b"two")
    assert storage.read_versioned(url) == (b"one", v1)
    v2 = storage.replace_versioned(url, b"three", v1)
    with pytest.raises(storage.WriteConflict):  # a stale version loses, the object unchanged
        storage.replace_versioned(url, b"four", v1)
    assert storage.read_versioned(url) == (b"three", v2) and v2 != v1
    with pytest.raises(storage.WriteConflict):  # nothing there: nothing to swap
        storage.replace_versioned(url + ".missing", b"x", v2)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_racing_exclusive_creates_have_one_winner(kind, tmp_path, request):
    from concurrent.futures import ThreadPoolExecutor

    base = str(tmp_path) if kind == "local" else request.getfixturevalue("s3_url")
    for trial in range(5):
        url = f"{base}/race-{trial}.json"

        def create(i: int, url: str = url) -> int | None:
            try:
                storage.create_exclusive(url, f"writer {i}".encode())
                return i
            except storage.WriteConflict:
                return None

        with ThreadPoolExecutor(8) as pool:
            winners = [w for w in pool.map(create, range(8)) if w is not None]
        assert len(winners) == 1
        assert storage.read_bytes(url) == f"writer {winners[0]}".encode()
