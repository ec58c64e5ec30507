"""`distil demo --scale tiny` end to end as a new user runs it: `pip install .` (non-editable) in a
fresh venv, then the venv's `distil demo` from a directory that is not the repository, on the S3
fixture. Each stage runs as its own job process (embedded Ray, `--ray-address ''`) as
``python -m distil.jobs.<stage>``: run.json names committed artifacts, the report's numbers are
the run's, and a second run reuses every stage."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from distil import storage

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
def test_tiny_demo_runs_every_stage_then_reuses_them(installed_distil, s3_server, tmp_path):
    root = f"s3://{s3_server.bucket}/demo"
    samples = f"s3://{s3_server.bucket}/samples"
    env = dict(os.environ, DISTIL_HOME=str(tmp_path / "home"))
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
    # tiny's budgets cap the out-of-domain set (ood_max_rows: 500)
    assert "sentiment accuracy (amazon snippets, out of domain, 500 rows)" in rows, list(rows)
    assert rows["parameters"]["student"] < rows["parameters"]["teacher"]
    clf = storage.read_manifest(run["stages"]["finetune_student"]["url"])
    assert (
        rows["sentiment accuracy (movie snippets, validation)"]["student"]
        == clf["metrics"]["accuracy"]
    )

    second, _ = _demo(installed_distil, root, samples, tmp_path / "runs2", env, elsewhere)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    for name in stages:
        assert f"[demo] {name}: reusing committed output" in second.stdout, name
    rerun = storage.read_json(f"{root}/tiny/run.json")
    assert all(rerun["stages"][n]["reused"] for n in stages)
    assert rerun["artifacts"] == run["artifacts"]
    json.dumps(rerun)  # machine-readable
