"""``distil storage check URL``: can this process list and write under URL, as whom, where?

Run before a long job: it finds a wrong bucket, missing credentials or a read-only role in
seconds instead of after an hour of work. It never prints a secret (key ids are masked).
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

from distil.storage import (
    get_fs,
    make_parent_dirs,
    protocol_of,
    redact,
    s3_endpoint,
    s3_region,
)


def mask_key(key: str) -> str:
    """An access key id safe to print: ``AKIA…XYZ1`` (short keys keep only two characters)."""
    return f"{key[:4]}…{key[-4:]}" if len(key) >= 16 else f"{key[:2]}…"


def s3_identity() -> dict[str, Any]:
    """Which credentials an S3 client here would use, without a secret: the source (botocore's
    ``method``: ``env``, ``shared-credentials-file``, ``sso``, ``iam-role`` …), the profile, the
    masked key id, and the caller ARN from STS when that is cheap (no custom S3 endpoint)."""
    import botocore.session
    from botocore.config import Config

    ident: dict[str, Any] = {"profile": os.environ.get("AWS_PROFILE")}
    session = botocore.session.Session()
    creds = session.get_credentials()
    if creds is None:
        ident["source"] = "none found (no AWS_* keys, profile, or instance/pod role)"
        return ident
    frozen = creds.get_frozen_credentials()
    ident.update(
        source=creds.method,
        access_key=mask_key(frozen.access_key),
        session_token=bool(frozen.token),
    )
    if s3_endpoint() and not os.environ.get("AWS_ENDPOINT_URL_STS"):
        ident["caller"] = "not asked (custom S3 endpoint; STS is AWS's)"
        return ident
    try:
        sts = session.create_client(
            "sts",
            region_name=s3_region() or "us-east-1",
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1}),
        )
        ident["caller"] = sts.get_caller_identity()["Arn"]
    except Exception as e:  # identity is informative only; the probe decides the result
        ident["caller"] = f"unknown ({type(e).__name__}: {e})"
    return ident


def _region() -> str:
    """The region a client here would use: the variables, else the profile's, else none."""
    import botocore.session

    if s3_region():
        return s3_region()
    profile_region = botocore.session.Session().get_config_variable("region")
    return f"{profile_region} (from the profile)" if profile_region else "unset (SDK default)"


def _bucket(url: str) -> str | None:
    """The bucket (container) of an object-store URL; None for filesystems without one."""
    if protocol_of(url) not in ("s3", "gs", "gcs", "az", "abfs"):
        return None
    return url.split("://", 1)[1].split("/", 1)[0]


def check(url: str, create_bucket: bool = False, identity: bool = True) -> dict[str, Any]:
    """Can this process list and write under ``url``? Lists it, then writes, reads back and
    deletes one small probe object there, so problems show up before a long job starts.
    ``ok`` is True only when both work; ``reason`` says what failed and the likely fix.
    ``identity=False`` skips the S3 endpoint/identity lookup (an STS call on AWS), for a job
    that only needs the answer."""
    out: dict[str, Any] = {"url": redact(url)}
    if protocol_of(url) == "s3" and identity:
        out.update(endpoint=s3_endpoint() or "AWS (default)", region=_region())
        try:
            out["identity"] = s3_identity()
        except Exception as e:
            out["identity"] = {"source": f"unknown ({type(e).__name__}: {e})"}
    out.update(readable=False, writable=False)
    try:
        fs, path = get_fs(url)
    except ValueError as e:
        return dict(out, ok=False, reason=str(e))
    fs.invalidate_cache()
    bucket = _bucket(url)
    try:
        if create_bucket and protocol_of(url) != "s3":
            return dict(out, ok=False, reason="--create-bucket is for s3:// URLs only")
        if create_bucket and bucket and not fs.exists(bucket):
            params: dict[str, Any] = {"Bucket": bucket}
            region = s3_region()
            if region and region != "us-east-1":  # us-east-1 takes no LocationConstraint
                params["CreateBucketConfiguration"] = {"LocationConstraint": region}
            fs.call_s3("create_bucket", **params)
            out["created_bucket"] = bucket
        try:
            out["entries"] = len(fs.ls(path, detail=False))
        except FileNotFoundError:
            if bucket:
                fs.ls(bucket, detail=False)  # FileNotFoundError here: no such bucket
            out["entries"] = 0
        out["readable"] = True
    except FileNotFoundError:
        hint = " (or pass --create-bucket)" if bucket else ""
        return dict(out, ok=False, reason=f"bucket {bucket!r} does not exist: create it{hint}")
    except Exception as e:
        return dict(out, ok=False, reason=f"cannot list {redact(url)}: {type(e).__name__}: {e}")
    probe = posixpath.join(path, f".distil-check-{uuid.uuid4().hex}")
    data = b"distil storage check\n"
    try:
        make_parent_dirs(fs, url, probe)
        fs.pipe_file(probe, data)
        if fs.cat_file(probe) != data:
            return dict(out, ok=False, reason="probe object read back with different content")
        fs.rm_file(probe)
        out["writable"] = True
    except Exception as e:
        return dict(
            out,
            ok=False,
            reason=f"cannot write/read/delete a probe object under "
            f"{redact(url)}: {type(e).__name__}: {e}",
        )
    return dict(out, ok=True, reason="")
