"""What the distil and fine-tune jobs share on Ray Train: the trainer (gloo on CPU, NCCL with one
GPU per worker), the per-step report with rank 0's checkpoint, and finding a run's latest
registered checkpoint (the one Ray Train itself restores from), and the per-step tracking of rank
0's metrics."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from distil import storage, tracking


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    *,
    run_name: str,
    storage_path: str,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    max_failures: int,
    keep_checkpoints: int,
    placement_strategy: str = "PACK",
) -> TorchTrainer:
    fs, path = storage.arrow_filesystem(storage_path)
    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=keep_checkpoints),
        ),
    )


def report_step(
    rank: int,
    step: int,
    metrics: dict[str, Any],
    save: bool,
    save_checkpoint: Callable[[str], Any],
    extra_files: dict[str, Any] | None = None,
    tracker: tracking.Tracker | None = None,
) -> None:
    """Every rank reports (Ray Train's sync point); when ``save``, rank 0 attaches a checkpoint
    written by ``save_checkpoint(dir)`` plus ``extra_files`` (name -> JSON-able). The pid and
    Ray node id say where the rank ran (a multi-node run checks its placement with them).
    ``tracker`` (rank 0's, ``tracking.worker_tracker``) gets the step's metrics too."""
    if tracker is not None and tracker.active:
        tracker.log_metrics(tracking.step_metrics(metrics, step), step)
    metrics = {**metrics, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}
    if not (save and rank == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp)
        for name, obj in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=2)
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"step-{step:08d}",
        )


def latest_checkpoint(
    storage_path: str, run_name: str, identity_file: str | None = None
) -> tuple[Checkpoint, dict[str, Any], dict[str, Any] | None] | None:
    """The run's latest registered checkpoint, its reported metrics and (with ``identity_file``)
    the run identity recorded in it (None if absent), as Ray Train restores them
    (``ray.train.Result.from_path`` on ``storage_path/run_name``); None if the run has no
    checkpoint yet."""
    fs, path = storage.arrow_filesystem(storage.join(storage_path, run_name))
    try:
        result = ray.train.Result.from_path(path, storage_filesystem=fs)
    except RuntimeError:  # no run folder, or a run that never registered a checkpoint
        return None
    if result.checkpoint is None:
        return None
    identity = None
    if identity_file:
        ckpt_fs, ckpt_path = result.checkpoint.filesystem, result.checkpoint.path
        try:
            with ckpt_fs.open_input_stream(f"{ckpt_path}/{identity_file}") as f:
                identity = json.loads(f.read())
        except FileNotFoundError:
            identity = None
    return result.checkpoint, dict(result.metrics or {}), identity
