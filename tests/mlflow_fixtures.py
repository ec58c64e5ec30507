"""A throwaway MLflow server for tests (the ``mlflow_server`` fixture, and tests that kill one)."""

from __future__ import annotations

import uuid
from pathlib import Path

from distil.ops import stack
from distil.ops.mlflow_server import MlflowServer, start_mlflow
from distil.ops.seaweed import S3Server


def start_test_mlflow(tmp: Path, s3_server: S3Server) -> MlflowServer:
    """A real MLflow server (basic auth) on a free loopback port, artifacts in the S3 fixture's
    bucket under a fresh prefix."""
    port = stack.free_port_block(n=1)
    artifacts = f"s3://{s3_server.bucket}/mlflow-{uuid.uuid4().hex[:6]}"
    return start_mlflow(tmp, port, artifacts, s3_server.env(), tmp / "mlflow.log")
