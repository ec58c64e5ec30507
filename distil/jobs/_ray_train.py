"""What the distil and fine-tune jobs share on Ray Train: starting a run (``run_recipe_job``: the
cluster, the GPUs, the trainer with gloo on CPU or NCCL with one GPU per worker), a worker's
life around its recipe (``recipe_worker``: set up or resume, train, report), the per-step report
with rank 0's checkpoint, the run's whole curve of reports (``ReportHistory``, ``fit``), finding a
run's latest registered checkpoint (the one Ray Train itself restores from), and the per-step
tracking of rank 0's metrics."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any, NamedTuple

import pandas as pd
import pyarrow.fs
import ray.train
import ray.train.torch
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
from distil.config import RayTrainOptions, setup_logging
from distil.ops.cluster import init_ray, wait_for_gpus
from distil.training import Recipe

log = logging.getLogger("distil.jobs")


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    opts: RayTrainOptions,
    *,
    run_name: str,
    storage_path: str,
) -> TorchTrainer:
    fs, path = storage.arrow_filesystem(storage_path)
    resources: dict[str, float] = {"CPU": opts.cpus_per_worker}
    if opts.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if opts.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=opts.num_workers,
            use_gpu=opts.use_gpu,
            resources_per_worker=resources,
            placement_strategy=opts.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=opts.keep_checkpoints),
            callbacks=[ReportHistory(fs, f"{path.rstrip('/')}/{run_name}")],
        ),
    )


def run_recipe_job(
    stage: str,
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    opts: RayTrainOptions,
    *,
    run_name: str,
    storage_path: str,
) -> ray.train.Result:
    """Train one run on Ray Train: the cluster (``init_ray``), then, with ``use_gpu``, the
    wait for ``num_workers`` GPUs (a worker group that can never be placed would wait forever
    in ``fit``), then ``loop`` on every worker (``torch_trainer``), with the whole curve of
    reports (``fit``). ``stage`` names the stage in the GPU wait's error."""
    init_ray()
    if opts.use_gpu:
        wait_for_gpus(
            f"{stage} (use_gpu: true)",
            opts.num_workers,
            wait_s=opts.gpu_wait_s,
            cpu_fix="use_gpu: false, or --no-use-gpu",
        )
    trainer = torch_trainer(loop, loop_config, opts, run_name=run_name, storage_path=storage_path)
    return fit(trainer)


def recipe_worker(
    config: dict[str, Any],
    make_recipe: Callable[[int, int, Any], Recipe],
    scalars: Callable[[Recipe, dict[str, Any]], dict[str, Any]] | None = None,
    extra_files: dict[str, Any] | None = None,
) -> tuple[Recipe, int]:
    """One Ray Train worker = one DDP rank (Ray has set up the gloo/NCCL process group): the
    recipe ``make_recipe(rank, world_size, device)``, set up fresh or from the run's checkpoint,
    trained with every report going to Ray Train (rank 0's checkpoint with ``extra_files``) and
    rank 0's tracker (``config["tracking"]``); ``scalars`` turns a recipe's report into what is
    reported. Returns (the trained recipe, rank)."""
    setup_logging(force=True)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    recipe = make_recipe(rank, ctx.get_world_size(), ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        recipe.setup(None)
    else:
        with checkpoint.as_directory() as ckpt_dir:
            recipe.setup(ckpt_dir)
        log.info("rank %d resumed from checkpoint at step %d", rank, recipe.step)
    tracker = tracking.worker_tracker(config.get("tracking"), rank)

    def report(step: int, metrics: dict[str, Any], save: bool) -> None:
        reported = scalars(recipe, metrics) if scalars else metrics
        report_step(rank, step, reported, save, recipe.save_checkpoint, extra_files, tracker)

    recipe.train(report)
    return recipe, rank


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
