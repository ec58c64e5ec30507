"""Stage 2: static masking + sparse teacher logits, cached on object storage (Ray Data).

    distil logits --input s3://distil/prepared --cache-root s3://distil/teacher \
        --teacher s3://distil/teacher-adapted
    ray job submit -- python -m distil.jobs.teacher_logits --config logits/default ...

The unit of work is a bounded slice of a prepared shard (``unit_rows`` sequences; one cache
file + marker each), streamed through three Ray Data operators: masking in CPU tasks ->
an actor pool of teacher replicas (one GPU each when the cluster has GPUs), fed ready batches
while the next units are masked -> commit (file, then marker) in CPU tasks. The streaming
executor's backpressure bounds what is in flight, so memory does not grow with the shard size;
a killed run resumes at the first unit without a marker and a finished cache (same key) is
never recomputed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from distil import storage
from distil.config import absolute_paths, job_main, setup_logging
from distil.ops.cluster import cluster_gpus, init_ray, wait_for_gpus
from distil.progress import Progress
from distil.teacher.build import TeacherWorker, commit_stage, finalize, pending_units, plan_cache
from distil.teacher.cache import write_latest_pointer
from distil.teacher.compat import check_teacher
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher
from distil.teacher.masking import MaskingParams
from distil.teacher.units import mask_stage

log = logging.getLogger("distil.logits")


def actor_resources(cfg: LogitsConfig) -> dict[str, Any]:
    """Where the teacher actors run, said in a WARNING when ``auto`` chose: a teacher that
    silently ran on CPU on a GPU cluster is the failure this guards against."""
    if cfg.device == "cuda":
        gpus = wait_for_gpus(
            "logits (device: cuda)",
            cfg.num_actors,
            at_least=1,
            wait_s=cfg.gpu_wait_s,
            cpu_fix="device: cpu",
        )
        return _gpu_pool(cfg, gpus, log.info, "device cuda")
    gpus = cluster_gpus() if cfg.device == "auto" else 0
    if gpus:
        return _gpu_pool(cfg, gpus, log.warning, "device auto chose CUDA")
    if cfg.device == "auto":
        log.warning(
            "device auto chose CPU: the Ray cluster has no GPUs now, so %d teacher actor(s) run "
            "on CPU. On a GPU cluster whose GPU group scales from zero set device: cuda (it "
            "waits up to gpu_wait_s for GPU nodes, then fails instead of running on CPU)",
            cfg.num_actors,
        )
    return {"num_cpus": cfg.num_cpus_per_actor, "device": "cpu", "size": cfg.num_actors}


def _gpu_pool(cfg: LogitsConfig, gpus: int, say, why: str) -> dict[str, Any]:
    """``actors_per_gpu`` replicas on each of min(num_actors, GPUs) GPUs: while one replica
    builds its next batch or turns results into Arrow on the CPU, another keeps the GPU busy."""
    n_gpus = min(cfg.num_actors, gpus)
    size = n_gpus * cfg.actors_per_gpu
    say(
        "%s: %d teacher actor(s), %d per GPU on %d GPU(s) (cluster: %d GPU)",
        why,
        size,
        cfg.actors_per_gpu,
        n_gpus,
        gpus,
    )
    return {"num_gpus": 1.0 / cfg.actors_per_gpu, "device": "cuda", "size": size}


def run(cfg: LogitsConfig) -> dict[str, Any]:
    """Build (or find) the teacher cache for ``cfg``; returns a summary with its URL."""
    import ray

    setup_logging()
    t0 = time.perf_counter()
    cfg = absolute_paths(cfg)
    # Load once here: fail fast on an unsupported-family or headless checkpoint or one whose tokenizer is
    # not the prepared data's (before Ray starts); the weights hash is the cache key.
    teacher = load_teacher(cfg.teacher, cfg.allow_pickle, require_mlm_head=True)
    plan = plan_cache(
        cfg,
        teacher.weights_sha256,
        teacher.model.config.hidden_size,
        teacher.model.config.model_type,
    )
    check_teacher(teacher, cfg.teacher, plan.prepared, cfg.input)
    del teacher
    summary: dict[str, Any] = {"cache_url": plan.url, "key": plan.key}
    if plan.committed:
        write_latest_pointer(cfg.cache_root, plan.url, plan.key)
        manifest = storage.read_manifest(plan.url)
        print(f"cache hit: {storage.redact(plan.url)} (nothing to do)")
        return {**summary, "cache_hit": True, **_stats(manifest)}
    pending = pending_units(plan)
    log.info(
        "cache %s: %d units of <= %d sequences, %d already done, %d to compute",
        storage.redact(plan.url),
        len(plan.units),
        cfg.unit_rows,
        len(plan.units) - len(pending),
        len(pending),
    )
    if pending:
        init_ray()
        res = actor_resources(cfg)
        device = res.pop("device")
        size = res.pop("size")
        masking = MaskingParams.from_config(cfg.masking(), plan.prepared)
        ds = ray.data.from_items(pending, override_num_blocks=len(pending))
        ds = ds.map_batches(
            mask_stage, batch_size=1, fn_kwargs={"masking": masking}, num_cpus=cfg.num_cpus_per_task
        )
        ds = ds.map_batches(
            TeacherWorker,
            fn_constructor_kwargs={
                "cfg": cfg.model_dump(),
                "teacher_sha256": plan.teacher_sha256,
                "prepared": plan.prepared,
                "device": device,
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            **res,
        )
        ds = ds.map_batches(
            commit_stage,
            batch_size=1,
            fn_kwargs={"row_group_rows": cfg.row_group_rows},
            num_cpus=cfg.num_cpus_per_task,
        )
        done: list[tuple[float, int]] = []  # (time, tokens) of each committed unit
        with Progress("logits", total=len(pending), unit="units", log=log) as bar:
            for row in ds.iter_rows():
                done.append((time.perf_counter(), int(row["tokens"])))
                bar.update(1, rows=row["rows"], positions=row["positions"], bytes=row["bytes"])
        summary.update(steady_rate(done))
    manifest = finalize(plan, cfg)
    write_latest_pointer(cfg.cache_root, plan.url, plan.key)
    return {
        **summary,
        "cache_hit": False,
        "units": len(plan.units),
        "units_computed": len(pending),
        "units_resumed": len(plan.units) - len(pending),
        "seconds": round(time.perf_counter() - t0, 2),
        **_stats(manifest),
    }


def steady_rate(done: list[tuple[float, int]]) -> dict[str, Any]:
    """Tokens/s once the pipeline is full: the tokens of the units committed after the first
    one, over the time from the first commit to the last (Ray start-up, model loads and the
    first unit's way through every operator excluded). None with fewer than two units."""
    if len(done) < 2 or done[-1][0] <= done[0][0]:
        return {"steady_tokens_per_s": None}
    tokens = sum(t for _, t in done[1:])
    return {"steady_tokens_per_s": round(tokens / (done[-1][0] - done[0][0]), 1)}


def _stats(manifest: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "rows",
        "positions",
        "tokens",
        "bytes",
        "bytes_per_position",
        "target_bytes_per_position",
        "bytes_per_token",
    )
    return {k: manifest[k] for k in keys}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(LogitsConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
