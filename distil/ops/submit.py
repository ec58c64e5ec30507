"""Submit a stage to a Ray cluster exactly as a user would
(`ray job submit -- python -m distil.jobs.<stage> ...`).

Nothing is uploaded by default: the stage modules are part of the installed ``distil`` package,
which the cluster's Python has (the local stack's Ray runs in the same environment as ``distil``).
A ``working_dir`` is shipped only when a caller asks for one (say, to run an uninstalled checkout's
``jobs/*.py`` scripts).

A step is keyed (``distil_step`` metadata): if a job with the same key is still running — say the
demo was killed while it ran — we attach to it instead of starting a second writer on the same
output. Its logs are streamed to our stdout.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from distil.ops import stack

RUNNING = {"PENDING", "RUNNING"}


def submit_ray_job(
    address: str,
    argv: list[str],
    *,
    env_vars: dict[str, str],
    step_key: str,
    working_dir: str | Path | None = None,
    timeout_s: float = 3600,
) -> tuple[str, str]:
    """Run ``argv`` (e.g. ``["python", "-m", "distil.jobs.prepare", ...]``) as a Ray job; wait;
    raise on failure. Returns the submission id and the job's full log."""
    from ray.job_submission import JobStatus

    client = job_client(address)
    sub_id = None
    family = step_key.rsplit("-", 1)[0] + "-"  # same step, any fingerprint
    for job in client.list_jobs():
        key = (job.metadata or {}).get("distil_step", "")
        if str(job.status) not in RUNNING or not key.startswith(family):
            continue
        if key == step_key:
            sub_id = job.submission_id
            print(f"[distil] attaching to running job {sub_id} for {step_key}", flush=True)
        else:  # a run with other settings was left running (its driver was killed): stop it
            print(f"[distil] stopping superseded job {job.submission_id} ({key})", flush=True)
            client.stop_job(job.submission_id)
    if sub_id is None:
        sub_id = stack.submit_when_agent_ready(
            client,
            entrypoint=shlex.join(argv),
            runtime_env=runtime_env(env_vars, working_dir),
            metadata={"distil_step": step_key},
            entrypoint_num_cpus=0.25,
        )
        print(f"[distil] submitted {sub_id}: {shlex.join(argv)}", flush=True)
    deadline = time.time() + timeout_s
    printed = 0
    while True:
        status = client.get_job_status(sub_id)
        logs = client.get_job_logs(sub_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        if time.time() > deadline:
            client.stop_job(sub_id)
            raise TimeoutError(f"{step_key}: job {sub_id} exceeded {timeout_s}s")
        time.sleep(1.0)
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(sub_id)
        raise RuntimeError(f"{step_key}: Ray job {sub_id} {status}: {info.message}")
    return sub_id, client.get_job_logs(sub_id)


# Credentials never go in a runtime env: Ray keeps it in the job record, which `ray job list`,
# the dashboard and every job-API client show. Workers get them from their own environment.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)


def job_client(address: str):
    """A ``JobSubmissionClient`` for ``address``. The local stack's job API gets the stack's token
    explicitly, so the demo and ``stack up`` authenticate whatever this process's environment
    says; any other cluster authenticates the way Ray does (``RAY_AUTH_MODE=token`` with
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``)."""
    from ray.job_submission import JobSubmissionClient

    parsed = urlparse(address)
    is_stack = parsed.hostname in ("127.0.0.1", "localhost") and parsed.port == stack.DASHBOARD_PORT
    headers = stack.auth_headers() if is_stack else {}
    return JobSubmissionClient(address, headers=headers or None)


def runtime_env(env_vars: dict[str, str], working_dir: str | Path | None = None) -> dict:
    """The job's Ray runtime env: ``env_vars``, plus ``working_dir`` only when one is given."""
    secret = sorted(k for k in env_vars if k in SECRET_ENV)
    if secret:
        raise ValueError(
            f"{', '.join(secret)} must not go in a Ray job's runtime_env: Ray stores it in the "
            "job record (`ray job list` shows it). Give the cluster's workers credentials "
            "through their environment (the local stack's Ray has them; on Kubernetes a Secret "
            "or the node's identity) and pass only non-secret settings."
        )
    env: dict = {"env_vars": dict(env_vars)}
    if working_dir is not None:
        env["working_dir"] = str(working_dir)
    return env
