"""distil.submit without a cluster: the runtime env ships no working_dir unless asked, and a step
submits ``python -m …`` as given (the job client is faked; nothing of Ray is started)."""

from __future__ import annotations

import sys
import types

import pytest

from distil import submit


def test_runtime_env_has_no_working_dir_by_default():
    assert submit.runtime_env({"A": "1"}) == {"env_vars": {"A": "1"}}
    assert submit.runtime_env({}, working_dir="/src") == {"env_vars": {}, "working_dir": "/src"}


class FakeClient:
    submitted: list[dict] = []

    def __init__(self, address):
        self.address = address

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
