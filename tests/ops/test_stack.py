"""`distil stack up/status/down` for real, and `ray job submit` against it (acceptance #2, #4);
the stack closed to the network (issue 12, point 6): loopback-only sockets, token auth on the job
API and the GCS, no credentials in job records, and `down` stopping only the stack's own Ray."""

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from distil import storage
from distil.chain import steps
from distil.ops import procs, stack

pytestmark = pytest.mark.slow  # the local stack / registry downloads + a Ray job

VENV_BIN = Path(sys.executable).parent
# Processes of the stack allowed to listen beyond loopback, each with its reason in docs/operations.md
# ("Local stack"). Empty: every Ray and SeaweedFS socket binds 127.0.0.1.
NON_LOOPBACK_ALLOWED: dict[str, str] = {}


def _distil(*args, env):
    return subprocess.run(
        [str(VENV_BIN / "distil"), *args], capture_output=True, text=True, env=env, timeout=180
    )


@pytest.mark.timeout(900)
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

    token = Path(status["ray"]["token_path"])
    assert token.stat().st_mode & 0o777 == 0o600

    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in _distil("stack", "env", env=stack_env).stdout.splitlines()
    )
    assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_AUTH_TOKEN_PATH"] == str(token)
    _mlflow_is_closed(status["mlflow"], exports)
    job_env = dict(stack_env, **exports)

    _every_socket_on_loopback()
    _job_api_and_driver_need_the_token(stack_env, job_env)
    _no_secret_in_job_records(job_env)
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

    ours = stack.ray_pids()
    assert len(ours) > 5, "the stack's Ray processes were not found"
    bystander = _another_ray()
    try:
        down = _distil("stack", "down", env=stack_env)
        assert down.returncode == 0, down.stdout
        after = json.loads(down.stdout)
        assert not after["ray"]["healthy"] and not after["s3"]["healthy"]
        assert not stack.ray_pids() and not any(procs.alive(p) for p in ours)
        # another Ray on the machine (another user's, a test's) is left alone
        assert bystander.poll() is None and procs.with_descendants({bystander.pid}) - {
            bystander.pid
        }, "`distil stack down` stopped a Ray that is not the stack's"
    finally:
        bystander.stdin.close()
        bystander.wait(timeout=60)
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
    with _stack_s3(env):
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
    with _stack_s3(job_env):
        assert storage.read_manifest(out)["rows"] > 0


@contextlib.contextmanager
def _stack_s3(env):
    """This process reads and writes the stack's S3 with ``env``'s AWS_* settings meanwhile."""
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _every_socket_on_loopback():
    """Every TCP socket the stack's processes listen on (the head's whole process tree, found by
    session, and SeaweedFS) is bound to loopback, bar the documented allow-list."""
    state = json.loads((stack.stack_dir() / "state.json").read_text())
    servers = {state["s3"]["pid"], state["mlflow"]["pid"]}
    pids = stack.ray_pids() | procs.with_descendants(servers)
    listeners = procs.listening(pids)
    table = "\n".join(f"{x.host}:{x.port} {x.command}" for x in listeners)
    ports = {x.port for x in listeners}
    # the listing sees the known servers (else an empty listing would pass)
    assert {stack.RAY_PORT, stack.DASHBOARD_PORT, stack.S3_PORT, stack.MLFLOW_PORT} <= ports, table
    assert any("raylet" in x.command for x in listeners), table
    exposed = [
        x
        for x in listeners
        if not x.loopback and not any(name in x.command for name in NON_LOOPBACK_ALLOWED)
    ]
    assert not exposed, "non-loopback listeners:\n" + table


def _mlflow_is_closed(status: dict, exports: dict[str, str]) -> None:
    """The stack's MLflow answers its credentials only; the password stays in its 0600 file
    (``stack env`` prints a read of it, not the password)."""
    from distil.ops.mlflow_server import http_status

    assert status["healthy"] and status["url"] == f"http://127.0.0.1:{stack.MLFLOW_PORT}"
    secret = Path(status["password_path"])
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.parent.stat().st_mode & 0o777 == 0o700
    password = secret.read_text().strip()
    assert exports["MLFLOW_TRACKING_URI"] == status["url"]
    assert exports["MLFLOW_TRACKING_PASSWORD"] == f'"$(cat {secret})"'
    assert password not in "".join(exports.values())
    api = f"{status['url']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(api) == 401
    assert http_status(api, ("admin", "wrong")) == 401
    assert http_status(api, ("admin", password)) == 200


def _http_status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _job_api_and_driver_need_the_token(stack_env, job_env):
    api = f"http://127.0.0.1:{stack.DASHBOARD_PORT}"
    jobs = f"{api}/api/jobs/"
    assert _http_status(jobs, {}) == 401
    assert _http_status(jobs, {"Authorization": "Bearer " + "0" * 64}) == 403
    assert _http_status(jobs, stack.auth_headers()) == 200

    submit = [str(VENV_BIN / "ray"), "job", "submit", "--address", api, "--", "true"]
    refused = subprocess.run(submit, env=stack_env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "Authentication" in refused.stdout + refused.stderr, refused.stderr[-2000:]
    ok = subprocess.run(submit, env=job_env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]

    driver = [
        sys.executable, "-c",
        f"import ray; ray.init(address='127.0.0.1:{stack.RAY_PORT}'); "
        "print('CPUS', ray.cluster_resources()['CPU'])",
    ]  # fmt: skip
    # the same environment as a token holder's driver, less the token
    no_token = {k: v for k, v in job_env.items() if not k.startswith("RAY_AUTH_")}
    no_token.pop("RAY_ADDRESS")
    refused = subprocess.run(driver, env=no_token, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "CPUS" not in refused.stdout
    assert "Authentication token is missing" in refused.stderr, refused.stderr[-2000:]
    with_token = dict(
        no_token, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=job_env["RAY_AUTH_TOKEN_PATH"]
    )
    ok = subprocess.run(driver, env=with_token, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "CPUS" in ok.stdout, ok.stderr[-2000:]


def _no_secret_in_job_records(job_env):
    """A job submitted the way the demo submits one reaches S3 with the stack's credentials, and
    neither `ray job list` nor the job's details (runtime env, metadata, entrypoint) hold them."""
    out = f"s3://{stack.DEFAULT_BUCKET}/secretless-{uuid.uuid4().hex[:6]}"
    code = (
        "import json; from distil import storage; "
        f"storage.write_json('{out}/x.json', {{'ok': 1}}); "
        f"print('DISTIL_RESULT', json.dumps({{'output': '{out}'}}))"
    )
    runner = steps.StepRunner(
        f"s3://{stack.DEFAULT_BUCKET}/runs", job_env["RAY_ADDRESS"], steps.job_env(job_env)
    )
    assert runner.env["AWS_SECRET_ACCESS_KEY"] == stack.LOCAL_SECRET_KEY  # the demo holds it
    step = steps.Step("secretless", ["python", "-c", code], "ray", out, "fp0")
    logs = runner.execute(step)
    assert steps.parse_result(logs) == {"output": out}

    from distil.ops.submit import job_client

    client = job_client(job_env["RAY_ADDRESS"])
    (job,) = [j for j in client.list_jobs() if (j.metadata or {}).get("distil_step", "").endswith(
        "secretless-fp0"
    )]  # fmt: skip
    info = client.get_job_info(job.submission_id)
    record = json.dumps([info.runtime_env, info.metadata, info.entrypoint, str(info)], default=str)
    listed = subprocess.run(
        [str(VENV_BIN / "ray"), "job", "list", "--address", job_env["RAY_ADDRESS"]],
        env=job_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0 and job.submission_id in listed.stdout, listed.stderr[-2000:]
    assert info.runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == job_env["AWS_ENDPOINT_URL"]
    for secret in (stack.LOCAL_SECRET_KEY, stack.LOCAL_ACCESS_KEY):
        assert secret not in record and secret not in listed.stdout


def _another_ray() -> subprocess.Popen:
    """An embedded Ray in another process (as another user's job or test would run), up until its
    stdin closes."""
    code = (
        "import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); "
        "print('READY', flush=True); sys.stdin.read(); ray.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "READY"
    return proc
