"""Every artifact is addressed by an fsspec URL; this module is the only place that knows how.

Commit protocol (what makes reruns safe and partial output invisible):

* data files are written to ``<dir>/_staging/<token>/<name>`` and moved to ``<dir>/<name>``
  only once fully written (``staged_file``);
* an optional per-unit marker ``<dir>/_markers/<unit>.json`` says a unit of work (one input
  shard, say) is finished, so a rerun can skip it;
* ``manifest.json`` is written last (``commit``); readers (``read_manifest``/``open_committed``)
  trust a directory only when it has a manifest, and only the files the manifest lists.

S3 settings come from the standard variables (``AWS_ENDPOINT_URL[_S3]``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``); whatever
is not set is left to botocore's / Arrow's own chain (``AWS_PROFILE``, ``~/.aws``, web identity,
instance or pod role). Secrets are never logged. Writers never create a bucket (only
``distil storage check --create-bucket`` does): S3 has no directories, so nothing here calls
``makedirs`` there (s3fs would create a missing bucket: a typo would become a new bucket).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs

MANIFEST = "manifest.json"
STAGING = "_staging"
MARKERS = "_markers"


class NotCommittedError(FileNotFoundError):
    """Raised when a reader asks for output that has no committed manifest."""


def s3_endpoint() -> str | None:
    """``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO, R2 …); None means AWS."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    """``AWS_REGION`` / ``AWS_DEFAULT_REGION``; None lets botocore / Arrow resolve it (profile,
    instance metadata), never a guessed default."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def env_credentials() -> dict[str, str] | None:
    """Keys from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN`` for
    temporary credentials), or None so the client's own chain finds them (``AWS_PROFILE``,
    ``~/.aws/credentials``, web identity, pod/instance role). Half a key pair is an error."""
    key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key and not secret:
        return None
    if not key or not secret:
        have, missing = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if key
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise ValueError(
            f"{have} is set but {missing} is not: set both, or unset both to use AWS_PROFILE, "
            "~/.aws/credentials or the instance/pod role"
        )
    creds = {"key": key, "secret": secret}
    if os.environ.get("AWS_SESSION_TOKEN"):
        creds["token"] = os.environ["AWS_SESSION_TOKEN"]
    return creds


def storage_options(url: str) -> dict[str, Any]:
    """fsspec (s3fs) options for ``url``: only what the environment sets explicitly."""
    if protocol_of(url) != "s3":
        return {}
    opts: dict[str, Any] = {}
    endpoint = s3_endpoint()
    if endpoint:
        opts["endpoint_url"] = endpoint
    opts.update(env_credentials() or {})
    region = s3_region()
    if region:
        opts["client_kwargs"] = {"region_name": region}
    return opts


def arrow_s3_options(url: str) -> dict[str, Any]:
    """The same settings as ``storage_options``, spelled for ``pyarrow.fs.S3FileSystem``."""
    opts = storage_options(url)
    kwargs: dict[str, Any] = {}
    if "endpoint_url" in opts:
        scheme, host = opts["endpoint_url"].split("://", 1)
        kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
    if "key" in opts:
        kwargs.update(access_key=opts["key"], secret_key=opts["secret"])
        if "token" in opts:
            kwargs["session_token"] = opts["token"]
    if "client_kwargs" in opts:
        kwargs["region"] = opts["client_kwargs"]["region_name"]
    return kwargs


def protocol_of(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0]


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and protocol-free path for ``url`` (local paths become absolute)."""
    if protocol_of(url) == "file":
        url = os.path.abspath(url.removeprefix("file://"))
    fs, path = url_to_fs(url, **storage_options(url))
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL path segments without mangling the ``scheme://`` prefix."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://" + posixpath.join(rest, *parts)
    return os.path.join(url, *parts)


def arrow_filesystem(url: str):
    """A ``pyarrow.fs`` filesystem and path for ``url``.

    For ``s3://`` this is ``pyarrow.fs.S3FileSystem`` (s3fs wrapped in pyarrow sometimes aborted at
    interpreter exit; the native one did not), otherwise fsspec wrapped for pyarrow.
    """
    import pyarrow.fs as pafs

    if protocol_of(url) == "s3":
        return pafs.S3FileSystem(**arrow_s3_options(url)), url.split("://", 1)[1]
    fs, path = get_fs(url)
    if protocol_of(url) == "file":
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    """The object as it is now. One GET: ``fs.open`` on S3 pins the ETag of a listing this
    process may have cached, and fails once another process has rewritten the object (a
    ``latest.json`` pointer, a run record)."""
    fs, path = get_fs(url)
    return fs.cat_file(path)


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object. A single PUT on S3; tmp + rename locally, so readers never see half."""
    fs, path = get_fs(url)
    parent = posixpath.dirname(path)
    if protocol_of(url) == "file":
        os.makedirs(parent, exist_ok=True)
        os.replace(_local_tmp(path, data), path)
        return
    make_parent_dirs(fs, url, path)
    with fs.open(path, "wb") as f:
        f.write(data)


def _local_tmp(path: str, data: bytes) -> str:
    """``data`` written and synced to a new temporary file next to ``path``; its path."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def make_parent_dirs(fs: fsspec.AbstractFileSystem, url: str, path: str) -> None:
    """Directories for filesystems that have them; on S3 ``makedirs`` can only create buckets."""
    parent = posixpath.dirname(path)
    if parent and protocol_of(url) != "s3":
        fs.makedirs(parent, exist_ok=True)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True).encode())


@contextlib.contextmanager
def staged_file(dir_url: str, name: str, mode: str = "wb") -> Iterator[IO]:
    """Open ``dir_url/name`` for writing via a staging path; moved into place only on success."""
    fs, dir_path = get_fs(dir_url)
    token = uuid.uuid4().hex
    staging = posixpath.join(dir_path, STAGING, token, name)
    final = posixpath.join(dir_path, name)
    make_parent_dirs(fs, dir_url, staging)
    try:
        with fs.open(staging, mode) as f:
            yield f
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(posixpath.join(dir_path, STAGING, token), recursive=True)
        raise
    make_parent_dirs(fs, dir_url, final)
    if protocol_of(dir_url) == "file":
        os.replace(staging, final)
    else:
        fs.mv(staging, final)
    with contextlib.suppress(Exception):
        fs.rm(posixpath.join(dir_path, STAGING, token), recursive=True)


def marker_url(dir_url: str, unit: str) -> str:
    return join(dir_url, MARKERS, f"{unit}.json")


def mark_done(dir_url: str, unit: str, info: dict[str, Any]) -> None:
    """Record that one unit of work is finished (its outputs are already in place)."""
    write_json(marker_url(dir_url, unit), info)


def read_marker(dir_url: str, unit: str) -> dict[str, Any] | None:
    url = marker_url(dir_url, unit)
    try:
        return read_json(url)
    except FileNotFoundError:
        return None


def read_markers(dir_url: str, units: list[str]) -> dict[str, dict[str, Any]]:
    """The markers of those ``units`` that have one, fetched in one concurrent call (s3fs
    ``cat``): a plan of thousands of units is checked in seconds, not one GET at a time."""
    if not units:
        return {}
    fs, _ = get_fs(dir_url)
    paths = {get_fs(marker_url(dir_url, u))[1]: u for u in units}
    found = fs.cat(list(paths), on_error="omit")
    return {paths[p]: json.loads(data) for p, data in found.items() if p in paths}


def is_committed(dir_url: str) -> bool:
    return exists(join(dir_url, MANIFEST))


def commit(dir_url: str, manifest: dict[str, Any], cleanup: bool = True) -> None:
    """Write the manifest last: from now on the directory's listed files are visible to readers."""
    write_json(join(dir_url, MANIFEST), manifest)
    if cleanup:
        fs, path = get_fs(dir_url)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(posixpath.join(path, STAGING), recursive=True)


def read_manifest(dir_url: str) -> dict[str, Any]:
    """The committed manifest of ``dir_url``; ``NotCommittedError`` if its writer never finished."""
    try:
        return read_json(join(dir_url, MANIFEST))
    except FileNotFoundError as e:
        raise NotCommittedError(
            f"{dir_url} has no {MANIFEST}: it was never committed (writer still running or died)"
        ) from e


def committed_files(dir_url: str, key: str = "files") -> list[str]:
    """URLs of the files a committed manifest lists (entries are names relative to ``dir_url``)."""
    manifest = read_manifest(dir_url)
    out = []
    for entry in manifest[key]:
        name = entry["name"] if isinstance(entry, dict) else entry
        out.append(resolve(dir_url, name))
    return out


def resolve(dir_url: str, name: str) -> str:
    """``dir_url/name`` where ``name`` may climb out with ``..`` (a manifest that lists files
    published next to its directory); object stores take ``..`` literally, so it is folded here."""
    url = join(dir_url, name)
    if ".." not in name.split("/"):
        return url
    if "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://" + posixpath.normpath(rest)
    return os.path.normpath(url)


def copy_file(src: str, dst: str) -> None:
    """Copy one object within a filesystem (a server-side copy on S3: no bytes through here)."""
    fs, src_path = get_fs(src)
    _, dst_path = get_fs(dst)
    make_parent_dirs(fs, dst, dst_path)
    if protocol_of(dst) == "file":  # readers (dataset scans skip dot files) never see half a file
        head, tail = posixpath.split(dst_path)
        tmp = posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex}")
        fs.copy(src_path, tmp)
        os.replace(tmp, dst_path)
    else:
        fs.copy(src_path, dst_path)


def remove(url: str) -> None:
    fs, path = get_fs(url)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(path, recursive=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_url(url: str, chunk: int = 1 << 22) -> str:
    fs, path = get_fs(url)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-able object (sorted keys), used for cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def copy_dir_to_local(url: str, local_dir: str) -> str:
    """Copy a directory (e.g. a model checkpoint) from any URL into ``local_dir``."""
    if protocol_of(url) == "file":
        return get_fs(url)[1]
    fs, path = get_fs(url)
    os.makedirs(local_dir, exist_ok=True)
    for src in fs.find(path):
        rel = posixpath.relpath(src, path)
        if rel.startswith((STAGING, MARKERS)):
            continue
        dst = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        fs.get(src, dst)
    return local_dir


def upload_dir(local_dir: str, url: str) -> None:
    """Copy a local directory to ``url`` file by file (each file staged, so none is half-written)."""
    for root, _, files in os.walk(local_dir):
        for fname in sorted(files):
            src = os.path.join(root, fname)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            with open(src, "rb") as f:
                write_bytes(join(url, rel), f.read())


def redact(url: str) -> str:
    """URL safe to print (drops any user:secret@ part)."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


class CountingFileSystem:
    """An fsspec filesystem that counts the bytes read through the files it opens.

    Readers that take an optional ``fs`` (``TeacherCache``, ``PreparedBatches``) open every file
    through it, so a test or a benchmark can check what a reader really fetched (footers, its own
    row groups) instead of trusting the plan. Everything but ``open`` is the wrapped filesystem's.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem):
        import threading

        self.fs = fs
        self.bytes_read = 0
        self.reads = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
            self.reads += 1

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> IO:
        f = self.fs.open(path, mode, **kwargs)
        return _CountingFile(f, self) if "r" in mode else f

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


class _CountingFile:
    def __init__(self, f: IO, counter: CountingFileSystem):
        self._f, self._counter = f, counter

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._counter.add(len(data))
        return data

    def readinto(self, buf: Any) -> int:
        n = self._f.readinto(buf)
        self._counter.add(n or 0)
        return n

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def open_for_ranges(url: str, fs: Any = None) -> IO:
    """``url`` opened for ranged reads: no read-ahead cache, so reading a Parquet footer or one
    row group fetches just those bytes (fsspec's default S3 cache reads blocks of 5 MB).
    ``fs`` (e.g. a ``CountingFileSystem``) replaces the URL's own filesystem."""
    own, path = get_fs(url)
    return (fs or own).open(path, "rb", cache_type="none")


# --- Conditional writes: the one-writer lease of an output (distil.score.lease) ----------
#
# ``create_exclusive`` writes an object only if there is none; ``replace_versioned`` only if it
# is still the version read. S3 does both in the store itself (``If-None-Match: *`` and
# ``If-Match: <ETag>`` on PutObject, through botocore: s3fs and pyarrow cannot send them); a
# local (or NFS) path does them under an ``flock`` on a lock file next to the object, which the
# kernel releases when its holder dies, so a killed process never leaves it locked. Any other
# store (gs://, az:// …) gets a read-check-write that is not atomic: ``conditional_writes`` says
# which, so callers can warn.


class WriteConflict(Exception):
    """A conditional write lost: the object exists (create), or changed or vanished (replace)."""


def conditional_writes(url: str) -> bool:
    """Whether ``create_exclusive`` / ``replace_versioned`` are atomic on ``url``'s store."""
    return protocol_of(url) in ("s3", "file")


def s3_client():
    """A botocore S3 client with the settings s3fs gets from ``storage_options`` (endpoint,
    keys, region; otherwise botocore's own chain), cached per setting."""
    creds = env_credentials() or {}
    return _s3_client(s3_endpoint(), s3_region(), creds.get("key"), creds.get("secret"),
                      creds.get("token"))  # fmt: skip


@functools.lru_cache(maxsize=4)
def _s3_client(endpoint, region, key, secret, token):
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )


def _s3_key(url: str) -> tuple[str, str]:
    bucket, _, key = get_fs(url)[1].partition("/")
    return bucket, key


def _s3_conflict(e: Exception) -> bool:
    # 412: the condition failed; 409: AWS's answer to two conditional writes racing on one key
    code = getattr(e, "response", {}).get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409")


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    import fcntl

    os.makedirs(posixpath.dirname(path), exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_versioned(url: str) -> tuple[bytes, str] | None:
    """The object's bytes and version (S3: its ETag; elsewhere the sha256 of the bytes), or
    None when there is none."""
    if protocol_of(url) == "s3":
        bucket, key = _s3_key(url)
        client = s3_client()
        try:
            got = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        return got["Body"].read(), got["ETag"]
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        return None
    return data, sha256_bytes(data)


def _s3_put_if(url: str, data: bytes, conflict: str, **condition: str) -> str:
    """A PUT with an ``If-…`` condition; the new ETag, or ``WriteConflict`` (``conflict``)."""
    bucket, key = _s3_key(url)
    try:
        return s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
    except Exception as e:
        if _s3_conflict(e):
            raise WriteConflict(f"{redact(url)} {conflict}") from e
        raise


def create_exclusive(url: str, data: bytes) -> str:
    """Write ``url`` only if no object is there; its version, or ``WriteConflict``."""
    if protocol_of(url) == "s3":
        return _s3_put_if(url, data, "exists", IfNoneMatch="*")
    if protocol_of(url) == "file":
        path = get_fs(url)[1]
        with _local_lock(path):
            tmp = _local_tmp(path, data)
            try:
                os.link(tmp, path)  # fails if the name exists: an exclusive create, whole
            except FileExistsError as e:
                raise WriteConflict(f"{path} exists") from e
            finally:
                os.unlink(tmp)
        return sha256_bytes(data)
    if exists(url):
        raise WriteConflict(f"{redact(url)} exists")
    write_bytes(url, data)
    return sha256_bytes(data)


def replace_versioned(url: str, data: bytes, version: str) -> str:
    """Overwrite ``url`` only if it is still at ``version``; the new version, or
    ``WriteConflict``."""
    if protocol_of(url) == "s3":
        return _s3_put_if(url, data, "changed", IfMatch=version)
    if protocol_of(url) == "file":
        path = get_fs(url)[1]
        with _local_lock(path):
            current = read_versioned(url)
            if current is None or current[1] != version:
                raise WriteConflict(f"{path} changed")
            write_bytes(url, data)  # tmp + rename: readers see the old or the new bytes
        return sha256_bytes(data)
    current = read_versioned(url)
    if current is None or current[1] != version:
        raise WriteConflict(f"{redact(url)} changed")
    write_bytes(url, data)
    return sha256_bytes(data)
