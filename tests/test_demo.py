"""`distil demo --scale tiny` end to end on the S3 fixture, each stage run as its own job process
(embedded Ray, `--ray-address ''`) as ``python -m distil.jobs.<stage>``, started from a directory
that is not the repository: run.json names committed artifacts, the report's numbers are the
run's, and a second run reuses every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distil import storage

REPO = Path(__file__).resolve().parents[1]


def _demo(
    root: str, samples: str, report_dir: Path, env: dict, cwd: Path
) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable, "-m", "distil.cli", "demo", "--scale", "tiny",
            "--root", root, "--samples", samples, "--ray-address", "",
            "--no-start-stack", "--report-dir", str(report_dir),
        ],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    return out, time.perf_counter() - t0


@pytest.mark.timeout(1800)
def test_tiny_demo_runs_every_stage_then_reuses_them(s3_server, tmp_path):
    root = f"s3://{s3_server.bucket}/demo"
    samples = f"s3://{s3_server.bucket}/samples"
    # PYTHONPATH stands in for an installed package; the demo must need nothing from its cwd
    env = dict(os.environ, PYTHONPATH=str(REPO), DISTIL_HOME=str(tmp_path / "home"))
    env.pop("RAY_ADDRESS", None)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first, _ = _demo(root, samples, tmp_path / "runs", env, elsewhere)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert "run.json:" in first.stdout and "report:" in first.stdout
    assert "running python -m distil.jobs.prepare " in first.stdout

    run = storage.read_json(f"{root}/tiny/run.json")
    stages = ["prepare", "adapt_teacher", "logits", "distil", "finetune_teacher",
              "finetune_student", "score"]  # fmt: skip
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
    assert rows["parameters"]["student"] < rows["parameters"]["teacher"]
    clf = storage.read_manifest(run["stages"]["finetune_student"]["url"])
    assert (
        rows["sentiment accuracy (movie snippets, validation)"]["student"]
        == clf["metrics"]["accuracy"]
    )

    second, _ = _demo(root, samples, tmp_path / "runs2", env, elsewhere)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    for name in stages:
        assert f"[demo] {name}: reusing committed output" in second.stdout, name
    rerun = storage.read_json(f"{root}/tiny/run.json")
    assert all(rerun["stages"][n]["reused"] for n in stages)
    assert rerun["artifacts"] == run["artifacts"]
    json.dumps(rerun)  # machine-readable
