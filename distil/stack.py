"""The local stack: a Ray head and a SeaweedFS S3 server, both on 127.0.0.1.

``distil stack up|down|status``. State (PID file, logs, S3 data) lives under
``$DISTIL_HOME/stack`` (default ``./.distil/stack``); the S3 data dir survives ``down``/``up``
so every URL a run wrote stays valid. Starting one SeaweedFS S3 server (also what the tests
use) is ``distil.seaweed``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from distil.seaweed import S3Server, s3_bucket_ready, start_seaweed

RAY_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 8333
DEFAULT_BUCKET = "distil"
# Local-only credentials for the loopback S3 server; real deployments use their own.
LOCAL_ACCESS_KEY = "distil-local"
LOCAL_SECRET_KEY = "distil-local-secret"


def distil_home() -> Path:
    return Path(os.environ.get("DISTIL_HOME", ".distil")).resolve()


def stack_dir() -> Path:
    return distil_home() / "stack"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(n: int = 6, lo: int = 20000, hi: int = 29000) -> int:
    """A base port b such that b..b+n-1 and their +10000 gRPC twins are all free."""
    import random

    rng = random.Random(os.getpid() ^ int(time.time()))
    for _ in range(200):
        b = rng.randrange(lo, hi)
        ports = [b + i for i in range(n)] + [b + i + 10000 for i in range(n)]
        if all(port_free(p) for p in ports):
            return b
    raise RuntimeError("no free loopback port block found")


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def ray_env() -> dict[str, str]:
    # Ray 2.60 turns token auth on for `ray start --head`; the local stack is loopback-only.
    # The venv's bin dir goes first on PATH so `ray job submit -- python ...` finds this venv's
    # python even when the stack was started as `.venv/bin/distil stack up`.
    venv_bin = str(Path(sys.executable).parent)
    path = venv_bin + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, RAY_AUTH_MODE="disabled", PATH=path)


def _state_file() -> Path:
    return stack_dir() / "state.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def status() -> dict[str, dict]:
    """Health of both services, from their own endpoints (not just PID files)."""
    state = json.loads(_state_file().read_text()) if _state_file().exists() else {}
    s3 = state.get("s3", {})
    s3_pid = s3.get("pid")
    s3_ok = False
    if s3_pid and _pid_alive(s3_pid):
        s3_ok = s3_bucket_ready(
            S3Server(s3["endpoint"], s3["bucket"], LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)
        )
    dash = f"http://127.0.0.1:{DASHBOARD_PORT}"
    ray_ok = _http_ok(f"{dash}/api/version")
    return {
        "ray": {
            "healthy": ray_ok,
            "address": f"127.0.0.1:{RAY_PORT}",
            "dashboard": dash,
        },
        "s3": {
            "healthy": s3_ok,
            "endpoint": s3.get("endpoint", f"http://127.0.0.1:{S3_PORT}"),
            "bucket": s3.get("bucket", DEFAULT_BUCKET),
            "pid": s3_pid,
            "data_dir": str(stack_dir() / "s3-data"),
        },
    }


def env_exports() -> dict[str, str]:
    st = status()
    return {
        "AWS_ENDPOINT_URL": st["s3"]["endpoint"],
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_REGION": "us-east-1",
        "RAY_ADDRESS": st["ray"]["dashboard"],
        "RAY_AUTH_MODE": "disabled",
    }


def up(num_cpus: int | None = None, bucket: str = DEFAULT_BUCKET) -> dict[str, dict]:
    """Start whatever is not already healthy. Safe to call twice."""
    stack_dir().mkdir(parents=True, exist_ok=True)
    current = status()
    state = json.loads(_state_file().read_text()) if _state_file().exists() else {}

    if not current["s3"]["healthy"]:
        for port in (S3_PORT, 9333, 9334, 9335, 9336):
            if not port_free(port):
                raise RuntimeError(
                    f"port 127.0.0.1:{port} is taken by another process; stop it "
                    "(or run `distil stack down`) before `distil stack up`"
                )
        server = start_seaweed(
            stack_dir() / "s3-data",
            S3_PORT,
            9333,
            bucket,
            LOCAL_ACCESS_KEY,
            LOCAL_SECRET_KEY,
            stack_dir() / "seaweedfs.log",
        )
        state["s3"] = {"pid": server.proc.pid, "endpoint": server.endpoint, "bucket": bucket}
        (stack_dir() / "seaweedfs.pid").write_text(str(server.proc.pid))
        _state_file().write_text(json.dumps(state))

    if not current["ray"]["healthy"]:
        for port in (RAY_PORT, DASHBOARD_PORT):
            if not port_free(port):
                raise RuntimeError(
                    f"port 127.0.0.1:{port} is taken (another Ray or service?); "
                    "`ray stop` or free it before `distil stack up`"
                )
        # More logical CPUs than cores: on 2 cores actors + train workers otherwise starve the
        # read/list tasks and a pipeline hangs without an error.
        cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={RAY_PORT}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={DASHBOARD_PORT}",
            "--include-dashboard=true",
            f"--num-cpus={cpus}",
            "--disable-usage-stats",
            # Agent/metrics ports default to fixed numbers (52365, …) that another Ray on this
            # machine (an embedded `ray.init()`, a test) may hold; the head's job agent then never
            # registers and `ray job submit` answers "No available agent". Pick free ones.
            *_agent_port_flags(),
        ]
        env = ray_env()
        env.update(
            {
                "AWS_ENDPOINT_URL": state["s3"]["endpoint"],
                "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            }
        )
        with open(stack_dir() / "ray.log", "ab") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if rc != 0:
            raise RuntimeError(f"`ray start --head` failed ({rc}); see {stack_dir() / 'ray.log'}")
        deadline = time.time() + 90
        while time.time() < deadline and not status()["ray"]["healthy"]:
            time.sleep(0.5)
        _wait_for_job_agent(deadline)
    return status()


def _agent_port_flags() -> list[str]:
    names = [
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    ]
    flags, taken = [], set()
    for name, default in zip(names, (52365, 52366, 52367, 52368), strict=True):
        port = default
        while port in taken or not port_free(port):
            port += 10
        taken.add(port)
        flags.append(f"--{name}={port}")
    return flags


def _wait_for_job_agent(deadline: float) -> None:
    """The dashboard answers before the head's job agent registers, and `ray job submit` then
    fails with "No available agent". Readiness = a no-op job actually runs."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from distil.submit import _submit_when_agent_ready

    client = JobSubmissionClient(f"http://127.0.0.1:{DASHBOARD_PORT}")
    job = _submit_when_agent_ready(
        client, wait_s=max(5.0, deadline - time.time()), entrypoint="true",
        metadata={"distil_step": "stack-readiness"},
    )  # fmt: skip
    while time.time() < deadline:
        if client.get_job_status(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return
        time.sleep(0.5)


def down() -> dict[str, dict]:
    """Stop both services; keeps the S3 data dir. Safe to call twice."""
    state = json.loads(_state_file().read_text()) if _state_file().exists() else {}
    pid = state.get("s3", {}).get("pid")
    if pid and _pid_alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    (stack_dir() / "seaweedfs.pid").unlink(missing_ok=True)
    ray = Path(sys.executable).with_name("ray")
    if status()["ray"]["healthy"] or _ray_processes():
        subprocess.call(
            [str(ray), "stop", "--force"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ray_env(),
        )
    return status()


def _ray_processes() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray/core/src/ray/gcs/gcs_server"], capture_output=True)
    return [int(p) for p in out.stdout.split()]
