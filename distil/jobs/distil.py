"""Stage 3: distil a student from the teacher cache with Ray Train (DDP over N workers).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m distil.jobs.distil --config distil/default --cache s3://distil/cache/KEY

or ``distil distil …`` / ``python -m distil.jobs.distil …`` (``init_ray``: the cluster in
RAY_ADDRESS, else an embedded Ray). Checkpoints go to
``storage_path/run_name``; resubmitting the same run name resumes from its latest checkpoint
(Ray Train restores it from the run's snapshot in storage), and a finished run does no steps.
The student is exported (HF dir + tokenizer + metrics.json, committed with a manifest) to
``output``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from distil import storage
from distil.cluster import init_ray, wait_for_gpus
from distil.config import job_main
from distil.teacher.cache import resolve_cache_url
from distil.train.config import DistilConfig
from distil.train.recipe import METRICS, STUDENT_DIR, DistilRecipe

log = logging.getLogger("distil.jobs.distil")

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train v2's run state under storage/name


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DDP rank (the process group is already set up by Ray)."""
    _setup_logging()
    cfg = DistilConfig.model_validate(config)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    recipe = DistilRecipe(
        cfg,
        rank=rank,
        world_size=world_size,
        device=ray.train.torch.get_device(),
        work_dir=tempfile.mkdtemp(prefix="distil-"),
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        recipe.setup(None)
    else:
        with checkpoint.as_directory() as ckpt_dir:
            recipe.setup(ckpt_dir)
        log.info("rank %d resumed from checkpoint at step %d", rank, recipe.step)

    def report(step: int, metrics: dict[str, Any], save: bool) -> None:
        scalars = {k: v for k, v in metrics.items() if k not in ("eval_history", "train_history")}
        scalars.update(
            start_step=recipe.start_step, steps_run=recipe.step - recipe.start_step, pid=os.getpid()
        )
        if save and rank == 0:
            with tempfile.TemporaryDirectory() as tmp:
                recipe.save_checkpoint(tmp)
                ray.train.report(
                    scalars,
                    checkpoint=Checkpoint.from_directory(tmp),
                    checkpoint_dir_name=f"step-{step:08d}",
                )
        else:
            ray.train.report(scalars)

    recipe.train(report)


def build_trainer(cfg: DistilConfig) -> TorchTrainer:
    fs, path = storage.arrow_filesystem(cfg.storage_path)
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.model_dump(),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )


def export_student(checkpoint: Checkpoint, cfg: DistilConfig) -> dict[str, Any]:
    """Copy the final checkpoint's student (HF dir + tokenizer) and metrics.json to
    ``cfg.output`` and commit it; a committed export of the same run and step is kept as is."""
    with checkpoint.as_directory() as ckpt_dir:
        with open(os.path.join(ckpt_dir, METRICS)) as f:
            metrics = json.load(f)
        fp = storage.fingerprint([cfg.model_dump(), metrics["step"]])
        if storage.is_committed(cfg.output):
            old = storage.read_manifest(cfg.output)
            if old.get("fingerprint") == fp:
                log.info("export already committed at %s", storage.redact(cfg.output))
                return old
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(os.path.join(ckpt_dir, STUDENT_DIR), tmp, dirs_exist_ok=True)
            with open(os.path.join(tmp, METRICS), "w") as f:
                json.dump(metrics, f, indent=2)
            names = sorted(os.listdir(tmp))
            storage.upload_dir(tmp, cfg.output)
    manifest = {
        "kind": "student",
        "files": names,
        "fingerprint": fp,
        "step": metrics["step"],
        "run": {"storage_path": storage.redact(cfg.storage_path), "name": cfg.run_name},
        "metrics": {k: v for k, v in metrics.items() if k not in ("eval_history", "train_history")},
    }
    storage.commit(cfg.output, manifest)
    log.info("exported student to %s", storage.redact(cfg.output))
    return manifest


def latest_checkpoint(cfg: DistilConfig) -> tuple[Checkpoint, dict[str, Any]] | None:
    """The run's latest registered checkpoint and its reported metrics, from the snapshot Ray
    Train keeps under ``storage_path/run_name`` (the same one it restores from); None if none."""
    run_url = storage.join(cfg.storage_path, cfg.run_name)
    try:
        snapshot = storage.read_json(storage.join(run_url, SNAPSHOT))
    except FileNotFoundError:
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name")
    if not name:
        return None
    fs, path = storage.arrow_filesystem(storage.join(run_url, name))
    return Checkpoint(path=path, filesystem=fs), latest.get("metrics", {})


def run(cfg: DistilConfig) -> dict[str, Any]:
    """Train (or resume) with Ray Train, export the student, return a JSON-able summary.

    A run whose latest checkpoint is already at ``max_steps`` is not trained again: the summary
    says ``steps_run: 0`` and the export is (re)done from that checkpoint only if missing.
    """
    _setup_logging()
    if cfg.cache:  # a cache root's latest.json pointer resolves to the committed cache dir
        cfg = cfg.model_copy(update={"cache": resolve_cache_url(cfg.cache)})
    found = latest_checkpoint(cfg)
    if found is not None and found[1].get("step", 0) >= cfg.max_steps:
        checkpoint, metrics = found
        log.info(
            "run %r already finished at step %d (%s): nothing to train",
            cfg.run_name,
            metrics["step"],
            checkpoint.path,
        )
        last_report = {**metrics, "start_step": metrics["step"], "steps_run": 0}
    else:
        if found is not None:
            log.info("resuming run %r from step %s", cfg.run_name, found[1].get("step"))
        init_ray()
        if cfg.use_gpu:  # a worker group that can never be placed would wait forever in fit()
            wait_for_gpus(
                "distil (use_gpu: true)",
                cfg.num_workers,
                wait_s=cfg.gpu_wait_s,
                cpu_fix="use_gpu: false, or --no-use-gpu",
            )
        result = build_trainer(cfg).fit()
        if result.checkpoint is None:
            raise RuntimeError(f"run {cfg.run_name!r} finished without any checkpoint")
        checkpoint, last_report = result.checkpoint, result.metrics
    manifest = export_student(checkpoint, cfg)
    return {
        "output": storage.redact(cfg.output),
        "checkpoint": checkpoint.path,
        "last_report": last_report,
        "metrics": manifest["metrics"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(DistilConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
