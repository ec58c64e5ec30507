"""Stage 4a: fine-tune a sentiment classifier on labelled reviews with Ray Train (DDP: gloo on
CPU, NCCL with one GPU per worker when ``use_gpu``).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m distil.jobs.finetune --config finetune/default \\
        --model s3://distil/student --output s3://distil/sentiment

or ``distil finetune …`` (``init_ray``: the cluster in RAY_ADDRESS, else an embedded Ray).
Each worker builds a :class:`FinetuneRecipe` (one DDP rank) on ``ray.train.torch.get_device()``;
rank 0 reports a checkpoint (model, optimizer, scheduler, step) every ``checkpoint_every`` steps
into ``storage_path/<run-name>``, so a failed worker group restarts from it
(``max_failures``) and resubmitting the same ``--run-name`` resumes; a finished run whose export
is committed does no steps. At the end rank 0 evaluates, exports the HF classifier dir +
metrics.json to ``OUTPUT/<run-name>``, and moves ``OUTPUT/latest.json``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ray.train
import ray.train.torch

from distil import storage, tracking
from distil.config import ConfigError, absolute_paths, job_main, setup_logging
from distil.data.readers.review_files import expand_inputs
from distil.jobs._ray_train import latest_checkpoint, recipe_worker, run_recipe_job
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune import FinetuneRecipe
from distil.sentiment.finetune_export import model_url_for

log = logging.getLogger("distil.jobs.finetune")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DDP rank; rank 0 exports the trained classifier."""
    cfg = FinetuneConfig.model_validate(config["cfg"])

    def make_recipe(rank: int, world_size: int, device: Any) -> FinetuneRecipe:
        return FinetuneRecipe(cfg, rank=rank, world_size=world_size, device=device)

    recipe, rank = recipe_worker(config, make_recipe)
    if rank == 0:
        recipe.export(config["model_url"])
    # every rank reports once more: no worker exits before rank 0 has exported
    ray.train.report({**recipe.progress(), "exported": True})


def storage_url(cfg: FinetuneConfig) -> str:
    """Where Ray Train keeps the run (``storage_path``, else Ray's default ~/ray_results)."""
    return cfg.storage_path or os.path.expanduser("~/ray_results")


def run_name_of(model_url: str) -> str:
    """The Ray Train run name: the export's directory name (``--run-name`` or the timestamp) and
    a hash of its full URL, so two fine-tunes that share a name under different ``--output``s
    (the demo's teacher and student classifiers) never resume each other's checkpoints in the
    shared Ray storage."""
    url = model_url.rstrip("/")
    return f"{url.rsplit('/', 1)[-1]}-{storage.fingerprint(url)[:8]}"


def check_train(cfg: FinetuneConfig) -> None:
    """The user's labelled reviews exist, checked on the driver before Ray starts: a wrong
    ``train`` is one line naming the field, not a worker group that fails to read it."""
    try:
        expand_inputs([cfg.train])
    except FileNotFoundError as e:
        raise ConfigError(
            f"finetune: `train` {storage.redact(cfg.train)} has no review files ({e}): put your "
            "labelled reviews there, or name them with --train URL (or `train:` in the config)"
        ) from e


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune (or resume) with Ray Train, export the classifier, return a JSON-able summary.

    A run whose latest checkpoint is final and whose export is committed is not trained again:
    the summary says ``steps_run: 0``."""
    setup_logging(force=True)
    cfg = absolute_paths(cfg)
    check_train(cfg)
    model_url = model_url_for(cfg)
    found = latest_checkpoint(storage_url(cfg), run_name_of(model_url))
    if found is not None and found.metrics.get("done") and storage.is_committed(model_url):
        log.info("run %r already finished and exported: nothing to train", run_name_of(model_url))
        return {**summary_of(cfg, model_url), "start_step": found.metrics["step"], "steps_run": 0}
    if found is not None:
        log.info("resuming run %r from step %s", run_name_of(model_url), found.metrics.get("step"))
    result = run_recipe_job(
        "finetune",
        train_loop_per_worker,
        {"cfg": cfg.model_dump(), "model_url": model_url, "tracking": tracking.worker_target()},
        cfg,
        run_name=run_name_of(model_url),
        storage_path=storage_url(cfg),
    )
    if result.error:
        raise result.error
    # The committed export is the record of the run: the summary is read back from it, plus
    # where the last (successful) attempt started.
    summary = summary_of(cfg, model_url)
    last = latest_checkpoint(storage_url(cfg), run_name_of(model_url))
    start = last.metrics.get("start_step", 0) if last else 0
    summary.update(start_step=start, steps_run=summary["metrics"]["steps"] - start)
    log.info(
        "fine-tuned %s: validation accuracy %.4f, F1 %.4f -> %s",
        cfg.model,
        summary["metrics"]["accuracy"],
        summary["metrics"]["f1"],
        storage.redact(summary["model_url"]),
    )
    return summary


def summary_of(cfg: FinetuneConfig, model_url: str) -> dict[str, Any]:
    manifest = storage.read_manifest(model_url)
    m = manifest["metrics"]
    keys = ("accuracy", "f1", "train_examples", "validation_examples", "steps", "train_seconds")
    return {
        "model_url": model_url,
        "latest_pointer": cfg.latest_pointer or storage.join(cfg.output, "latest.json"),
        "fingerprint": manifest["fingerprint"],
        "metrics": {k: m[k] for k in keys},
        "teacher_cache": cfg.write_teacher_cache,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(FinetuneConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
