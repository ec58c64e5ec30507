"""`distil pipeline run` on the local stack (`distil stack up`), with the commands of
docs/operations.md ("The whole chain"): every stage a Ray job, the student published as version 1
of the registered model with the alias champion and scored through it; a second run submits no
job; `ray job stop` of the distil job midway, then the command again, gives the student an
uninterrupted run gave; a gate that cannot be met publishes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from train_workers import registered_steps

from distil import storage
from distil.config import resolve_config_path
from distil.demo.plan import CHAIN_SECTIONS

pytestmark = pytest.mark.slow  # the local stack, seven Ray jobs, a Beam run

BIN = Path(sys.executable).parent
MODEL = "distil-sentiment"


def _distil(*args: str, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "distil"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _tiny_config(path: Path, root: str, corpus: str, train: str, teacher: str, **over) -> Path:
    """The tiny demo's stage sections on this test's data; distil long enough to be stopped
    between two checkpoints."""
    budgets = yaml.safe_load(resolve_config_path("demo/tiny").read_text())
    cfg = {k: budgets[k] for k in CHAIN_SECTIONS if k in budgets and k != "adapt"}
    # one worker: the test corpus is one row group of training rows, and a worker reads whole ones
    cfg["distil"] = {
        **cfg["distil"], "max_steps": 60, "checkpoint_every": 10, "eval_every": 60,
        "num_workers": 1, "cpus_per_worker": 1.0,
    }  # fmt: skip
    cfg["finetune"] = {**cfg["finetune"], "max_steps": 8, "validation_fraction": 0.25}
    cfg.update(root=root, corpus=[corpus], train=train, teacher=teacher, **over)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _jobs(env: dict, root: str) -> dict[str, dict]:
    """The stack's Ray jobs of the steps under ``root``: submission id -> status and step key."""
    from ray.job_submission import JobSubmissionClient

    from distil.ops import stack

    client = JobSubmissionClient(env["RAY_ADDRESS"], headers=stack.auth_headers())
    return {
        j.submission_id: {"status": str(j.status), "step": (j.metadata or {}).get("distil_step")}
        for j in client.list_jobs()
        if (j.metadata or {}).get("distil_step", "").startswith(root + "/")
    }


def _champion(env: dict):
    from mlflow import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"]).get_model_version_by_alias(MODEL, "champion")


@pytest.mark.timeout(2400)
def test_the_chain_runs_as_ray_jobs_publishes_resumes_and_gates(
    stack_env, tiny_teacher_dir, make_planted_reviews, tmp_path, monkeypatch
):
    planted_reviews = make_planted_reviews
    up = _distil("stack", "up", env=stack_env, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    from distil.ops import stack

    exports = stack.env_exports()  # what `eval "$(distil stack env)"` sets, the password read
    env = dict(stack_env, **exports, MLFLOW_EXPERIMENT_NAME=f"chain-{uuid.uuid4().hex[:6]}")
    for k, v in exports.items():  # this process reads the stack's S3 and MLflow too (until the end)
        if k.startswith(("AWS_", "MLFLOW_")):
            monkeypatch.setenv(k, v)
    assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:")

    data = f"s3://distil/chain-test-{uuid.uuid4().hex[:6]}"
    corpus, train = f"{data}/corpus.jsonl", f"{data}/reviews.jsonl"
    texts = [r["text"] + ". " + r["text"] + "." for r in planted_reviews(600, seed=3)]
    storage.write_bytes(corpus, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
    reviews = planted_reviews(160, seed=4)
    storage.write_bytes(train, "".join(json.dumps(r) + "\n" for r in reviews).encode())
    root = f"{data}/pipeline"
    config = _tiny_config(
        tmp_path / "pipeline.yaml", root, corpus, train, str(tiny_teacher_dir),
        gate={"min_teacher_share": 0.01, "max_int8_drop": 100},
    )  # fmt: skip

    # 1. every stage a Ray job; the student published as version 1, alias champion
    first = _distil("pipeline", "run", "--config", str(config), env=env, timeout=1500)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    record = storage.read_json(f"{root}/pipeline.json")
    ran = {n for n, st in record["steps"].items() if not st["skipped"]}
    assert ran == {"prepare", "logits", "distil", "finetune_teacher", "finetune_student", "gate"}
    assert record["gate"]["passed"] and not record["stopped"]
    assert record["steps"]["adapt_teacher"]["skipped"]  # the tiny teacher has a trained head
    jobs = _jobs(env, root)
    by_step = {j["step"].rsplit("/", 1)[-1].rsplit("-", 1)[0]: j for j in jobs.values()}
    assert set(by_step) == ran, jobs
    assert all(j["status"] == "SUCCEEDED" for j in jobs.values()), jobs
    champion = _champion(env)
    assert champion.version == "1"
    gate = storage.read_json(f"{record['steps']['gate']['output']}/gate.json")
    assert gate["passed"] and gate["published"]["registered"] == f"models:/{MODEL}/1"
    assert champion.tags["distil.classifier"] == record["steps"]["finetune_student"]["output"]

    # 2. scored through the alias, the version in the run's lineage
    scored = _distil(
        "score", "--input", train, "--model", f"models:/{MODEL}@champion",
        "--output", f"{data}/scored", "--run-id", "first", "--max-length", "32",
        env=env,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]
    summary = storage.read_json(f"{data}/scored/run_id=first/summary.json")
    assert summary["rows_in"] == summary["scored"] == len(reviews)
    assert summary["model_version"] == f"models:/{MODEL}/1"

    # 3. again: every step reused, no job submitted
    second = _distil("pipeline", "run", "--config", str(config), env=env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _jobs(env, root).keys() == jobs.keys()
    assert "ran: nothing" in second.stdout

    # 4. the distil job stopped midway, then the command again: the same student
    distil = record["steps"]["distil"]
    weights = f"{distil['output']}/model.safetensors"
    uninterrupted = storage.sha256_url(weights)
    argv = distil["argv"]
    run_url = f"{root}/train/{argv[argv.index('--run-name') + 1]}"
    for url in (distil["output"], run_url, f"{root}/steps/distil-{distil['fingerprint']}.json"):
        storage.remove(url)
    stopped = subprocess.Popen(
        [str(BIN / "distil"), "pipeline", "run", "--config", str(config)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 600
    while not registered_steps(run_url) and time.time() < deadline:
        time.sleep(0.2)
    running = [i for i, j in _jobs(env, root).items() if j["status"] == "RUNNING"]
    assert registered_steps(run_url) and len(running) == 1, (registered_steps(run_url), running)
    stop = subprocess.run(
        [str(BIN / "ray"), "job", "stop", running[0]], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stdout + stop.stderr
    out, _ = stopped.communicate(timeout=300)
    assert stopped.returncode != 0 and "STOPPED" in out, out[-3000:]
    assert not storage.is_committed(distil["output"])
    resumed = _distil("pipeline", "run", "--config", str(config), env=env)
    assert resumed.returncode == 0, resumed.stdout[-5000:] + resumed.stderr[-3000:]
    assert "ran: distil" in resumed.stdout  # everything downstream reused: same fingerprints
    assert storage.sha256_url(weights) == uninterrupted
    result = storage.read_json(f"{distil['output']}/metrics.json")
    assert result["step"] == 60

    # 5. a gate that cannot be met: stopped before publishing, the alias where it was
    strict = _tiny_config(
        tmp_path / "strict.yaml", root, corpus, train, str(tiny_teacher_dir),
        gate={"min_teacher_share": 1000, "max_int8_drop": 100},
    )  # fmt: skip
    failed = _distil("pipeline", "run", "--config", str(strict), env=env)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "quality gate failed, nothing published" in failed.stderr
    assert "teacher_share" in failed.stderr or "teacher's" in failed.stderr
    assert _champion(env).version == "1"
    latest = storage.read_json(f"{root}/models/latest.json")
    assert record["steps"]["finetune_student"]["output"] in json.dumps(latest)
