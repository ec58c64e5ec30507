"""One MLflow tracking server on loopback, closed by MLflow's basic auth: start it, wait until it
answers with its credentials.

The local stack (``distil.ops.stack``) runs one on a fixed port; the tests start throwaway ones on
free ports. Runs and the auth user store are SQLite files in ``data_dir``; artifacts go to
``artifacts`` (the stack's S3 bucket), uploaded through the server (``--serve-artifacts``), so
a client needs the MLflow credentials only, not the S3 keys.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ADMIN = "admin"


@dataclass
class MlflowServer:
    url: str
    username: str
    password: str
    proc: subprocess.Popen | None = None

    def stop(self, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
        """Signal the server's whole process group (``mlflow server`` runs its app in a child
        process, which would outlive the parent alone), SIGKILL after ``wait_s``."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(wait_s)

    def env(self) -> dict[str, str]:
        """What a client needs (``distil.tracking`` reads these)."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 5.0) -> int:
    """The HTTP status ``url`` answers with (0 when nothing answers)."""
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def secret_file(path: Path, make: Callable[[], str]) -> str:
    """The secret in ``path``, written with ``make()`` on first use, readable by its owner
    only (created 0600 in one call: never briefly readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
    path.chmod(0o600)
    return path.read_text().strip()


def ensure_password(path: Path) -> str:
    """The admin password in ``path``, created on first use: 192 random bits, mode 0600."""
    return secret_file(path, lambda: secrets.token_urlsafe(24))


def start_mlflow(
    data_dir: Path,
    port: int,
    artifacts: str,
    s3_env: dict[str, str],
    log_path: Path,
    wait_s: float = 90.0,
) -> MlflowServer:
    """``mlflow server`` on 127.0.0.1:``port`` with basic auth (admin password generated into
    ``data_dir/mlflow-password``); returns once an authenticated request gets 200."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)  # the run store, the user store (password hashes) and the secrets
    password = ensure_password(data_dir / "mlflow-password")
    auth_ini = data_dir / "mlflow-auth.ini"
    # Only the admin exists and anonymous requests get 401: nothing is readable without it.
    auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{data_dir / 'mlflow-auth.db'}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    secret = data_dir / "mlflow-flask-secret"
    ensure_password(secret)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(s3_env)
    env.update(
        {
            "MLFLOW_S3_ENDPOINT_URL": s3_env.get("AWS_ENDPOINT_URL", ""),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secret.read_text().strip(),
        }
    )
    cmd = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--backend-store-uri=sqlite:///{data_dir / 'mlflow.db'}",
        f"--artifacts-destination={artifacts}",
        "--serve-artifacts",
        "--app-name=basic-auth",
        "--workers=1",
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - the server writes to it after we return
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = MlflowServer(f"http://127.0.0.1:{port}", ADMIN, password, proc)
    probe = f"{server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {log_path}")
        if http_status(probe, (ADMIN, password)) == 200:
            return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer within {wait_s:.0f} s; see {log_path}")
