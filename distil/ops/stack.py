"""The local stack: a Ray head, a SeaweedFS S3 server and an MLflow tracking server, all on
127.0.0.1.

``distil stack up|down|status|env``. State (PID file, logs, S3 data, the Ray auth token) lives
under ``$DISTIL_HOME/stack`` (default ``./.distil/stack``); the S3 data dir survives
``down``/``up`` so every URL a run wrote stays valid. Starting one SeaweedFS S3 server (also what
the tests use) is ``distil.ops.seaweed``.

Ray keeps token authentication on: the head, its workers, the job API and every client use the
token in ``$DISTIL_HOME/stack/ray-auth-token`` (mode 0600; ``distil stack env`` exports its
path). Every Ray process of the stack carries ``DISTIL_STACK_SESSION`` in its environment and
uses a temp dir of its own, so ``down`` stops exactly those processes — never ``ray stop``, which
would end every Ray on the machine.

MLflow (``distil.ops.mlflow_server``) keeps its runs in ``stack/mlflow/mlflow.db`` (SQLite) and its
artifacts in the stack's bucket (``s3://distil/mlflow``), behind MLflow's basic auth: the admin
password is generated into ``stack/mlflow/mlflow-password`` (mode 0600). ``distil stack env``
exports the tracking URI and user, and reads the password from that file in the shell that
evaluates it; the stack's Ray gets the credentials in its environment (never in a job's runtime
env), so a job's Ray Train workers can log their curves.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from distil.config import distil_home
from distil.ops import procs
from distil.ops.mlflow_server import ADMIN, http_status, secret_file, start_mlflow
from distil.ops.seaweed import S3Server, s3_bucket_ready, start_seaweed

RAY_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 8333
MLFLOW_PORT = 5050
DEFAULT_BUCKET = "distil"
# Local-only credentials for the loopback S3 server; real deployments use their own.
LOCAL_ACCESS_KEY = "distil-local"
LOCAL_SECRET_KEY = "distil-local-secret"
SESSION_ENV = "DISTIL_STACK_SESSION"
# Ray replaces a loopback node IP (`ray start --node-ip-address=127.0.0.1`, a driver's
# `ray.init(address="127.0.0.1:6379")`) with the machine's routable IP unless it runs in
# single-machine mode. In that mode the node IP stays 127.0.0.1 and Ray's gRPC servers (GCS,
# raylet, workers) bind loopback instead of every interface; a driver needs it too to reach them.
# (It also refuses `ray start --address=…` worker joins, which a one-machine stack never does.)
SINGLE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def stack_dir() -> Path:
    return distil_home() / "stack"


def token_path() -> Path:
    return stack_dir() / "ray-auth-token"


def ensure_token() -> str:
    """The stack's Ray token, created on first use: 256 random bits, readable by its owner only."""
    return secret_file(token_path(), lambda: secrets.token_hex(32))


def mlflow_dir() -> Path:
    return stack_dir() / "mlflow"


def mlflow_password_path() -> Path:
    return mlflow_dir() / "mlflow-password"


def mlflow_env(with_uri: bool = True) -> dict[str, str]:
    """The stack's MLflow client settings ({} before the first ``up``); ``with_uri`` False: only
    the credentials (what the stack's Ray holds, so a job is tracked only when it asks to be)."""
    path = mlflow_password_path()
    if not path.exists():
        return {}
    env = {"MLFLOW_TRACKING_USERNAME": ADMIN, "MLFLOW_TRACKING_PASSWORD": path.read_text().strip()}
    if with_uri:
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{MLFLOW_PORT}"
    return env


def auth_headers() -> dict[str, str]:
    """The bearer header for the stack's dashboard / job API ({} before the first ``up``)."""
    path = token_path()
    return {"Authorization": f"Bearer {path.read_text().strip()}"} if path.exists() else {}


def ray_temp_dir() -> Path:
    """Ray's temp dir for this stack. Short and under the system temp dir, not the state dir:
    Ray's unix sockets live in it and a socket path must stay under 108 bytes."""
    digest = hashlib.sha1(str(stack_dir()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"distil-ray-{digest}"


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


def _http_ok(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> bool:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }


def ray_env(session: str, s3_endpoint: str) -> dict[str, str]:
    """The environment of ``ray start --head``, which every Ray process of the stack — and every
    job — inherits: the stack's S3 settings and credentials (so no job needs them in its
    runtime_env), token auth, and the session marker ``down`` finds the processes by. The venv's
    bin dir goes first on PATH so `ray job submit -- python ...` finds this venv's python even
    when the stack was started as `.venv/bin/distil stack up`."""
    drop = ("AWS_", "RAY_AUTH_", "RAY_ADDRESS", "MLFLOW_", SESSION_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    env.update(s3_env(s3_endpoint))
    env.update(mlflow_env(with_uri=False))
    env.update(
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path()), SESSION_ENV: session}
    )
    env.update(SINGLE_MACHINE)
    return env


def _state_file() -> Path:
    return stack_dir() / "state.json"


def _state() -> dict:
    return json.loads(_state_file().read_text()) if _state_file().exists() else {}


def _pid_alive(pid: int) -> bool:
    return procs.alive(pid)


def status() -> dict[str, dict]:
    """Health of both services, from their own endpoints (not just PID files). Ray counts as
    healthy only when its job API accepts the stack's token."""
    state = _state()
    s3 = state.get("s3", {})
    s3_pid = s3.get("pid")
    s3_ok = False
    if s3_pid and _pid_alive(s3_pid):
        s3_ok = s3_bucket_ready(
            S3Server(s3["endpoint"], s3["bucket"], LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY)
        )
    dash = f"http://127.0.0.1:{DASHBOARD_PORT}"
    ray_ok = _http_ok(f"{dash}/api/version", headers=auth_headers())
    ml = state.get("mlflow", {})
    ml_url = f"http://127.0.0.1:{MLFLOW_PORT}"
    ml_env = mlflow_env()
    ml_ok = bool(ml.get("pid")) and _pid_alive(ml["pid"]) and bool(ml_env)
    if ml_ok:
        creds = (ml_env["MLFLOW_TRACKING_USERNAME"], ml_env["MLFLOW_TRACKING_PASSWORD"])
        ml_ok = (
            http_status(f"{ml_url}/api/2.0/mlflow/experiments/search?max_results=1", creds) == 200
        )
    return {
        "ray": {
            "healthy": ray_ok,
            "address": f"127.0.0.1:{RAY_PORT}",
            "dashboard": dash,
            "auth": "token",
            "token_path": str(token_path()),
            "session": state.get("ray", {}).get("session"),
            "temp_dir": state.get("ray", {}).get("temp_dir"),
        },
        "s3": {
            "healthy": s3_ok,
            "endpoint": s3.get("endpoint", f"http://127.0.0.1:{S3_PORT}"),
            "bucket": s3.get("bucket", DEFAULT_BUCKET),
            "pid": s3_pid,
            "data_dir": str(stack_dir() / "s3-data"),
        },
        "mlflow": {
            "healthy": ml_ok,
            "url": ml_url,
            "auth": "basic",
            "user": ADMIN,
            "password_path": str(mlflow_password_path()),
            "backend_store": f"sqlite:///{mlflow_dir() / 'mlflow.db'}",
            "artifacts": ml.get("artifacts"),
            "pid": ml.get("pid"),
        },
    }


def env_exports() -> dict[str, str]:
    """What a shell needs to use the stack (`eval $(distil stack env)`): its S3, its Ray, with
    the path of the token (not the token itself, which stays in its 0600 file), and its MLflow
    (the CLI prints the password as a read of its 0600 file, not the password)."""
    st = status()
    return {
        **s3_env(st["s3"]["endpoint"]),
        **mlflow_env(),
        "RAY_ADDRESS": st["ray"]["dashboard"],
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path()),
        **SINGLE_MACHINE,
    }


def up(num_cpus: int | None = None, bucket: str = DEFAULT_BUCKET) -> dict[str, dict]:
    """Start whatever is not already healthy. Safe to call twice."""
    stack_dir().mkdir(parents=True, exist_ok=True)
    current = status()
    state = _state()

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

    if not current["mlflow"]["healthy"]:
        _stop_mlflow(state)
        if not port_free(MLFLOW_PORT):
            raise RuntimeError(
                f"port 127.0.0.1:{MLFLOW_PORT} is taken by a process that is not this stack's "
                "MLflow; free it before `distil stack up`"
            )
        artifacts = f"s3://{state['s3']['bucket']}/mlflow"
        server = start_mlflow(
            mlflow_dir(),
            MLFLOW_PORT,
            artifacts,
            s3_env(state["s3"]["endpoint"]),
            stack_dir() / "mlflow.log",
        )
        state["mlflow"] = {"pid": server.proc.pid, "artifacts": artifacts}
        _state_file().write_text(json.dumps(state))

    if not current["ray"]["healthy"]:
        _stop_ray(state)  # what is left of an earlier, unhealthy start of this stack
        for port in (RAY_PORT, DASHBOARD_PORT):
            if not port_free(port):
                raise RuntimeError(
                    f"port 127.0.0.1:{port} is taken by a process that is not this stack's Ray "
                    "(another `ray start`, or a stack with another DISTIL_HOME?); free it "
                    "before `distil stack up`"
                )
        ensure_token()
        session = secrets.token_hex(6)
        temp_dir = ray_temp_dir()
        state["ray"] = {"session": session, "temp_dir": str(temp_dir)}
        _state_file().write_text(json.dumps(state))  # before starting: `down` can clean up
        _start_ray_head(num_cpus, ray_env(session, state["s3"]["endpoint"]), temp_dir)
    return status()


def _start_ray_head(num_cpus: int | None, env: dict[str, str], temp_dir: Path) -> None:
    # More logical CPUs than cores: on 2 cores actors + train workers otherwise starve the
    # read/list tasks and a pipeline hangs without an error.
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
    cmd = [
        str(Path(sys.executable).with_name("ray")),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",  # GCS, raylet, object manager, workers, client server
        f"--port={RAY_PORT}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={DASHBOARD_PORT}",
        "--include-dashboard=true",
        f"--num-cpus={cpus}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        # Agent/metrics/client-server ports default to fixed numbers (52365, …, 10001) that
        # another Ray on this machine (an embedded `ray.init()`, a test) may hold; the head's job
        # agent then never registers and `ray job submit` answers "No available agent".
        *_free_port_flags(),
    ]
    with open(stack_dir() / "ray.log", "ab") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc != 0:
        raise RuntimeError(f"`ray start --head` failed ({rc}); see {stack_dir() / 'ray.log'}")
    deadline = time.time() + 90
    while time.time() < deadline and not status()["ray"]["healthy"]:
        time.sleep(0.5)
    _wait_for_job_agent(deadline)


def _free_port_flags() -> list[str]:
    defaults = {
        "dashboard-agent-listen-port": 52365,
        "dashboard-agent-grpc-port": 52366,
        "runtime-env-agent-port": 52367,
        "metrics-export-port": 52368,
        "ray-client-server-port": 10001,
    }
    flags, taken = [], set()
    for name, port in defaults.items():
        while port in taken or not port_free(port):
            port += 10
        taken.add(port)
        flags.append(f"--{name}={port}")
    return flags


def _wait_for_job_agent(deadline: float) -> None:
    """The dashboard answers before the head's job agent registers, and `ray job submit` then
    fails with "No available agent". Readiness = a no-op job actually runs (with the token)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(
        f"http://127.0.0.1:{DASHBOARD_PORT}", headers=auth_headers() or None
    )
    job = submit_when_agent_ready(
        client, wait_s=max(5.0, deadline - time.time()), entrypoint="true",
        metadata={"distil_step": "stack-readiness"},
    )  # fmt: skip
    while time.time() < deadline:
        if client.get_job_status(job) in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            return
        time.sleep(0.5)


def ray_pids(state: dict | None = None) -> set[int]:
    """Every live process of the stack's Ray (GCS, raylet, dashboard, agents, client server,
    workers, job drivers): those started with this stack's session marker or temp dir, and
    their descendants. Another Ray on the machine is never in it."""
    ray = (state if state is not None else _state()).get("ray", {})
    session, temp_dir = ray.get("session"), ray.get("temp_dir")
    if not session:
        return set()
    roots = {
        pid
        for pid in procs.pids()
        if procs.environ(pid).get(SESSION_ENV) == session
        or (temp_dir and temp_dir in procs.cmdline(pid))
    }
    return procs.with_descendants(roots - {os.getpid()})


def _stop_ray(state: dict) -> None:
    left = procs.terminate(ray_pids(state))
    if left:
        raise RuntimeError(f"stack Ray processes survived SIGKILL: {sorted(left)}")


def _stop_group(pid: int | None) -> None:
    """SIGTERM the process group ``pid`` leads (a server started in its own session), then
    SIGKILL after 5 s."""
    if pid and _pid_alive(pid):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)


def _stop_mlflow(state: dict) -> None:
    _stop_group(state.get("mlflow", {}).get("pid"))


def down() -> dict[str, dict]:
    """Stop every service — only this stack's processes; keeps the S3 data dir and the MLflow
    store. Safe to call twice."""
    state = _state()
    _stop_mlflow(state)
    _stop_group(state.get("s3", {}).get("pid"))
    (stack_dir() / "seaweedfs.pid").unlink(missing_ok=True)
    _stop_ray(state)
    return status()


def submit_when_agent_ready(client, wait_s: float = 90.0, **kwargs) -> str:
    """Right after `ray start --head` the job agent may not be registered yet ("No available
    agent to submit job"): retry that one error for a while, fail on anything else."""
    deadline = time.time() + wait_s
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2.0)
