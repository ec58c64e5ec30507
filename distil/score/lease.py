"""One writer per scoring output: the lease ``OUTPUT/_lease.json``, and the checks that run
before any work (the output is a folder, and writable).

A run takes the lease before it lists or reads an input file or loads the model, and keeps it
until its commit and publish are done: so two ``distil score`` runs on one output (a backfill
beside the nightly job, a retried job whose first attempt still runs) can never plan the same
files, and a publish never deletes what another run writes.

The lease is a small JSON object holding the run id, attempt, host, pid and an expiry. It is
created with the store's conditional create (S3 ``If-None-Match: *``; a local path: an exclusive
create under an ``flock``) and renewed, taken over, or released with a compare-and-swap on the
version read (S3 ``If-Match: <ETag>``; locally the sha256 of the bytes under the same ``flock``):
``distil.storage.create_exclusive`` / ``replace_versioned``. The launcher renews it every third
of ``--lease-seconds`` from a thread (``LeaseKeeper``) while the pipeline runs; the step that
commits the manifest and the ledger renews it once more first, so a run whose lease was taken
from it (expired while its launcher was stopped, or broken with ``--break-lease``) fails
instead of committing.

A second run finds the lease held and stops with ``OutputBusyError`` naming the holder and the
expiry. A lease past its expiry (its run died: ``kill -9``, a lost node) is taken over by the
next run, with a warning; ``--break-lease`` takes it at once, for an operator who knows the
holder is dead. A released lease (the object stays, ``released: true``) is taken without a word.

Stores without conditional writes (gs://, az:// … with this build) get the same protocol with a
plain read-check-write: a run started while another holds the lease is still refused, but two
runs started within the same second can both take it. The run says so in a warning.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from distil import storage
from distil.config import ConfigError

log = logging.getLogger("distil.score")

LEASE = "_lease.json"
# How many times a compare-and-swap that lost is retried after reading the object again
CAS_TRIES = 5


class OutputBusyError(ConfigError):
    """Another run holds the output's lease."""


class OutputNotWritableError(ConfigError):
    """The output is a file, or cannot be written."""


class LeaseLostError(RuntimeError):
    """This run's lease was taken over (it expired, or was broken) while the run ran."""


def lease_url(output: str) -> str:
    return storage.join(output, LEASE)


def check_output(output: str) -> float:
    """Refuse an output that is a file or cannot be written (a probe object written, read back
    and removed: ``distil storage check``), in seconds, before any work; warn if its store
    ignores conditional creates. Returns the time it took."""
    from distil.ops.storage_check import check

    t0 = time.perf_counter()
    fs, path = storage.get_fs(output)
    shown = storage.redact(output)
    try:
        is_file = fs.isfile(path)
    except OSError as e:
        raise OutputNotWritableError(f"--output {shown}: cannot be read: {e}") from e
    if is_file:
        raise OutputNotWritableError(
            f"--output {shown} is a file, not a folder: the run writes the datasets scored/ and "
            "dead_letter/ and a run_id=<id>/ folder under it; name a folder"
        )
    res = check(output, identity=False)
    if not res["ok"]:
        raise OutputNotWritableError(f"--output {shown} cannot be written: {res['reason']}")
    if storage.conditional_writes(output) and not _conditional_create_honoured(output):
        log.warning(
            "%s: the store accepted a second conditional create of the same object (it ignores "
            "If-None-Match), so the lease is only a read-check-write here: two runs started "
            "within the same second could both take it. Keep one scheduler for this output",
            shown,
        )
    return time.perf_counter() - t0


def _conditional_create_honoured(output: str) -> bool:
    """Whether the store refuses a second exclusive create of one object (S3-compatible stores
    that ignore ``If-None-Match`` overwrite instead); local paths always do."""
    if storage.protocol_of(output) != "s3":
        return True
    probe = storage.join(output, f"_lease-probe-{uuid.uuid4().hex}")
    try:
        storage.create_exclusive(probe, b"")
        try:
            storage.create_exclusive(probe, b"")
            return False
        except storage.WriteConflict:
            return True
    finally:
        storage.remove(probe)


def _now() -> float:
    return time.time()


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder's process is alive, if it ran on this host (None: another host)."""
    if holder.get("host") != socket.gethostname() or not holder.get("pid"):
        return None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _parse(data: bytes) -> dict[str, Any] | None:
    """A lease object's holder, or None for bytes that are not a lease this code wrote."""
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    keys = ("run_id", "attempt", "token", "host", "pid", "expires_unix", "released")
    return holder if isinstance(holder, dict) and all(k in holder for k in keys) else None


def describe(holder: dict[str, Any]) -> str:
    """The holder of a lease, for messages: run, attempt, host, pid and expiry."""
    left = holder["expires_unix"] - _now()
    when = f"{_iso(holder['expires_unix'])} ({'in' if left >= 0 else 'expired'} {abs(left):.0f} s"
    when += ")" if left >= 0 else " ago)"
    return (
        f"run {holder['run_id']} ({holder['attempt']}, host {holder['host']}, pid "
        f"{holder['pid']}), lease expiring {when}"
    )


@dataclass
class Lease:
    """This run's hold on an output. ``version`` is the object's version as this process last
    wrote it (None: not known here, e.g. in the Beam worker that commits: read first)."""

    url: str
    token: str
    run_id: str
    attempt: str
    ttl_s: float
    version: str | None = None
    took_over: dict[str, Any] | None = None  # the holder this run replaced, if any
    host: str = field(default_factory=socket.gethostname)  # the launcher's, wherever renewed
    pid: int = field(default_factory=os.getpid)
    store_s: float = 0.0  # time spent talking to the store for the lease (the bench reads it)
    renewals: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def handle(self) -> dict[str, Any]:
        """What another process (the Beam step that commits) needs to renew this lease."""
        return {"url": self.url, "token": self.token, "run_id": self.run_id,
                "attempt": self.attempt, "ttl_s": self.ttl_s, "host": self.host,
                "pid": self.pid}  # fmt: skip

    @classmethod
    def from_handle(cls, h: dict[str, Any]) -> Lease:
        return cls(h["url"], h["token"], h["run_id"], h["attempt"], h["ttl_s"],
                   host=h["host"], pid=h["pid"])  # fmt: skip

    def body(self, released: bool = False) -> bytes:
        now = _now()
        return json.dumps(
            {
                "run_id": self.run_id,
                "attempt": self.attempt,
                "token": self.token,
                "host": self.host,
                "pid": self.pid,
                "renewed_at": _iso(now),
                "expires_at": _iso(now if released else now + self.ttl_s),
                "expires_unix": now if released else now + self.ttl_s,
                "ttl_s": self.ttl_s,
                "released": released,
            },
            indent=2,
        ).encode()

    def _swap(self, released: bool = False) -> bool:
        """Rewrite the lease if it is still this run's (compare-and-swap on the version; a
        version changed by another process of this run, the committing worker or the
        launcher, is read again). False when another run holds it, or nobody does."""
        t0 = time.perf_counter()
        try:
            for _ in range(CAS_TRIES):
                if self.version is None:
                    current = storage.read_versioned(self.url)
                    if current is None:
                        return False
                    holder = _parse(current[0])
                    if not holder or holder["token"] != self.token or holder["released"]:
                        return False
                    self.version = current[1]
                try:
                    self.version = storage.replace_versioned(self.url, self.body(released),
                                                             self.version)  # fmt: skip
                    return True
                except storage.WriteConflict:
                    self.version = None
            raise LeaseLostError(f"{self.url}: the lease kept changing under this run")
        finally:
            self.store_s += time.perf_counter() - t0

    def renew(self) -> None:
        """Push the expiry ``ttl_s`` out; ``LeaseLostError`` if another run took the lease."""
        with self._lock:
            if not self._swap():
                current = storage.read_versioned(self.url)
                holder = _parse(current[0]) if current else None
                who = (
                    describe(holder)
                    if holder
                    else "nobody (the lease object is gone or unreadable)"
                )
                raise LeaseLostError(
                    f"run {self.run_id} lost the lease on {storage.redact(self.url)}: it is "
                    f"held by {who}; this run must not commit"
                )
            self.renewals += 1

    def release(self) -> None:
        """Mark the lease released (the object stays: deleting it could delete the lease of a
        run that took it over a moment before)."""
        with self._lock:
            if not self._swap(released=True):
                log.warning("lease %s: no longer this run's, nothing to release", self.url)


def acquire(
    output: str, run_id: str, attempt: str, ttl_s: float, break_lease: bool = False
) -> Lease:
    """Take the output's lease, or raise ``OutputBusyError`` naming the run that holds it."""
    url = lease_url(output)
    lease = Lease(url, uuid.uuid4().hex, run_id, attempt, ttl_s)
    if not storage.conditional_writes(url):
        log.warning(
            "%s: this store has no conditional create here (only s3:// and local paths do), so "
            "the lease is a plain read-check-write: a run started while another holds it is "
            "refused, but two runs started within the same second could both take it. Keep "
            "one scheduler for this output (the CronJob's concurrencyPolicy: Forbid)",
            storage.redact(output),
        )
    t0 = time.perf_counter()
    try:
        for _ in range(CAS_TRIES):
            try:
                lease.version = storage.create_exclusive(url, lease.body())
                return lease
            except storage.WriteConflict:
                pass
            current = storage.read_versioned(url)
            if current is None:  # released and gone between the two calls: create again
                continue
            holder = _parse(current[0])
            if holder is None and not break_lease:
                raise OutputBusyError(
                    f"{storage.redact(url)} is not a lease this program wrote ({current[0][:80]!r}"
                    "): if no run is writing the output, rerun with --break-lease to replace it"
                )
            expired = holder is None or holder["released"] or holder["expires_unix"] <= _now()
            if not (expired or break_lease):
                alive = _alive_here(holder)
                hint = (
                    " Its process is not running on this host: if its job is not running "
                    "elsewhere either (a cluster job outlives its launcher), use --break-lease."
                    if alive is False
                    else ""
                )
                raise OutputBusyError(
                    f"--output {storage.redact(output)} is being written by {describe(holder)}. "
                    "Only one run may write an output at a time. Wait for that run to finish "
                    "(the lease is released at its end, and taken over once it expires if the "
                    "run died), or, if you know it is dead, rerun with --break-lease." + hint
                )
            try:
                lease.version = storage.replace_versioned(url, lease.body(), current[1])
            except storage.WriteConflict:
                continue  # another run moved first: look again
            if holder is not None and not holder["released"]:
                lease.took_over = holder
                log.warning(
                    "%s the lease of %s on %s",
                    "--break-lease: broke" if break_lease else "took over the expired",
                    describe(holder),
                    storage.redact(output),
                )
            return lease
        raise OutputBusyError(f"--output {storage.redact(output)}: the lease kept changing")
    finally:
        lease.store_s += time.perf_counter() - t0


class LeaseKeeper:
    """Renews a lease every third of its time to live from a daemon thread, while the
    ``with`` block runs. A renewal that fails on a store error is retried at the next tick; a
    lost lease is logged and kept in ``lost`` (the committing step fails on its own)."""

    def __init__(self, lease: Lease):
        self.lease = lease
        self.lost: LeaseLostError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distil-lease", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl_s / 3):
            try:
                self.lease.renew()
            except LeaseLostError as e:
                self.lost = e
                log.error("%s", e)
                return
            except Exception as e:  # a store hiccup: the expiry leaves two more tries
                log.warning("could not renew the lease %s (retrying): %s", self.lease.url, e)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lease.ttl_s)  # a renewal stuck on the store: move on
