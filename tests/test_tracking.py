"""MLflow tracking (``distil.tracking``) against a real MLflow server on loopback with basic auth
and artifacts on the SeaweedFS fixture: a server killed mid-stage, a refused password, and no
mlflow import without a tracking URI. A tracked pipeline of stage jobs (one parent run, a nested
run per stage with its params, summary and curves) is read back in tests/test_demo.py, whose
demo runs every stage as the job a cluster runs."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_fixtures import start_test_mlflow

from distil import tracking
from distil.ops.mlflow_server import http_status

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))

from prepare_corpus import write_good_corpus  # noqa: E402

pytestmark = pytest.mark.slow  # a real MLflow server (and Ray, for the stages)


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _client(server):
    os.environ.update({k: v for k, v in server.env().items() if k != tracking.URI_ENV})
    return tracking.make_client(server.url)


def test_untracked_stage_never_imports_mlflow(tmp_path):
    code = (
        "import sys; from distil import tracking;"
        "out = tracking.tracked('prepare', lambda c: {'rows': 1}, {'a': 1});"
        "assert out == {'rows': 1}; print('mlflow' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != tracking.URI_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_server_refuses_anonymous_and_a_wrong_password(mlflow_server, monkeypatch, caplog):
    probe = f"{mlflow_server.url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(probe) == 401
    assert http_status(probe, (mlflow_server.username, mlflow_server.password)) == 200
    monkeypatch.setenv(tracking.URI_ENV, mlflow_server.url)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with caplog.at_level(logging.WARNING, logger="distil.tracking"):
        out = tracking.tracked("prepare", lambda c: {"rows": 3}, {"a": 1})
    assert out == {"rows": 3}
    warnings = [r for r in caplog.records if r.name == "distil.tracking"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "start run" in warnings[0].getMessage()


@pytest.mark.timeout(300)
def test_server_killed_mid_stage_costs_one_warning_and_no_output_byte(
    ray_local, s3_server, tmp_path, monkeypatch
):
    from test_prepare_job import output_bytes

    from distil.data.config import PrepareConfig
    from distil.jobs.prepare import run

    write_good_corpus(tmp_path / "corpus")
    plain = run(PrepareConfig(input=str(tmp_path / "corpus"), output=str(tmp_path / "plain")))

    server = start_test_mlflow(tmp_path / "mlflow", s3_server)
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    cfg = PrepareConfig(input=str(tmp_path / "corpus"), output=str(tmp_path / "tracked"))
    # a handler of our own: the stage reconfigures the root logger (and drops caplog's handler)
    records = Recorder()
    logging.getLogger("distil.tracking").addHandler(records)
    try:
        with tracking.stage_run("prepare", cfg) as tracker:
            assert tracker.active  # the run exists and has its params
            server.stop(signal.SIGKILL)
            summary = run(cfg)
            tracking.record(tracker, summary)
    finally:
        logging.getLogger("distil.tracking").removeHandler(records)
    assert [r.levelno for r in records.records] == [logging.WARNING], records.records
    assert "goes on untracked" in records.records[0].getMessage()
    assert summary["rows"] == plain["rows"] > 0
    assert output_bytes(str(tmp_path / "tracked")) == output_bytes(str(tmp_path / "plain"))
