"""MLflow tracking (``distil.tracking``) against a real MLflow server on loopback with basic auth
and artifacts on the SeaweedFS fixture: a tracked pipeline read back through ``MlflowClient``,
a server killed mid-stage, a refused password, and no mlflow import without a tracking URI."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow_fixtures import start_test_mlflow

from distil import storage, tracking
from distil.config import parse_job_args
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


def _stage(module: str, argv: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", module, *argv], env=env, capture_output=True, text=True, timeout=400
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_tracked_pipeline_is_one_parent_with_nested_stage_runs(
    mlflow_server, s3_url, tmp_path, tiny_teacher_dir, real_tokenizer_dir, make_planted_reviews
):
    """prepare -> logits -> distil -> fine-tune -> score as the jobs a cluster runs
    (``python -m distil.jobs.…``, each with its embedded Ray; scoring on Beam), tracked into one
    run group."""
    from distil.data.config import PrepareConfig
    from distil.pipelines.score_reviews import parse_args as score_args
    from distil.sentiment.config import FinetuneConfig
    from distil.teacher.config import LogitsConfig
    from distil.train.config import DistilConfig

    write_good_corpus(tmp_path / "corpus")
    reviews = make_planted_reviews(64)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    unlabelled = [{"id": r["id"], "text": r["text"]} for r in reviews[:16]]
    (tmp_path / "score.jsonl").write_text("".join(json.dumps(r) + "\n" for r in unlabelled))
    group = f"group-{uuid.uuid4().hex[:6]}"
    experiment = f"exp-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, **mlflow_server.env(), MLFLOW_EXPERIMENT_NAME=experiment)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])])
    prepared, cache_root = f"{s3_url}/prepared", f"{s3_url}/cache"
    argvs = {
        "prepare": (
            "distil.jobs.prepare",
            PrepareConfig,
            ["--input", str(tmp_path / "corpus"), "--output", prepared,
             "--tokenizer", str(real_tokenizer_dir), "--seq-len", "32"],
        ),
        "logits": (
            "distil.jobs.teacher_logits",
            LogitsConfig,
            ["--input", prepared, "--cache-root", cache_root, "--teacher", str(tiny_teacher_dir),
             "--k", "4", "--hidden-sketch-dims", "8"],
        ),
        "distil": (
            "distil.jobs.distil",
            DistilConfig,
            ["--cache", cache_root, "--output", f"{s3_url}/student",
             "--storage-path", f"{s3_url}/runs", "--num-workers", "1",
             "--cpus-per-worker", "0.5", "--batch-size", "8", "--max-steps", "20",
             "--warmup-steps", "2", "--checkpoint-every", "10", "--eval-every", "10",
             "--eval-batches", "2", "--log-every", "5"],
        ),
        "finetune": (
            "distil.jobs.finetune",
            FinetuneConfig,
            ["--model", f"{s3_url}/student", "--train", str(tmp_path / "train.jsonl"),
             "--output", f"{s3_url}/classifier", "--run-name", "clf", "--max-steps", "4",
             "--batch-size", "8", "--max-length", "16", "--log-every", "1",
             "--ray-storage-path", f"{s3_url}/ft-runs"],
        ),
        "score": (
            "distil.pipelines.score_reviews",
            None,
            ["--input", json.dumps([str(tmp_path / "score.jsonl")]),
             "--model", f"{s3_url}/classifier/clf", "--output", f"{s3_url}/scored",
             "--run-id", "r1", "--model-cache", str(tmp_path / "model-cache"),
             "--max-length", "32", "--batch-size", "8", "--runner", "FnApiRunner"],
        ),
    }  # fmt: skip
    for module, _, argv in argvs.values():
        _stage(module, [*argv, "--run-group", group], env)

    client = _client(mlflow_server)  # also the credentials, for mlflow's fluent API
    # the README's comparison: the distil run's params and final metrics as a DataFrame
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    frame = mlflow.search_runs(
        experiment_names=[experiment], filter_string="tags.`distil.stage` = 'distil'"
    )
    assert len(frame) == 1
    assert frame["params.temperature"][0] == "2.0" and frame["metrics.loss"][0] > 0
    assert 0 <= frame["metrics.eval_teacher_agreement"][0] <= 1

    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline"]
    assert len(parents) == 1 and parents[0].info.run_name == group
    nested = {
        r.data.tags[tracking.STAGE_TAG]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    assert sorted(nested) == sorted(argvs)
    for stage, (_, cls, argv) in argvs.items():
        run = nested[stage]
        assert run.info.status == "FINISHED", stage
        cfg = parse_job_args(cls, "x", argv) if cls else score_args(argv)
        assert run.data.params == tracking.params_of(cfg.model_dump(mode="json")), stage
        artifacts = [a.path for a in client.list_artifacts(run.info.run_id)]
        assert "summary.json" in artifacts, stage

    # the distil run's loss curve: one point per log step, from rank 0 while it trained
    distil_run = nested["distil"].info.run_id
    history = client.get_metric_history(distil_run, "loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 20]
    for name in ("lr", "tokens_per_s", "grad_norm", "loss_kd"):
        assert len(client.get_metric_history(distil_run, name)) == 4, name
    assert [m.step for m in client.get_metric_history(distil_run, "eval_kl_to_teacher")] == [
        10,
        20,
    ]
    finetune_run = nested["finetune"].info.run_id
    assert [m.step for m in client.get_metric_history(finetune_run, "loss")] == [1, 2, 3, 4]
    assert nested["finetune"].data.metrics["metrics.accuracy"] >= 0
    score = nested["score"].data.metrics
    assert score["rows_in"] == score["scored"] + score["dead_letter"] == 16
    assert score["rows_per_s"] > 0
    prep = nested["prepare"].data
    assert prep.metrics["rows"] > 0 and "dead_letter" in prep.metrics
    assert prep.tags["distil.output"] == prepared
    assert nested["logits"].data.tags.get("distil.key")

    # the artifacts are on the S3 server, under the server's artifacts destination
    bucket = s3_url.split("/")[2]
    fs, _ = storage.get_fs(f"s3://{bucket}/any")
    found = [p for p in fs.find(bucket) if p.endswith(f"{distil_run}/artifacts/summary.json")]
    assert len(found) == 1, found


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
