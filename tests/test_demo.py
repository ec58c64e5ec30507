"""`distil demo --scale tiny` end to end as a new user runs it: `pip install .` (non-editable) in a
fresh venv, then the venv's `distil demo` from a directory that is not the repository, on the S3
fixture. Each stage runs as its own job process (embedded Ray, `--ray-address ''`) as
``python -m distil.jobs.<stage>``: run.json names committed artifacts, the report's numbers are
the run's, and a second run reuses every stage. Tracked into the MLflow fixture (basic auth,
artifacts on S3) with the image's ``mlflow-skinny``: the demo is one parent run with a nested run
per stage job, each with its config as params, its summary and its curves."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from distil import storage, tracking

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.slow


def _demo(
    bin_dir: Path, root: str, samples: str, report_dir: Path, env: dict, cwd: Path
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            str(bin_dir / "distil"), "demo", "--scale", "tiny",
            "--root", root, "--samples", samples, "--ray-address", "",
            "--no-start-stack", "--report-dir", str(report_dir),
        ],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    return out, time.perf_counter() - t0


@pytest.mark.timeout(1800)
def test_tiny_demo_runs_every_stage_then_reuses_them(
    installed_distil, s3_server, mlflow_server, tmp_path
):
    root = f"s3://{s3_server.bucket}/demo"
    samples = f"s3://{s3_server.bucket}/samples"
    experiment = f"demo-{uuid.uuid4().hex[:6]}"
    env = dict(
        os.environ,
        DISTIL_HOME=str(tmp_path / "home"),
        **mlflow_server.env(),
        MLFLOW_EXPERIMENT_NAME=experiment,
    )
    for k in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(k, None)
    env["PATH"] = os.pathsep.join([str(installed_distil), env.get("PATH", "")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the installed copy is what runs: distil (configs included) from site-packages, no jobs/
    probe = subprocess.run(
        [
            str(installed_distil / "python"), "-c",
            "import distil, importlib.util as u; from distil.config import resolve_config_path;"
            "print(distil.__file__); print(resolve_config_path('demo/tiny'));"
            "print(u.find_spec('jobs'), u.find_spec('pipelines'))",
        ],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    pkg, cfg, others = probe.stdout.splitlines()
    assert "site-packages" in pkg and str(REPO) not in pkg, pkg
    assert "site-packages" in cfg, cfg
    assert others == "None None", others

    first, _ = _demo(installed_distil, root, samples, tmp_path / "runs", env, elsewhere)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "run.json:" in first.stdout and "report:" in first.stdout
    assert "running python -m distil.jobs.prepare " in first.stdout

    run = storage.read_json(f"{root}/tiny/run.json")
    stages = ["prepare", "adapt_teacher", "logits", "distil", "finetune_teacher",
              "finetune_student", "gate", "score"]  # fmt: skip
    for name in stages:
        st = run["stages"][name]
        assert st["reused"] is False and st["wall_s"] > 0
        assert storage.is_committed(st["url"]), name
        assert st["command"].startswith("python -m distil."), st["command"]
    for name, art in run["artifacts"].items():
        if name != "dead_letter":
            assert art["url"] and art["fingerprint"], name
    # the numbers in the report come from this run's artifacts
    prep = storage.read_manifest(run["stages"]["prepare"]["url"])
    assert run["stages"]["prepare"]["metrics"]["tokens"] == prep["tokens"]
    score = run["stages"]["score"]["metrics"]
    assert score["rows_in"] == score["scored"] + score["dead_letter"] > 0
    assert sum(sum(c) for c in run["scores"]["histogram"]["counts"].values()) == score["scored"]
    page = (tmp_path / "runs" / "tiny" / "report.html").read_text()
    assert f"{prep['tokens']:,}" in page
    assert run["artifacts"]["cache"]["url"] in page
    rows = {r["metric"]: r for r in run["comparison"]["rows"]}
    # tiny's budgets cap the out-of-domain set (ood_max_rows: 500)
    assert "sentiment accuracy (amazon snippets, out of domain, 500 rows)" in rows, list(rows)
    assert rows["parameters"]["student"] < rows["parameters"]["teacher"]
    clf = storage.read_manifest(run["stages"]["finetune_student"]["url"])
    assert (
        rows["sentiment accuracy (movie snippets, validation)"]["student"]
        == clf["metrics"]["accuracy"]
    )

    _check_tracked_demo(mlflow_server, experiment, run)

    second, _ = _demo(installed_distil, root, samples, tmp_path / "runs2", env, elsewhere)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    for name in stages:
        assert f"[pipeline] {name}: reusing committed output" in second.stdout, name
    rerun = storage.read_json(f"{root}/tiny/run.json")
    assert all(rerun["stages"][n]["reused"] for n in stages)
    assert rerun["artifacts"] == run["artifacts"]
    json.dumps(rerun)  # machine-readable


def _check_tracked_demo(server, experiment: str, run: dict) -> None:
    """The first demo as MLflow shows it: one parent run, one nested run per stage job."""
    from distil.config import parse_job_args
    from distil.train.config import DistilConfig

    os.environ.update({k: v for k, v in server.env().items() if k != tracking.URI_ENV})
    client = tracking.make_client(server.url)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.STAGE_TAG) == "pipeline"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    assert "run.json" in [a.path for a in client.list_artifacts(parents[0].info.run_id)]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    jobs = Counter(
        tracking.STAGES[f"{st['command'].split()[2]}:run"]
        for st in run["stages"].values()
        if st.get("command")
    )
    assert Counter(r.data.tags[tracking.STAGE_TAG] for r in nested) == jobs
    for r in nested:
        assert r.info.status == "FINISHED", r.data.tags
        assert r.data.params, r.data.tags
        assert "summary.json" in [a.path for a in client.list_artifacts(r.info.run_id)]
    by_stage = {r.data.tags[tracking.STAGE_TAG]: r for r in nested}

    # the distil run: its params are the job's config, its curves one point per log step
    argv = run["stages"]["distil"]["command"].split()[3:]
    cfg = parse_job_args(DistilConfig, "x", argv)
    distil_run = by_stage["distil"]
    assert distil_run.data.params == tracking.params_of(cfg.model_dump(mode="json"))
    log_steps = list(range(cfg.log_every, cfg.max_steps + 1, cfg.log_every))
    history = client.get_metric_history(distil_run.info.run_id, "loss")
    assert sorted(m.step for m in history) == log_steps
    for name in ("lr", "tokens_per_s", "grad_norm", "loss_kd"):
        assert len(client.get_metric_history(distil_run.info.run_id, name)) == len(log_steps)
    assert client.get_metric_history(distil_run.info.run_id, "eval_kl_to_teacher")
    score = by_stage["score"].data.metrics
    assert score["rows_in"] == score["scored"] + score["dead_letter"] > 0
    assert score["rows_in"] == run["stages"]["score"]["metrics"]["rows_in"]
    assert by_stage["prepare"].data.tags["distil.output"] == run["stages"]["prepare"]["url"]
    assert by_stage["logits"].data.tags.get("distil.key")

    # the artifacts are on the S3 server, under the server's artifacts destination
    bucket = run["stages"]["prepare"]["url"].split("/")[2]
    fs, _ = storage.get_fs(f"s3://{bucket}/any")
    found = [
        p for p in fs.find(bucket) if p.endswith(f"{distil_run.info.run_id}/artifacts/summary.json")
    ]
    assert len(found) == 1, found
