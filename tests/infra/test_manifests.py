"""Every file under infra/ is validated here: Kubernetes objects against the upstream schemas
shipped by ``kubernetes-validate`` (strict), KubeRay objects against infra/schemas plus their pod
templates against the upstream PodTemplateSpec schema, and every entry point and config a
manifest names must exist in this repo."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from distil.chain.config import PipelineConfig
from distil.config import load_config, parse_job_args, resolve_config_path
from distil.data.config import PrepareConfig
from distil.sentiment.config import FinetuneConfig
from distil.teacher.config import LogitsConfig
from distil.train.config import DistilConfig

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
IMAGE_ROOT = "/home/ray/distil/"  # where infra/docker/Dockerfile puts the repo
K8S_VERSION = "1.33.0"
SCHEMAS = {
    "RayCluster": json.loads((INFRA / "schemas/raycluster.schema.json").read_text()),
    "RayJob": json.loads((INFRA / "schemas/rayjob.schema.json").read_text()),
}
SECRET_KEYS = re.compile(
    r"(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|password|token)\s*[:=]\s*\S+", re.I
)


def infra_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.is_file())


def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in infra_files():
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    docs.append((path, doc))
    return docs


def repo_path(p: str) -> Path:
    assert p.startswith(IMAGE_ROOT), f"{p} is not inside the image's repo copy {IMAGE_ROOT}"
    return REPO / p.removeprefix(IMAGE_ROOT)


def check_pod_template(template: dict) -> None:
    kubernetes_validate.validate(
        {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "t"},
            "template": template,
        },
        K8S_VERSION,
        strict=True,
    )


def check_command(words: list[str]) -> None:
    """``python <script> ... --config <name>`` (or ``python -m <module> …``): the script or module
    must exist in the repo and the config must resolve (a packaged ``<stage>/<name>`` or a file)
    to a mapping."""
    assert words[0] == "python", words
    if words[1] == "-m":
        script = REPO / (words[2].replace(".", "/") + ".py")
        assert words[2].startswith("distil."), f"{words[2]} is not a distil module"
    else:
        script = repo_path(words[1])
    assert script.is_file(), f"entry point {script} does not exist"
    for i, w in enumerate(words):
        value = None
        if w.startswith("--config="):
            value = w.split("=", 1)[1]
        elif w == "--config":
            value = words[i + 1]
        if value:
            cfg = resolve_config_path(value)
            assert isinstance(yaml.safe_load(cfg.read_text()), dict)


def test_every_infra_file_has_a_validator():
    known = {".yaml", ".json", ".md"}
    for path in infra_files():
        assert path.suffix in known or path.name == "Dockerfile", f"no validator for {path}"


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schemas_are_valid_json_schema(name):
    jsonschema.Draft202012Validator.check_schema(SCHEMAS[name])


@pytest.mark.parametrize(
    "path,doc", k8s_documents(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind")
)
def test_manifest(path, doc):
    kind = doc.get("kind")
    text = "\n".join(x for x in path.read_text().splitlines() if not x.lstrip().startswith("#"))
    assert not SECRET_KEYS.search(text), f"{path} contains a credential literal"
    if kind in SCHEMAS:
        jsonschema.validate(doc, SCHEMAS[kind])
    if kind == "RayCluster":
        spec = doc["spec"]
        assert spec["rayVersion"] == _locked("ray")
        # the job API runs code as the pods (which hold the S3 credentials): never unauthenticated
        assert spec.get("authOptions", {}).get("mode") == "token", f"{path}: no token auth"
        assert spec["authOptions"].get("secretName"), f"{path}: token auth without a Secret"
        check_pod_template(spec["headGroupSpec"]["template"])
        for group in spec.get("workerGroupSpecs", []):
            check_pod_template(group["template"])
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    elif kind == "RayJob":
        spec = doc["spec"]
        check_command(shlex.split(spec["entrypoint"]))
        assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "{}")), dict)
        if "clusterSelector" in spec:
            clusters = [d for _, d in k8s_documents() if d.get("kind") == "RayCluster"]
            names = {c["metadata"]["name"] for c in clusters}
            assert spec["clusterSelector"]["ray.io/cluster"] in names
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if kind == "CronJob":
            container = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            check_command(container["command"] + container.get("args", []))
        elif kind == "Pod":  # a pod template for a cluster we do not run (Flink task managers)
            for container in _containers(doc):
                check_command(container["command"] + container.get("args", []))


def test_each_ray_stage_has_a_rayjob():
    entry = {
        Path(shlex.split(d["spec"]["entrypoint"])[1]).name
        for _, d in k8s_documents()
        if d.get("kind") == "RayJob"
    }
    assert {"prepare.py", "teacher_logits.py", "distil.py", "finetune.py", "pipeline.py"} <= entry


def _locked(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split("+")[0]
    raise AssertionError(f"{name} not in requirements.lock")


def test_dockerfile_matches_lock_and_copies_existing_paths():
    text = (INFRA / "docker/Dockerfile").read_text()
    m = re.search(r"rayproject/ray:([0-9.]+)-py(\d)(\d+)", text)
    assert m and m.group(1) == _locked("ray") and f"{m.group(2)}.{m.group(3)}" == "3.11"
    for line in text.splitlines():
        if line.startswith("COPY"):
            for src in line.split()[1:-1]:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


def test_markdown_files_name_real_commands():
    for path in infra_files():
        if path.suffix == ".md":
            for cmd in re.findall(r"`distil stack (\w+)`", path.read_text()):
                assert cmd in {"up", "down", "status", "env"}, cmd


def _containers(doc: dict) -> list[dict]:
    if doc.get("kind") == "RayCluster":
        spec = doc["spec"]
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        return [c for g in groups for c in g["template"]["spec"]["containers"]]
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    if doc.get("kind") == "Pod":  # only the containers that run the distil image
        return [c for c in doc["spec"]["containers"] if "distil" in c.get("image", "")]
    return []


def test_pods_get_distil_root_from_one_configmap():
    """The packaged cluster configs say ${DISTIL_ROOT}/…: every pod that runs a stage must get
    the variable, from the one ConfigMap that names the bucket."""
    pods = [c for _, d in k8s_documents() for c in _containers(d)]
    assert len(pods) >= 4
    for c in pods:
        refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
        assert "distil-storage" in refs, f"container {c['name']} lacks configMapRef distil-storage"


def test_every_pod_that_runs_a_stage_can_track_to_mlflow():
    """docs/tracking.md: every stage on the cluster is tracked when the team's server is set.
    The Ray pods and the nightly scoring launcher load the optional Secret distil-mlflow (the
    Flink task managers' SDK workers log nothing: the launcher records the run)."""
    launchers = [
        c
        for _, d in k8s_documents()
        for c in _containers(d)
        if d["kind"] in ("RayCluster", "CronJob")
    ]
    assert {c["name"] for c in launchers} >= {"ray-head", "ray-worker", "score"}
    for c in launchers:
        refs = {e.get("secretRef", {}).get("name"): e for e in c.get("envFrom", [])}
        assert "distil-mlflow" in refs, f"container {c['name']} does not load distil-mlflow"
        assert refs["distil-mlflow"]["secretRef"].get("optional") is True  # tracking stays optional


def test_the_nightly_run_scores_the_promoted_champion(monkeypatch):
    """The CronJob's config resolves the model through the registry alias the pipeline's gate
    sets (a pointer would follow whatever was fine-tuned last, gated or not)."""
    from distil.model_registry import parse_uri
    from distil.score.config import ScoreConfig

    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    cron = next(d for _, d in k8s_documents() if d.get("kind") == "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    config = next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--config="))
    cfg = load_config(ScoreConfig, config)
    name, alias, _ = parse_uri(cfg.model)
    assert (name, alias) == ("distil-sentiment", "champion")
    pipeline = load_config(PipelineConfig, "pipeline/cluster", corpus=["s3://c"], train="s3://t")
    assert pipeline.stage("gate")["name"] == name  # the name the pipeline's gate registers


def test_no_manifest_or_config_names_the_bucket():
    """The bucket/prefix is set once (DISTIL_ROOT), never spelled out in a manifest or config."""
    files = infra_files() + sorted((REPO / "distil" / "configs").rglob("*.yaml"))
    for path in files:
        assert "s3://distil" not in path.read_text(), f"{path} hard-codes s3://distil"


def _one(kind: str, name: str) -> dict:
    (doc,) = [d for _, d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_scheduled_scoring_runs_its_sdk_workers_on_the_task_managers(monkeypatch):
    """The CronJob's Beam options, as Beam parses them: SDK workers in the EXTERNAL worker pool
    that the task manager pod template runs next to Flink (not LOOPBACK in the launcher pod), and
    the Flink job-server jar from the image under the name Beam itself would download."""
    import os

    from apache_beam.options.pipeline_options import (
        FlinkRunnerOptions,
        PipelineOptions,
        PortableOptions,
    )
    from apache_beam.runners.portability.job_server import JavaJarJobServer
    from apache_beam.version import __version__ as beam_version

    from distil.pipelines.score_reviews import _pipeline_args, parse_args

    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    cron = _one("CronJob", "distil-score-reviews")
    (launcher,) = _containers(cron)
    cfg = parse_args(launcher["args"])
    options = PipelineOptions(_pipeline_args(cfg))
    portable, flink = options.view_as(PortableOptions), options.view_as(FlinkRunnerOptions)

    pod = _one("Pod", "flink-taskmanager-beam")
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert "flink-main-container" in names  # Flink's pod templates merge into this name
    (pool,) = _containers(pod)
    assert pool["command"][:3] == ["python", "-m", "distil.pipelines.worker_pool"]
    port = next(w.split("=", 1)[1] for w in pool["command"] if w.startswith("--port="))
    assert pool["image"] == launcher["image"]  # the same distil/torch/Beam on both sides
    assert not pool.get("ports"), "the worker pool is loopback-only: expose no port"

    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == f"localhost:{port}"
    assert flink.flink_submit_uber_jar is True  # no Java, no shared staging volume
    want = JavaJarJobServer.path_to_beam_jar(
        f":runners:flink:{flink.flink_version}:job-server:shadowJar"
    )
    assert want.startswith("https://repo.maven.apache.org/")  # what Beam would fetch at launch
    assert flink.flink_job_server_jar == "/opt/beam/" + os.path.basename(want)
    assert beam_version in flink.flink_job_server_jar and beam_version == _locked("apache-beam")

    # threads × SDK worker processes fit the sidecar's CPUs (no oversubscription)
    assert cfg.torch_threads * int(portable.sdk_worker_parallelism) <= int(
        pool["resources"]["limits"]["cpu"]
    )
    assert cfg.teacher_cache is None  # the cluster fine-tune writes none; see score/scheduled
    # nightly = incremental: only files no committed run scored with this model, never all again
    assert cfg.incremental is True and cfg.rescore is False
    assert cfg.run_id is None  # a timestamp per night: one run (and ledger entry) per night


def test_rayjobs_pass_no_credentials():
    """Ray keeps a job's runtime env and entrypoint in the job record (`ray job list` shows
    them): credentials reach the workers only through the pods' environment (Secret / identity)."""
    from distil.ops.submit import SECRET_ENV

    jobs = [(p, d) for p, d in k8s_documents() if d.get("kind") == "RayJob"]
    assert jobs
    for path, doc in jobs:
        spec = doc["spec"]
        env_vars = (yaml.safe_load(spec.get("runtimeEnvYAML", "{}")) or {}).get("env_vars", {})
        leaked = sorted(set(env_vars) & set(SECRET_ENV))
        assert not leaked, f"{path}: {leaked} in runtimeEnvYAML (kept in the job record)"
        assert not any(k in spec["entrypoint"] for k in SECRET_ENV), f"{path}: entrypoint"


# --- the GPU path: the cluster can bring GPUs up, and the stages that need them ask for them ------

GPU = "nvidia.com/gpu"
STAGE_CONFIGS = {  # entry point -> the config class its module parses (distil.jobs.<stage>)
    "prepare.py": PrepareConfig,
    "teacher_logits.py": LogitsConfig,
    "distil.py": DistilConfig,
    "finetune.py": FinetuneConfig,
    "pipeline.py": PipelineConfig,  # distil pipeline run
}


def _ray_clusters() -> list[dict]:
    return [d for _, d in k8s_documents() if d.get("kind") == "RayCluster"]


def _rayjobs() -> dict[str, dict]:
    """RayJob entry point script name -> the RayJob."""
    jobs = [d for _, d in k8s_documents() if d.get("kind") == "RayJob"]
    return {Path(shlex.split(j["spec"]["entrypoint"])[1]).name: j for j in jobs}


def _gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def _gpu_groups(cluster: dict) -> list[dict]:
    groups = cluster["spec"].get("workerGroupSpecs", [])
    return [g for g in groups if any(_gpu_limit(c) for c in g["template"]["spec"]["containers"])]


def _max_gpus(cluster: dict) -> int:
    return sum(
        g["maxReplicas"] * sum(_gpu_limit(c) for c in g["template"]["spec"]["containers"])
        for g in _gpu_groups(cluster)
    )


def test_the_gpu_group_can_come_up():
    """replicas 0 without an autoscaler was a GPU group that never had a pod."""
    (cluster,) = _ray_clusters()
    spec = cluster["spec"]
    groups = _gpu_groups(cluster)
    assert groups, "the RayCluster has no worker group with nvidia.com/gpu limits"
    for g in groups:
        assert g["maxReplicas"] >= 1, f"group {g['groupName']}: maxReplicas < 1"
        assert g["replicas"] >= 1 or spec.get("enableInTreeAutoscaling") is True, (
            f"group {g['groupName']}: replicas {g['replicas']} and no autoscaler: no GPU pod "
            "ever starts (set replicas >= 1 or enableInTreeAutoscaling: true)"
        )
    if spec.get("enableInTreeAutoscaling"):
        idle = spec.get("autoscalerOptions", {}).get("idleTimeoutSeconds")
        assert idle is not None and 60 <= idle <= 3600, f"idleTimeoutSeconds {idle}"
        # the autoscaler sidecar's own resources and env are a plain container's
        opts = spec["autoscalerOptions"]
        sidecar = {"name": "autoscaler", "image": "x"}
        sidecar.update({k: opts[k] for k in ("resources", "env", "envFrom") if k in opts})
        check_pod_template({"spec": {"containers": [sidecar]}})


def test_gpu_containers_request_and_limit_gpus_and_ray_is_told():
    (cluster,) = _ray_clusters()
    for g in _gpu_groups(cluster):
        for c in g["template"]["spec"]["containers"]:
            res = c["resources"]
            assert res.get("requests", {}).get(GPU) == res["limits"][GPU], (
                f"group {g['groupName']}: {GPU} request != limit"
            )
            assert int(res["limits"][GPU]) >= 1
        advertised = g.get("rayStartParams", {}).get("num-gpus")
        per_pod = sum(_gpu_limit(c) for c in g["template"]["spec"]["containers"])
        assert advertised is None or int(advertised) == per_pod, (
            f"group {g['groupName']}: num-gpus {advertised} but the pod has {per_pod} GPU(s)"
        )
    for group in [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]:
        if group not in _gpu_groups(cluster):
            assert group.get("rayStartParams", {}).get("num-gpus", "0") == "0"


@pytest.mark.parametrize("script", sorted(STAGE_CONFIGS))
def test_every_rayjob_config_loads_into_its_stage_config(script, monkeypatch):
    """The entry point's own flags, parsed as the job will parse them: the packaged config
    resolves, ${DISTIL_ROOT} expands, and the stage config validates."""
    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    words = shlex.split(_rayjobs()[script]["spec"]["entrypoint"])
    cfg = parse_job_args(STAGE_CONFIGS[script], "", words[2:])
    assert isinstance(cfg, STAGE_CONFIGS[script])
    data = cfg.model_dump(exclude={"ray_address"})  # the head's own job API, not storage
    urls = [v for v in data.values() if isinstance(v, str) and "://" in v]
    assert urls and all(u.startswith("s3://bucket/prefix/") for u in urls), urls


def _job_cfg(script: str, monkeypatch):
    monkeypatch.setenv("DISTIL_ROOT", "s3://bucket/prefix")
    words = shlex.split(_rayjobs()[script]["spec"]["entrypoint"])
    return parse_job_args(STAGE_CONFIGS[script], "", words[2:])


def test_distil_workers_fit_one_gpu_pod_so_the_all_reduce_stays_on_nvlink(monkeypatch):
    """The default GPU group has multi-GPU pods holding all of distil/cluster's workers: DDP's
    per-step gradient all-reduce then runs inside one node (NVLink), not across pods."""
    cfg = _job_cfg("distil.py", monkeypatch)
    (cluster,) = _ray_clusters()
    per_pod = [
        sum(_gpu_limit(c) for c in g["template"]["spec"]["containers"])
        for g in _gpu_groups(cluster)
    ]
    assert max(per_pod) >= cfg.num_workers > 1, (per_pod, cfg.num_workers)
    assert cfg.placement_strategy in ("PACK", "STRICT_PACK")


def test_teacher_logits_job_asks_for_gpus_the_cluster_can_have(monkeypatch):
    cfg = _job_cfg("teacher_logits.py", monkeypatch)
    assert cfg.device == "cuda", "device auto on a GPU group scaled to zero runs on CPU"
    assert cfg.gpu_wait_s > 0
    (cluster,) = _ray_clusters()
    assert 1 <= cfg.num_actors <= _max_gpus(cluster)


def test_distil_job_asks_for_gpus_the_cluster_can_have(monkeypatch):
    cfg = _job_cfg("distil.py", monkeypatch)
    assert cfg.use_gpu is True and cfg.gpu_wait_s > 0
    (cluster,) = _ray_clusters()
    assert cfg.num_workers <= _max_gpus(cluster), (
        f"distil/cluster wants {cfg.num_workers} GPU workers, the cluster can have "
        f"{_max_gpus(cluster)}: it would wait gpu_wait_s and fail every time"
    )
    cpus = [
        float(c["resources"]["limits"]["cpu"])
        for g in _gpu_groups(cluster)
        for c in g["template"]["spec"]["containers"]
    ]
    assert cfg.cpus_per_worker <= max(cpus), "a GPU pod lacks the CPUs one worker reserves"


def test_the_scheduled_run_uses_the_jar_the_image_bakes_in():
    """The CronJob's --flink_job_server_jar must be the file the image downloads at build time,
    or Beam fetches another jar at launch (or fails offline)."""
    docker = (INFRA / "docker/Dockerfile").read_text()
    baked = re.search(r"^ENV BEAM_FLINK_JOB_SERVER_JAR=(\S+)", docker, re.M).group(1)
    cron = _one("CronJob", "distil-score-reviews")
    (launcher,) = _containers(cron)
    jars = [a.split("=", 1)[1] for a in launcher["args"] if a.startswith("--flink_job_server_jar=")]
    assert jars == [baked]
    version = next(a.split("=", 1)[1] for a in launcher["args"] if a.startswith("--flink_version="))
    assert f"beam-runners-flink-{version}-job-server" in baked
