"""distil.chain.steps: commands, flags, DISTIL_RESULT parsing, fingerprints and the reuse decision,
on an in-memory store (no Ray, no S3, no stage code)."""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest

from distil import storage
from distil.chain import steps
from distil.chain.steps import STAGES, StepRunner, command, flags, parse_result


@pytest.fixture
def root():
    return f"memory://demo-steps-{uuid.uuid4().hex[:8]}/demo/tiny"


def test_flags_spells_each_value_as_the_cli_parses_it():
    args = {
        "seq_len": 64,
        "input": ["s3://b/a", "s3://b/b"],
        "extra": {"k": 1},
        "quantize": False,
        "resume": True,
        "skip_me": None,
        "lr": 0.5,
    }
    assert flags(args) == [
        "--seq-len", "64",
        "--input", '["s3://b/a", "s3://b/b"]',
        "--extra", '{"k": 1}',
        "--no-quantize",
        "--resume",
        "--lr", "0.5",
    ]  # fmt: skip


def test_parse_result_takes_the_last_result_line():
    logs = 'noise\nDISTIL_RESULT {"n": 1}\nmore\nDISTIL_RESULT {"n": 2, "url": "s3://x"}\ntail\n'
    assert parse_result(logs) == {"n": 2, "url": "s3://x"}
    with pytest.raises(RuntimeError, match="no DISTIL_RESULT"):
        parse_result("a job that crashed before printing its result\n")


@pytest.mark.parametrize(
    "stage, module",
    [
        ("prepare", "distil.jobs.prepare"),
        ("adapt_teacher", "distil.jobs.adapt_teacher"),
        ("teacher_logits", "distil.jobs.teacher_logits"),
        ("distil", "distil.jobs.distil"),
        ("finetune", "distil.jobs.finetune"),
        ("score_reviews", "distil.pipelines.score_reviews"),
    ],
)
def test_each_stage_runs_as_a_package_module(stage, module):
    argv = command(stage, {"input": "s3://b/in", "batch_size": 8})
    assert argv == ["python", "-m", module, "--input", "s3://b/in", "--batch-size", "8"]
    assert not any(a.endswith(".py") for a in argv)


def test_only_scoring_and_pool_labelling_run_on_beam():
    assert {k for k, s in STAGES.items() if s.engine == "beam"} == {"score_reviews", "task_pool"}


def test_local_runs_use_this_interpreter():
    argv = command("prepare", {"seq_len": 8})
    assert steps.local_argv(argv) == [sys.executable, "-m", "distil.jobs.prepare", "--seq-len", "8"]


def test_job_env_passes_s3_settings_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = steps.job_env({"AWS_ENDPOINT_URL": "http://s3", "AWS_REGION": "r", "HOME": "/h"})
    assert env == {
        "AWS_ENDPOINT_URL": "http://s3",
        "AWS_REGION": "r",
        "DISTIL_HOME": str(tmp_path / ".distil"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    assert steps.job_env({"DISTIL_HOME": "/d"})["DISTIL_HOME"] == "/d"
    temporary = {"AWS_SESSION_TOKEN": "t", "AWS_PROFILE": "p", "DISTIL_ROOT": "s3://b/x"}
    assert temporary.items() <= steps.job_env(temporary).items()


def test_ray_jobs_get_no_credentials(tmp_path, monkeypatch):
    """A local process gets the credentials; a Ray job's runtime env (kept in the job record,
    shown by `ray job list`) never does: the cluster's workers hold them in their environment."""
    monkeypatch.chdir(tmp_path)
    secrets = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"}
    env = steps.job_env({"AWS_ENDPOINT_URL": "http://s3", "AWS_REGION": "r", **secrets})
    assert secrets.items() <= env.items()
    assert steps.ray_job_env(env) == {
        "AWS_ENDPOINT_URL": "http://s3",
        "AWS_REGION": "r",
        "DISTIL_HOME": str(tmp_path / ".distil"),
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_fingerprints_match_earlier_demo_runs(root):
    """The fingerprint (so every output URL) is what the demo computed before the stages became
    modules: values pinned from the previous implementation, so committed runs are still reused."""
    runner = StepRunner("memory://fp/demo/tiny", None, {})
    prep = runner.plan(
        "prepare", "prepare", {"seq_len": 64, "input": ["memory://s/corpus/news/"]}, "output"
    )
    assert prep.fingerprint == "e64e2ec7d9e9193a"
    assert prep.output == "memory://fp/demo/tiny/prepare-e64e2ec7d9e9193a"
    assert prep.argv[-2:] == ["--output", prep.output]
    adapt = runner.plan(
        "adapt_teacher", "adapt_teacher", {"token_budget": 4000, "input": prep.output}, "output",
        upstream=(prep,),
    )  # fmt: skip
    assert adapt.fingerprint == "1a3170f9352085c4"
    score = runner.plan(
        "score", "score_reviews", {"batch_size": 8, "quantize": False}, "output", upstream=(adapt,)
    )
    assert (score.fingerprint, score.engine) == ("2f047db4d21ca40d", "beam")


def test_fingerprint_follows_args_and_upstream():
    runner = StepRunner("memory://fp2/r", None, {})
    a = runner.plan("prepare", "prepare", {"seq_len": 64}, "output")
    b = runner.plan("prepare", "prepare", {"seq_len": 128}, "output")
    c = runner.plan("adapt_teacher", "adapt_teacher", {}, "output", upstream=(a,))
    d = runner.plan("adapt_teacher", "adapt_teacher", {}, "output", upstream=(b,))
    assert a.fingerprint != b.fingerprint and c.fingerprint != d.fingerprint
    no_output_flag = runner.plan("logits", "teacher_logits", {"k": 8}, None)
    assert "--output" not in no_output_flag.argv


class FakeJob:
    """Stands in for ``StepRunner.execute``: commits the planned output, prints a result."""

    def __init__(self):
        self.ran: list[str] = []

    def __call__(self, st):
        self.ran.append(st.name)
        out = st.argv[st.argv.index("--output") + 1]
        storage.commit(out, {"fingerprint": "f"})
        return f"log line\nDISTIL_RESULT {json.dumps({'rows': 3})}\n"


def test_a_finished_step_is_reused_not_rerun(root):
    job = FakeJob()
    first = StepRunner(root, None, {})
    first.execute = job
    st = first.step("prepare", "prepare", {"seq_len": 64}, "output")
    assert job.ran == ["prepare"] and not st.reused and st.result == {"rows": 3}
    record = storage.read_json(first.record_url("prepare", st.fingerprint))
    assert record["output"] == st.output and record["argv"] == st.argv
    assert record["argv"][:3] == ["python", "-m", "distil.jobs.prepare"]

    second = StepRunner(root, None, {})
    second.execute = job
    again = second.step("prepare", "prepare", {"seq_len": 64}, "output")
    assert job.ran == ["prepare"]  # not run a second time
    assert again.reused and again.output == st.output and again.result == {"rows": 3}
    assert again.wall_s == st.wall_s and second.steps["prepare"] is again

    changed = second.step("prepare", "prepare", {"seq_len": 32}, "output")
    assert job.ran == ["prepare", "prepare"] and not changed.reused


def test_a_record_whose_output_is_gone_is_rerun(root):
    job = FakeJob()
    runner = StepRunner(root, None, {})
    runner.execute = job
    st = runner.step("prepare", "prepare", {"seq_len": 64}, "output")
    fs, path = storage.get_fs(st.output)
    fs.rm(path, recursive=True)
    assert runner.reusable(runner.plan("prepare", "prepare", {"seq_len": 64}, "output")) is None
    runner.step("prepare", "prepare", {"seq_len": 64}, "output")
    assert job.ran == ["prepare", "prepare"]


def test_a_step_whose_output_is_not_committed_fails(root):
    runner = StepRunner(root, None, {})
    runner.execute = lambda st: 'DISTIL_RESULT {"output": "memory://nowhere/x"}\n'
    with pytest.raises(RuntimeError, match="no committed manifest"):
        runner.step("prepare", "prepare", {}, "output")
    assert not storage.exists(
        runner.record_url("prepare", runner.plan("prepare", "prepare", {}, "output").fingerprint)
    )


def test_output_key_picks_the_output_from_the_result(root):
    runner = StepRunner(root, None, {})

    def job(st):
        storage.commit(root + "/elsewhere", {})
        return 'DISTIL_RESULT {"cache_url": "%s"}\n' % (root + "/elsewhere")

    runner.execute = job
    st = runner.step("logits", "teacher_logits", {}, None, output_key="cache_url")
    assert st.output == root + "/elsewhere"


def test_ray_stages_are_submitted_without_a_working_dir(monkeypatch, root):
    import distil.ops.submit

    calls = []

    def fake_submit(address, argv, **kw):
        calls.append((address, argv, kw))
        return "sub-1", 'DISTIL_RESULT {"ok": true}\n'

    monkeypatch.setattr(distil.ops.submit, "submit_ray_job", fake_submit)
    monkeypatch.setattr(steps, "run_local", lambda *a: pytest.fail("ran locally"))
    runner = StepRunner(root, "http://head:8265", {"AWS_REGION": "r"})
    st = runner.plan("prepare", "prepare", {"seq_len": 8}, "output")
    assert runner.execute(st) == 'DISTIL_RESULT {"ok": true}\n'
    ((address, argv, kw),) = calls
    assert address == "http://head:8265" and argv == st.argv
    assert argv[:3] == ["python", "-m", "distil.jobs.prepare"]
    assert kw == {"env_vars": {"AWS_REGION": "r"}, "step_key": f"{root}/prepare-{st.fingerprint}"}


@pytest.mark.parametrize("address, stage", [("", "prepare"), ("http://head:8265", "score_reviews")])
def test_local_steps_run_this_interpreter(monkeypatch, root, address, stage):
    """No Ray address: every stage is a local process; Beam scoring is always local."""
    import distil.ops.submit

    monkeypatch.setattr(
        distil.ops.submit, "submit_ray_job", lambda *a, **k: pytest.fail("submitted")
    )
    seen = []
    monkeypatch.setattr(steps, "run_local", lambda name, argv, env: seen.append(argv) or "log")
    runner = StepRunner(root, address, {"X": "1"})
    st = runner.plan("s", stage, {"k": 1}, "output")
    assert runner.execute(st) == "log"
    assert seen == [[sys.executable, "-m", STAGES[stage].module, "--k", "1", "--output", st.output]]


def test_run_local_uses_the_callers_directory_and_env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "http://somewhere:8265")
    code = (
        "import json, os; print('DISTIL_RESULT ' + json.dumps({'cwd': os.getcwd(), "
        "'ray': os.environ.get('RAY_ADDRESS'), 'x': os.environ.get('DEMO_X')}))"
    )
    logs = steps.run_local("t", [sys.executable, "-c", code], {"DEMO_X": "1"})
    assert parse_result(logs) == {"cwd": os.getcwd(), "ray": None, "x": "1"}
    with pytest.raises(RuntimeError, match="t failed with exit code 3"):
        steps.run_local("t", [sys.executable, "-c", "raise SystemExit(3)"], {})
