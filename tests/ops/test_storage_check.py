"""``distil storage check`` against a real SeaweedFS: what it reports and when it fails."""

from __future__ import annotations

import uuid

from distil import storage
from distil.cli import main
from distil.ops import storage_check


def test_writable_prefix_is_ok_with_env_identity_and_masked_key(s3_server, s3_url, capsys):
    storage.write_bytes(storage.join(s3_url, "existing.txt"), b"x")
    assert main(["storage", "check", s3_url]) == 0
    out = capsys.readouterr()
    assert "ok: readable and writable" in out.out
    assert "source=env, access_key=te…, session_token=False" in out.out
    assert s3_server.endpoint in out.out
    assert s3_server.secret_key not in out.out + out.err
    fs, path = storage.get_fs(s3_url)
    fs.invalidate_cache()
    assert fs.ls(path, detail=False) == [f"{path}/existing.txt"]  # the probe was deleted


def test_new_prefix_in_an_existing_bucket_is_ok(s3_server):
    res = storage_check.check(f"s3://{s3_server.bucket}/never-written-{uuid.uuid4().hex[:6]}")
    assert res["ok"] and res["readable"] and res["writable"] and res["entries"] == 0


def test_missing_bucket_fails_with_the_reason_and_is_not_created(s3_server, capsys):
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    assert main(["storage", "check", f"s3://{bucket}/prefix"]) == 1
    out = capsys.readouterr()
    assert f"bucket '{bucket}' does not exist" in out.err and "--create-bucket" in out.err
    assert s3_server.secret_key not in out.out + out.err
    fs, _ = storage.get_fs(f"s3://{bucket}")
    fs.invalidate_cache()
    assert not fs.exists(bucket)


def test_create_bucket_then_ok(s3_server, capsys):
    bucket = f"created-{uuid.uuid4().hex[:8]}"
    assert main(["storage", "check", f"s3://{bucket}/p", "--create-bucket"]) == 0
    assert f"created_bucket: {bucket}" in capsys.readouterr().out
    assert storage_check.check(f"s3://{bucket}/p")["ok"]


def test_wrong_secret_is_not_writable_and_never_printed(s3_server, s3_url, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    assert main(["storage", "check", s3_url]) == 1
    out = capsys.readouterr()
    assert "FAILED" in out.err
    assert "wrong-secret-value" not in out.out + out.err


def test_local_directory(tmp_path):
    res = storage_check.check(str(tmp_path / "new"))
    assert res["ok"] and "identity" not in res


def test_mask_key_keeps_no_more_than_eight_characters():
    assert storage_check.mask_key("AKIAIOSFODNN7EXAMPLE") == "AKIA…MPLE"
    assert storage_check.mask_key("short-key") == "sh…"


def test_upload_copies_a_directory(s3_url, tmp_path, capsys):
    (tmp_path / "teacher" / "sub").mkdir(parents=True)
    (tmp_path / "teacher" / "config.json").write_text("{}")
    (tmp_path / "teacher" / "sub" / "w.bin").write_bytes(b"w")
    assert main(["storage", "upload", str(tmp_path / "teacher"), s3_url]) == 0
    assert storage.read_bytes(storage.join(s3_url, "sub/w.bin")) == b"w"
    assert main(["storage", "upload", str(tmp_path / "nope"), s3_url]) == 2


def test_identity_from_a_profile_names_source_and_profile(s3_server, s3_url, monkeypatch, tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text(
        f"[distil-test]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "distil-test")
    res = storage_check.check(s3_url)
    assert res["ok"], res["reason"]
    assert res["identity"]["source"] == "shared-credentials-file"
    assert res["identity"]["profile"] == "distil-test"


def test_session_token_is_reported(s3_server, s3_url, monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-session-token")
    res = storage_check.check(s3_url)
    assert res["identity"]["session_token"] is True
    # SeaweedFS looks a token's keys up among STS sessions, so static keys + a made-up token fail
    assert not res["ok"] and "access key" in res["reason"].lower()


def test_region_from_the_profile_is_reported(s3_url, monkeypatch, tmp_path):
    (tmp_path / "config").write_text("[profile distil-test]\nregion = ap-south-1\n")
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "distil-test")
    res = storage_check.check(s3_url)
    assert res["region"] == "ap-south-1 (from the profile)"
    assert res["ok"], res[
        "reason"
    ]  # env keys still win over the profile; SeaweedFS takes any region
