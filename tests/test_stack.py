"""`distil stack up/status/down` for real, and `ray job submit` against it (acceptance #2, #4)."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from distil import stack, storage

pytestmark = pytest.mark.slow  # the local stack / registry downloads + a Ray job

VENV_BIN = Path(sys.executable).parent


def _distil(*args, env):
    return subprocess.run(
        [str(VENV_BIN / "distil"), *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.fixture
def stack_env(tmp_path):
    for port in (stack.RAY_PORT, stack.DASHBOARD_PORT, stack.S3_PORT):
        if not stack.port_free(port):
            pytest.fail(f"port {port} busy before the stack test: is a `distil stack` running?")
    env = dict(os.environ, DISTIL_HOME=str(tmp_path / "home"))
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS"):
        env.pop(k, None)
    yield env
    _distil("stack", "down", env=env)


@pytest.mark.timeout(600)
def test_stack_up_status_submit_down(
    stack_env, repo_root, tiny_teacher_dir, real_tokenizer_dir, tmp_path
):
    up = _distil("stack", "up", env=stack_env)
    assert up.returncode == 0, up.stdout + up.stderr
    # idempotent
    again = _distil("stack", "up", env=stack_env)
    assert again.returncode == 0, again.stderr
    st = _distil("stack", "status", env=stack_env)
    status = json.loads(st.stdout)
    assert st.returncode == 0
    assert status["ray"]["healthy"] and status["s3"]["healthy"]
    assert status["s3"]["endpoint"].startswith("http://127.0.0.1:")

    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in _distil("stack", "env", env=stack_env).stdout.splitlines()
    )
    job_env = dict(stack_env, **exports)
    out = f"s3://{stack.DEFAULT_BUCKET}/smoke-{uuid.uuid4().hex[:6]}"
    submit = subprocess.run(
        [
            str(VENV_BIN / "ray"), "job", "submit",
            "--address", "http://127.0.0.1:8265",
            "--working-dir", ".",
            "--", "python", "jobs/smoke.py", "--output", out,
        ],
        cwd=repo_root, env=job_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
    line = next(x for x in submit.stdout.splitlines() if x.startswith("SMOKE"))
    assert json.loads(line.split(" ", 1)[1])["ok"] is True

    _submit_distil_and_load_fill_mask(
        job_env, repo_root, tiny_teacher_dir, real_tokenizer_dir, tmp_path
    )
    _cli_stage_joins_the_stack(job_env, real_tokenizer_dir, tmp_path)

    down = _distil("stack", "down", env=stack_env)
    assert down.returncode == 0, down.stdout
    after = json.loads(down.stdout)
    assert not after["ray"]["healthy"] and not after["s3"]["healthy"]
    assert not stack._ray_processes()
    pid = after["s3"]["pid"]
    assert pid is None or not stack._pid_alive(pid)
    # data dir survives down
    assert Path(stack_env["DISTIL_HOME"], "stack", "s3-data").is_dir()


def test_port_taken_gives_clear_error(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", stack.S3_PORT))
    s.listen(1)
    try:
        with pytest.raises(RuntimeError, match="is taken"):
            stack.up()
    finally:
        s.close()


def test_cli_help_lists_stages():
    out = subprocess.run(
        [str(VENV_BIN / "distil"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for stage in ("stack", "data", "prepare", "logits", "distil", "finetune", "score", "demo"):
        assert stage in out


def _submit_distil_and_load_fill_mask(env, repo_root, teacher_dir, tokenizer_dir, tmp_path):
    """Issue 5, acceptance 1: `ray job submit -- python jobs/distil.py` against the stack trains
    2 workers from a teacher cache on the stack's S3, checkpoints there, and exports a student
    that `transformers.pipeline("fill-mask")` loads and runs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "stage3_data", repo_root / "tests" / "train" / "stage3_data.py"
    )
    stage3_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage3_data)
    root = f"s3://{stack.DEFAULT_BUCKET}/submit-{uuid.uuid4().hex[:6]}"
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        prepared = stage3_data.write_prepared(f"{root}/prepared", tokenizer_dir)
        cache = stage3_data.build_cache(prepared, f"{root}/cache", teacher_dir)
        # the stack's Ray workers must be able to read the teacher: put it on S3 too
        storage.upload_dir(str(teacher_dir), f"{root}/teacher")
        submit = subprocess.run(
            [
                str(VENV_BIN / "ray"), "job", "submit",
                "--address", "http://127.0.0.1:8265", "--working-dir", ".", "--",
                "python", "jobs/distil.py", "--config", "distil/tiny",
                "--cache", cache, "--teacher", f"{root}/teacher",
                "--output", f"{root}/student", "--storage-path", f"{root}/runs",
                "--max-steps", "6", "--checkpoint-every", "3", "--eval-every", "3",
                "--num-workers", "2",
            ],
            cwd=repo_root, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        fs, path = storage.get_fs(f"{root}/runs")
        assert any("checkpoint" in p or "step-" in p for p in fs.find(path)), "no checkpoint on S3"
        assert storage.is_committed(f"{root}/student")
        local = storage.copy_dir_to_local(f"{root}/student", str(tmp_path / "student"))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    from transformers import pipeline

    preds = pipeline("fill-mask", model=local)("the film was [MASK] .")
    assert len(preds) == 5 and all("token_str" in p for p in preds)


def _cli_stage_joins_the_stack(job_env, tokenizer_dir, tmp_path):
    """After `eval $(distil stack env)` (RAY_ADDRESS is the job-API URL), a stage run from the
    CLI joins the stack's cluster instead of failing in ray.init or starting another Ray."""
    assert job_env["RAY_ADDRESS"].startswith("http://127.0.0.1:")
    corpus = tmp_path / "cli-corpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text(
        "".join(
            json.dumps({"text": f"document {i} about the stack. " * 5}) + "\n" for i in range(20)
        )
    )
    out = f"s3://{stack.DEFAULT_BUCKET}/cli-prepare-{uuid.uuid4().hex[:6]}"
    run = subprocess.run(
        [
            str(VENV_BIN / "distil"), "prepare", "--input", str(corpus), "--output", out,
            "--tokenizer", str(tokenizer_dir), "--seq-len", "32", "--num-workers", "1",
        ],
        cwd=tmp_path, env=job_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs[-3000:]
    assert f"joined (127.0.0.1:{stack.RAY_PORT}) Ray cluster" in logs, logs[-3000:]
    assert storage.read_manifest(out)["rows"] > 0
