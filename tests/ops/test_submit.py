"""distil.ops.submit without a cluster: the runtime env ships no working_dir unless asked, and a step
submits ``python -m …`` as given (the job client is faked; nothing of Ray is started)."""

from __future__ import annotations

import sys
import types

import pytest

from distil.ops import submit


def test_runtime_env_has_no_working_dir_by_default():
    assert submit.runtime_env({"A": "1"}) == {"env_vars": {"A": "1"}}
    assert submit.runtime_env({}, working_dir="/src") == {"env_vars": {}, "working_dir": "/src"}


@pytest.mark.parametrize("key", ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"])
def test_runtime_env_refuses_credentials(key):
    """Ray keeps the runtime env in the job record (`ray job list` shows it)."""
    with pytest.raises(ValueError, match=f"{key} must not go in a Ray job's runtime_env"):
        submit.runtime_env({"AWS_REGION": "r", key: "s3cr3t"})


class FakeClient:
    submitted: list[dict] = []
    clients: list[FakeClient] = []

    def __init__(self, address, headers=None):
        self.address = address
        self.headers = headers
        FakeClient.clients.append(self)

    def list_jobs(self):
        return []

    def submit_job(self, **kw):
        FakeClient.submitted.append(kw)
        return "raysubmit_1"

    def get_job_status(self, sub_id):
        return "SUCCEEDED"

    def get_job_logs(self, sub_id):
        return 'DISTIL_RESULT {"ok": true}\n'


@pytest.fixture
def fake_ray(monkeypatch):
    mod = types.ModuleType("ray.job_submission")
    mod.JobSubmissionClient = FakeClient
    mod.JobStatus = types.SimpleNamespace(SUCCEEDED="SUCCEEDED", FAILED="FAILED", STOPPED="STOPPED")
    monkeypatch.setitem(sys.modules, "ray.job_submission", mod)
    FakeClient.submitted = []
    FakeClient.clients = []
    return FakeClient


def test_submit_ray_job_uploads_nothing(fake_ray, capsys):
    argv = ["python", "-m", "distil.jobs.prepare", "--input", "s3://b/x y"]
    sub_id, logs = submit.submit_ray_job(
        "http://head:8265", argv, env_vars={"AWS_REGION": "r"}, step_key="s3://b/run/prepare-abc"
    )
    assert (sub_id, logs) == ("raysubmit_1", 'DISTIL_RESULT {"ok": true}\n')
    (kw,) = fake_ray.submitted
    assert kw["entrypoint"] == "python -m distil.jobs.prepare --input 's3://b/x y'"
    assert kw["runtime_env"] == {"env_vars": {"AWS_REGION": "r"}}
    assert kw["metadata"] == {"distil_step": "s3://b/run/prepare-abc"}


def test_the_local_stacks_job_api_gets_the_stacks_token(fake_ray, tmp_path, monkeypatch):
    """The demo and `stack up` authenticate to the stack whatever this shell exports; other
    clusters get no header from us (Ray's own RAY_AUTH_TOKEN[_PATH] handling applies)."""
    from distil.ops import stack

    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))
    submit.job_client("http://127.0.0.1:8265")
    assert fake_ray.clients[-1].headers is None  # no stack started here: no token yet
    token = stack.ensure_token()
    assert len(token) == 64 and stack.token_path().stat().st_mode & 0o777 == 0o600
    assert stack.ensure_token() == token  # kept across calls
    submit.job_client("http://127.0.0.1:8265")
    assert fake_ray.clients[-1].headers == {"Authorization": f"Bearer {token}"}
    submit.job_client("http://head:8265")
    assert fake_ray.clients[-1].headers is None
