"""What the distil and fine-tune jobs share on Ray Train: the trainer (gloo on CPU, NCCL with one
GPU per worker), the per-step report with rank 0's checkpoint, the run's whole curve of reports
(``ReportHistory``, ``fit``), finding a run's latest registered checkpoint (the one Ray Train
itself restores from), and the per-step tracking of rank 0's metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import pandas as pd
import pyarrow.fs
import ray.train
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
    UserCallback,
)
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
            callbacks=[ReportHistory(fs, f"{path.rstrip('/')}/{run_name}")],
        ),
    )


HISTORY_DIR = "report_history"  # under the run's folder, next to Ray Train's checkpoints


class ReportHistory(UserCallback):
    """Keeps every report's rank-0 metrics (one per log step) next to the run's checkpoints.

    Ray Train 2.60 builds ``Result.metrics_dataframe`` from the reports that carried a kept
    checkpoint only, so a run that reports every 10 steps and checkpoints every 200 would show a
    few points of its curve. This callback runs in Ray Train's controller, sees every report,
    and at each checkpoint writes the reports since the previous one as one part file
    (``report_history/step-NNNNNNNN.jsonl``): nothing is rewritten, and what is on storage is
    exactly the curve up to the checkpoint a resume starts from. A worker-group restart goes back
    to a checkpoint and reports those steps again: the repeated steps replace the old ones
    (``report_history`` keeps the last report of each step)."""

    def __init__(self, fs: pyarrow.fs.FileSystem, run_path: str):
        self.fs, self.dir = fs, f"{run_path}/{HISTORY_DIR}"
        self.pending: list[dict[str, Any]] = []

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        row = {k: v for k, v in metrics[0].items() if _scalar(v)}
        step = row.get("step")
        if step is None:  # not a training step's report (every report of ours has one)
            return
        # a restart re-reports from its checkpoint: drop what it replaces
        self.pending = [r for r in self.pending if r["step"] < step]
        self.pending.append(row)
        if checkpoint is not None:
            self.fs.create_dir(self.dir, recursive=True)
            with self.fs.open_output_stream(f"{self.dir}/step-{int(step):08d}.jsonl") as f:
                f.write("".join(json.dumps(r) + "\n" for r in self.pending).encode())
            self.pending = []


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def report_history(storage_path: str, run_name: str) -> pd.DataFrame:
    """A run's curve: one row per reported step up to its latest checkpoint, in step order (the
    last report of a step that was reported twice, by a restart, wins)."""
    fs, path = storage.arrow_filesystem(storage.join(storage_path, run_name))
    return _read_history(fs, path)


def _read_history(fs: pyarrow.fs.FileSystem, run_path: str) -> pd.DataFrame:
    selector = pyarrow.fs.FileSelector(f"{run_path}/{HISTORY_DIR}", allow_not_found=True)
    parts = sorted(
        (i.path for i in fs.get_file_info(selector) if i.path.endswith(".jsonl")),
        key=lambda p: p.rsplit("/", 1)[-1],
    )
    rows: dict[int, dict[str, Any]] = {}
    for part in parts:
        with fs.open_input_stream(part) as f:
            for line in f.read().decode().splitlines():
                row = json.loads(line)
                rows[row["step"]] = row
    return pd.DataFrame([rows[s] for s in sorted(rows)])


def fit(trainer: TorchTrainer) -> ray.train.Result:
    """``trainer.fit()`` with ``metrics_dataframe`` holding every report (one row per log step),
    read from the ``ReportHistory`` the trainer writes (see its docstring for why)."""
    result = trainer.fit()
    cfg = trainer.run_config
    history = _read_history(cfg.storage_filesystem, f"{cfg.storage_path.rstrip('/')}/{cfg.name}")
    return dataclasses.replace(result, metrics_dataframe=history if len(history) else None)


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


class FoundCheckpoint(NamedTuple):
    """A run's latest registered checkpoint (:func:`latest_checkpoint`)."""

    checkpoint: Checkpoint
    metrics: dict[str, Any]  # what the rank that saved it reported with it (step, ...)
    identity: dict[str, Any] | None  # the run identity recorded in it, if asked for and there


def latest_checkpoint(
    storage_path: str, run_name: str, identity_file: str | None = None
) -> FoundCheckpoint | None:
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
    return FoundCheckpoint(result.checkpoint, dict(result.metrics or {}), identity)
