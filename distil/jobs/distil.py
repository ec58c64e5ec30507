"""Stage 3: distil a student from the teacher cache with Ray Train (DDP over N workers).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m distil.jobs.distil --config distil/default --cache s3://distil/cache/KEY

or ``distil distil …`` / ``python -m distil.jobs.distil …`` (``init_ray``: the cluster in
RAY_ADDRESS, else an embedded Ray). Checkpoints go to
``storage_path/run_name``; the default run name is derived from the settings and inputs that
define the run (``distil.train.identity``). Resubmitting the same run name resumes from its latest
checkpoint (Ray Train restores it from the run's snapshot in storage) and a finished run does no
steps — but only if the checkpoint's recorded identity matches this config; otherwise the job
refuses and names what differs.
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

from ray.train import Checkpoint

from distil import storage, tracking
from distil.config import absolute_paths, job_main, setup_logging
from distil.jobs._ray_train import latest_checkpoint, recipe_worker, run_recipe_job
from distil.teacher.cache import resolve_cache_url
from distil.teacher.load import require_supported_checkpoint
from distil.train.config import DistilConfig
from distil.train.identity import (
    IDENTITY_FILE,
    RunIdentity,
    check_cache_sketch,
    check_cache_teacher,
    check_cache_temperature,
    check_resume,
    check_worker_count,
    run_identity,
    teacher_ref,
    teacher_weights_sha256,
)
from distil.train.recipe import METRICS, STUDENT_DIR, DistilRecipe

log = logging.getLogger("distil.jobs.distil")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DDP rank; rank 0's checkpoints carry the run identity."""
    cfg = DistilConfig.model_validate(config["cfg"])

    def make_recipe(rank: int, world_size: int, device: Any) -> DistilRecipe:
        work_dir = tempfile.mkdtemp(prefix="distil-")
        return DistilRecipe(cfg, rank=rank, world_size=world_size, device=device, work_dir=work_dir)

    recipe_worker(config, make_recipe, _scalars, {IDENTITY_FILE: config["identity"]})


def _scalars(recipe: DistilRecipe, metrics: dict[str, Any]) -> dict[str, Any]:
    """A report's scalars (the curves go into metrics.json, not into every report)."""
    out = {k: v for k, v in metrics.items() if k not in ("eval_history", "train_history")}
    out.update(start_step=recipe.start_step, steps_run=recipe.step - recipe.start_step)
    return out


def loop_config(cfg: DistilConfig, identity: RunIdentity) -> dict[str, Any]:
    return {
        "cfg": cfg.model_dump(),
        "identity": identity.to_json(),
        "tracking": tracking.worker_target(),
    }


def export_student(
    checkpoint: Checkpoint, cfg: DistilConfig, identity: RunIdentity
) -> dict[str, Any]:
    """Copy the final checkpoint's student (HF dir + tokenizer) and metrics.json to
    ``cfg.output`` and commit it; a committed export of the same run (identity and name) and
    step is kept as is."""
    with checkpoint.as_directory() as ckpt_dir:
        with open(os.path.join(ckpt_dir, METRICS)) as f:
            metrics = json.load(f)
        # what the student is (run identity, run, step), not how the job was scaled or logged
        fp = storage.fingerprint([identity.fingerprint, cfg.run_name, metrics["step"]])
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
        "run": {
            "storage_path": storage.redact(cfg.storage_path),
            "name": cfg.run_name,
            "fingerprint": identity.fingerprint,
        },
        "metrics": {k: v for k, v in metrics.items() if k not in ("eval_history", "train_history")},
    }
    storage.commit(cfg.output, manifest)
    log.info("exported student to %s", storage.redact(cfg.output))
    return manifest


def run(cfg: DistilConfig) -> dict[str, Any]:
    """Train (or resume) with Ray Train, export the student, return a JSON-able summary.

    A run whose latest checkpoint is already at ``max_steps`` is not trained again: the summary
    says ``steps_run: 0`` and the export is (re)done from that checkpoint only if missing. A
    checkpoint whose recorded identity differs from ``cfg``'s is neither resumed nor exported:
    ``RunMismatchError`` lists the differences.
    """
    setup_logging(force=True)
    cfg = absolute_paths(cfg)  # Ray Train workers run in their own directory
    if cfg.cache:  # a cache root's latest.json pointer resolves to the committed cache dir
        cfg = cfg.model_copy(update={"cache": resolve_cache_url(cfg.cache)})
    require_supported_checkpoint(teacher_ref(cfg))  # before Ray: workers would only fail later
    if cfg.mode == "cached":  # the teacher must be the one whose logits the cache holds
        ref = teacher_ref(cfg)
        manifest = storage.read_manifest(cfg.cache)
        check_cache_temperature(
            manifest, cfg.cache, cfg.temperature, cfg.allow_temperature_mismatch
        )
        check_cache_sketch(manifest, cfg.cache, cfg.alpha_cos)
        check_cache_teacher(
            manifest, cfg.cache, ref, teacher_weights_sha256(ref), cfg.allow_teacher_mismatch
        )
    identity = run_identity(cfg)
    if cfg.run_name is None:
        cfg = cfg.model_copy(update={"run_name": identity.default_name})
    log.info("run %r (identity %s)", cfg.run_name, identity.fingerprint)
    found = latest_checkpoint(cfg.storage_path, cfg.run_name, IDENTITY_FILE)
    if found is not None:
        where = (
            f"of run {cfg.run_name!r} under {storage.redact(cfg.storage_path)} "
            f"(step {found.metrics.get('step')})"
        )
        check_resume(found.identity, identity, where)
    if found is not None and found.metrics.get("step", 0) >= cfg.max_steps:
        checkpoint, metrics, _ = found
        log.info(
            "run %r already finished at step %d (%s): nothing to train",
            cfg.run_name,
            metrics["step"],
            checkpoint.path,
        )
        last_report = {**metrics, "start_step": metrics["step"], "steps_run": 0}
    else:
        if found is not None:
            check_worker_count(found.identity, identity, where)
            log.info("resuming run %r from step %s", cfg.run_name, found.metrics.get("step"))
        result = run_recipe_job(
            "distil",
            train_loop_per_worker,
            loop_config(cfg, identity),
            cfg,
            run_name=cfg.run_name,
            storage_path=cfg.storage_path,
        )
        if result.checkpoint is None:
            raise RuntimeError(f"run {cfg.run_name!r} finished without any checkpoint")
        checkpoint, last_report = result.checkpoint, result.metrics
    manifest = export_student(checkpoint, cfg, identity)
    return {
        "output": storage.redact(cfg.output),
        "run_name": cfg.run_name,
        "run_fingerprint": identity.fingerprint,
        "checkpoint": checkpoint.path,
        "last_report": last_report,
        "metrics": manifest["metrics"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(DistilConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
