"""Multi-node rehearsal (issue 11, point 7): prepare -> teacher logits -> distil submitted through
the Ray job API to a two-node Ray cluster on this machine (``two_ray_nodes``), every input and
output on S3 (the SeaweedFS the stack runs), then the same stages with the same config files on
the one-node ``ray_local``: the outputs must be the same bytes.

What one machine cannot show: a read of a local path would succeed on every node, since they all
see the same disk. So the local corpus is deleted before any job runs, the stages get only
s3:// URLs (the teacher too), and no local data path may appear in a job log or a manifest.
"""

from __future__ import annotations

import importlib
import json
import random
import shutil
import time
import uuid
from typing import Any

import pytest
import yaml
from prepare_corpus import paragraph

from distil import storage
from distil.chain.steps import parse_result
from distil.config import load_config
from distil.data.config import PrepareConfig
from distil.ops.submit import submit_ray_job
from distil.teacher.config import LogitsConfig
from distil.train.config import DistilConfig

# The settings of each stage (the same file for both runs); where a run writes goes in flags.
SETTINGS: dict[str, tuple[type, dict[str, Any]]] = {
    "prepare": (PrepareConfig, {"seq_len": 64, "num_workers": 2, "cpus_per_worker": 0.5}),
    "teacher_logits": (
        LogitsConfig,
        {"k": 4, "batch_size": 16, "num_actors": 2, "num_cpus_per_actor": 0.5} | {"device": "cpu"},
    ),
    "distil": (
        DistilConfig,
        {
            "max_steps": 4,
            "batch_size": 8,
            "warmup_steps": 1,
            "eval_every": 4,
            "eval_batches": 1,
            "checkpoint_every": 4,
            "log_every": 2,
            "num_workers": 2,
            "cpus_per_worker": 0.5,
            "placement_strategy": "SPREAD",
            "max_failures": 0,
        },
    ),
}


def _locations(stage: str, root: str) -> dict[str, str]:
    return {
        "prepare": {"output": f"{root}/prepared"},
        "teacher_logits": {"input": f"{root}/prepared", "cache_root": f"{root}/cache"},
        "distil": {
            "cache": f"{root}/cache",
            "output": f"{root}/student",
            "storage_path": f"{root}/runs",
        },
    }[stage]


def _flags(values: dict[str, str]) -> list[str]:
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), v)]


def _tree(url: str, root: str) -> dict[str, bytes]:
    """Every object under ``url`` but the per-unit markers (their timings differ run to run),
    with the run's own root URL in JSON files replaced by ``ROOT``."""
    fs, path = storage.get_fs(url)
    fs.invalidate_cache()
    out = {}
    for p in sorted(fs.find(path)):
        rel = p[len(path) :].lstrip("/")
        if rel.startswith("_markers/"):
            continue
        data = fs.cat_file(p)
        if rel.endswith(".json"):
            data = data.replace(root.encode(), b"ROOT")
            data = data.replace(root.removeprefix("s3://").encode(), b"ROOT")
        out[rel] = data
    return out


SPEED = {"tokens_per_s", "tokens_per_s_global", "train_seconds"}  # wall clock: not deterministic


def _without_speed(metrics: Any) -> Any:
    """metrics (a dict or metrics.json's bytes) minus the wall-clock speed figures, at any depth."""
    if isinstance(metrics, bytes):
        metrics = json.loads(metrics)
    if isinstance(metrics, dict):
        return {k: _without_speed(v) for k, v in metrics.items() if k not in SPEED}
    if isinstance(metrics, list):
        return [_without_speed(v) for v in metrics]
    return metrics


@pytest.mark.timeout(420)
def test_three_stages_on_two_nodes_match_one_node(
    two_ray_nodes, ray_local, s3_server, tiny_teacher_dir, real_tokenizer_dir, tmp_path
):
    from ray.util.state import list_actors

    base = f"s3://{s3_server.bucket}/rehearsal-{uuid.uuid4().hex[:8]}"
    teacher, corpus = f"{base}/teacher", f"{base}/corpus"
    storage.upload_dir(str(tiny_teacher_dir), teacher)
    local_corpus = tmp_path / "corpus"
    local_corpus.mkdir()
    rng = random.Random(7)
    for s in range(2):
        docs = [json.dumps({"text": paragraph(rng, 6)}) for _ in range(30)]
        (local_corpus / f"part-{s}.jsonl").write_text("\n".join(docs) + "\n")
    storage.upload_dir(str(local_corpus), corpus)
    shutil.rmtree(local_corpus)  # a stage reading the local copy would now fail

    # the config files, shipped to the cluster as the jobs' working_dir
    conf = tmp_path / "conf"
    conf.mkdir()
    shared = {
        "prepare": {"input": corpus, "tokenizer": teacher},
        "teacher_logits": {"teacher": teacher},
    }
    for stage, (_, settings) in SETTINGS.items():
        (conf / f"{stage}.yaml").write_text(yaml.safe_dump({**settings, **shared.get(stage, {})}))

    multi, single = f"{base}/multi", f"{base}/single"
    results: dict[str, dict[str, Any]] = {"multi": {}, "single": {}}
    logs: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for stage in SETTINGS:
        t0 = time.monotonic()
        argv = ["python", "-m", f"distil.jobs.{stage}", "--config", f"{stage}.yaml"]
        _, logs[stage] = submit_ray_job(
            two_ray_nodes.dashboard,
            argv + _flags(_locations(stage, multi)),
            env_vars={},
            step_key=f"rehearsal-{stage}",
            working_dir=conf,
            timeout_s=300,
        )
        results["multi"][stage] = parse_result(logs[stage])
        seconds[f"multi {stage}"] = time.monotonic() - t0
    # (b) the two train workers ran on the two nodes (Ray's record of its actors)
    workers = list_actors(
        address=two_ray_nodes.dashboard,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        limit=100,
    )
    nodes = two_ray_nodes.node_ids
    assert len(workers) == 2, workers
    assert sorted(w.node_id for w in workers) == sorted(nodes.values()), (workers, nodes)
    rank0 = results["multi"]["distil"]["last_report"]["node_id"]  # what rank 0 reported
    assert rank0 in nodes.values()

    for stage, (cls, _) in SETTINGS.items():  # the one-node reference: same files, ray_local
        # (Ray connects a process once: the jobs above ran in their own driver processes)
        t0 = time.monotonic()
        cfg = load_config(cls, conf / f"{stage}.yaml", **_locations(stage, single))
        results["single"][stage] = importlib.import_module(f"distil.jobs.{stage}").run(cfg)
        seconds[f"single {stage}"] = time.monotonic() - t0
    print("stage seconds:", {k: round(v, 1) for k, v in seconds.items()})

    # (a) the same bytes as on one node
    m, s = results["multi"], results["single"]
    assert m["prepare"]["fingerprint"] == s["prepare"]["fingerprint"]
    assert m["prepare"]["rows"] == s["prepare"]["rows"] > 0
    assert _tree(f"{multi}/prepared", multi) == _tree(f"{single}/prepared", single)
    key = m["teacher_logits"]["key"]
    assert s["teacher_logits"]["key"] == key and not m["teacher_logits"]["cache_hit"]
    assert m["teacher_logits"]["units_computed"] == 2
    cache_m = _tree(f"{multi}/cache/{key}", multi)
    assert "manifest.json" in cache_m
    assert sum(name.endswith(".parquet") for name in cache_m) == 2  # one file per unit
    assert cache_m == _tree(f"{single}/cache/{key}", single)
    student_m = _tree(f"{multi}/student", multi)
    student_s = _tree(f"{single}/student", single)
    assert sorted(student_m) == sorted(student_s) and "model.safetensors" in student_m
    for name in ("metrics.json", "manifest.json"):  # both carry the run's tokens/s
        assert _without_speed(student_m.pop(name)) == _without_speed(student_s.pop(name)), name
    assert student_m == student_s  # weights, config, tokenizer, manifest: byte for byte
    assert m["distil"]["last_report"]["step"] == s["distil"]["last_report"]["step"] == 4
    assert _without_speed(m["distil"]["metrics"]) == _without_speed(s["distil"]["metrics"])

    # (c) data only through S3: s3:// URLs in every config, no local data path anywhere
    for stage, (cls, _) in SETTINGS.items():
        cfg = load_config(cls, conf / f"{stage}.yaml", **_locations(stage, multi))
        for field in cls.PATH_FIELDS:
            value = getattr(cfg, field) or []
            refs = value if isinstance(value, list) else [value]
            assert all(r.startswith("s3://") for r in refs), (stage, field, refs)
    manifests = "".join(
        storage.read_bytes(f"{multi}/{d}/manifest.json").decode()
        for d in ("prepared", f"cache/{key}", "student")
    )
    assert storage.read_manifest(f"{multi}/cache/{key}")["teacher"]["ref"] == teacher
    local = [str(tmp_path), str(tiny_teacher_dir), str(real_tokenizer_dir), "file://"]
    for where, text in [("manifests", manifests), *logs.items()]:
        leaked = [p for p in local if p in text]
        assert not leaked, f"{where} mentions local paths {leaked}"
    for name, d in two_ray_nodes.temp_dirs.items():  # each node kept its own temp dir
        assert (d / "session_latest" / "logs" / "raylet.out").is_file(), name
