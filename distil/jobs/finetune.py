"""Stage 4a: fine-tune a sentiment classifier on labelled reviews with Ray Train (DDP, gloo on CPU).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m distil.jobs.finetune --config finetune/default \\
        --model s3://distil/student --output s3://distil/sentiment

or ``distil finetune …`` (``init_ray``: the cluster in RAY_ADDRESS, else an embedded Ray).
Each worker builds a :class:`FinetuneRecipe` (one DDP rank); rank 0 evaluates, exports the
HF classifier dir + metrics.json to ``OUTPUT/<run-name>``, and moves ``OUTPUT/latest.json``.
"""

from __future__ import annotations

import logging
from typing import Any

import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from distil import storage
from distil.cluster import init_ray
from distil.config import absolute_paths, job_main
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune import FinetuneRecipe, default_train_url, model_url_for

log = logging.getLogger("distil.jobs.finetune")


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DDP rank (Ray has set up the gloo process group)."""
    _setup_logging()
    cfg = FinetuneConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    recipe = FinetuneRecipe(cfg, rank=ctx.get_world_rank(), world_size=ctx.get_world_size())
    recipe.setup()
    recipe.train()
    if recipe.rank == 0:
        recipe.save_checkpoint(config["model_url"])
    # every rank reports once (a sync point, so no worker exits before rank 0 has exported)
    ray.train.report({"rank": recipe.rank})


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune with Ray Train, export the classifier, return a JSON-able summary."""
    _setup_logging()
    cfg = absolute_paths(cfg)
    if cfg.train is None:  # assemble the default data once, on the driver
        cfg = cfg.model_copy(update={"train": default_train_url(cfg)})
    model_url = model_url_for(cfg)
    init_ray()
    storage_kw: dict[str, Any] = {}
    if cfg.ray_storage_path:
        fs, path = storage.arrow_filesystem(cfg.ray_storage_path)
        storage_kw = {"storage_path": path, "storage_filesystem": fs}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(), "model_url": model_url},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(name=model_url.rstrip("/").rsplit("/", 1)[-1], **storage_kw),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    # Ray Train 2.x keeps reported metrics only alongside checkpoints; the committed export is
    # the record of the run anyway, so the summary is read back from it.
    summary = summary_of(cfg, model_url)
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
