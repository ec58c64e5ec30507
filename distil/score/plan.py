"""The plan of one ``distil score`` run: what the launcher decides, under the output's lease,
before the Beam graph starts (``distil.pipelines.score_reviews``), and what the graph's
transforms and its commit step (``distil.score.scored.finalize_run``) then read.

:func:`plan_run` verifies the model, finishes the publish of any committed run whose launcher
died, clears the dead attempts of this run id, lists the input files and keeps those the
incremental ledger says are still to score. The :class:`RunPlan` it returns is frozen: it is
made once, pickled to the workers with the graph, and nothing downstream changes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from distil import storage
from distil.data.readers import review_files
from distil.score import ledger, scored
from distil.score.config import ScoreConfig
from distil.score.lease import Lease
from distil.sentiment import classifier

log = logging.getLogger("distil.score")


@dataclass(frozen=True)
class RunPlan:
    """One run's decisions. ``ledger`` holds the manifest ledger entries of the input files this
    run scores (url, size, etag or sha256, model fingerprint, run id, planned time); the files
    the run reads are exactly those. The last group of fields is what the summary records of
    the run's settings (:meth:`summary_fields`)."""

    output: str
    run_id: str
    attempt: str
    date: str  # the output partition, dt=<date>
    model_url: str
    registry_version: str | None  # models:/NAME/VERSION when --model named the registry
    fingerprint: str  # the model's
    id2label: dict[int, str]
    torch_threads: int
    split_bytes: int
    keep: tuple[tuple[str, str], ...]  # --keep-columns as (name, type)
    max_inference_error_rate: float
    lease: dict[str, Any]  # ``Lease.handle()``: what the commit step needs to renew it
    ledger: tuple[dict[str, Any], ...]
    failed_before: dict[str, int]  # url -> tries of the files earlier runs could not read
    quantize: bool
    bf16: bool | None
    runner: str
    teacher_cache: str | None
    incremental: bool
    files_skipped: int
    files_changed: tuple[dict[str, Any], ...]  # {url, previous_run_id}, URLs redacted

    @property
    def run_url(self) -> str:
        return scored.run_dir(self.output, self.run_id)

    @property
    def files(self) -> list[tuple[str, int]]:
        """(url, size) of every input file this run reads."""
        return [(e["url"], e["size"]) for e in self.ledger]

    def summary_fields(self) -> dict[str, Any]:
        """The run's settings as its summary.json records them."""
        return {
            "model": storage.redact(self.model_url),
            "model_version": self.registry_version,
            "model_fingerprint": self.fingerprint,
            "quantize": self.quantize,
            "bf16": self.bf16,
            "runner": self.runner,
            "torch_threads": self.torch_threads,
            "split_bytes": self.split_bytes,
            "teacher_cache": storage.redact(self.teacher_cache) if self.teacher_cache else None,
            scored.PARTITION: self.date,
            "incremental": self.incremental,
            "files_skipped": self.files_skipped,
            "files_changed": list(self.files_changed),
            "keep_columns": [f"{n}:{t}" for n, t in self.keep],
        }


def check_options(cfg: ScoreConfig) -> ScoreConfig:
    """Refuse settings that cannot run together; ``bf16`` unset becomes on where it is the fast
    path (a GPU's tensor cores) and off elsewhere."""
    if cfg.quantize and cfg.bf16:
        raise ValueError("--quantize and --bf16 are exclusive: choose one")
    if cfg.bf16 is None:
        cfg = cfg.model_copy(update={"bf16": cfg.device.startswith("cuda") and not cfg.quantize})
    if cfg.quantize and cfg.device != "cpu":
        raise ValueError("--quantize is CPU-only: drop it, or score with --device cpu")
    return cfg


def plan_run(
    cfg: ScoreConfig,
    *,
    run_id: str,
    attempt: str,
    date: str,
    inputs: list[str],
    held: Lease,
    torch_threads: int,
) -> RunPlan:
    """The plan of run ``run_id`` (attempt ``attempt``, partition ``date``) over ``inputs`` (the
    input URLs, ``{date}`` filled in). Call it holding the output's lease (``held``): it
    publishes what an earlier launcher committed but did not publish, and deletes this run id's
    attempt folders other than ``attempt``."""
    model_url, registry_version = classifier.resolve_model(cfg.model)
    # Every model file against its sha256 here, on the launcher: a tampered or half-copied model
    # is refused before a worker starts (the workers check again as they load it).
    manifest = classifier.verify_model(model_url)
    if manifest.get("kind") != classifier.MODEL_KIND:
        raise ValueError(f"{model_url} is not a fine-tuned model dir (distil finetune output)")
    id2label = {int(k): v for k, v in manifest["id2label"].items()}
    if cfg.teacher_cache:
        from distil.sentiment.teacher_cache import check_labels, open_teacher_cache

        check_labels(open_teacher_cache(cfg.teacher_cache), id2label)
    all_files = review_files.expand_inputs(inputs, cfg.input_format)
    runs = ledger.committed_runs(cfg.output)
    for rid, m in runs.items():
        if not m.get("published", True):  # its launcher died between commit and publish
            log.warning("run %s was committed but not published: publishing it now", rid)
            scored.publish(cfg.output, rid)
    for name in scored.remove_stale_attempts(cfg.output, run_id, attempt):
        log.warning("removed %s of run %s: an attempt that died before its commit", name, run_id)
    versions = [ledger.file_version(u) for u in all_files]
    fingerprint = manifest["fingerprint"]
    incremental = cfg.incremental and not cfg.rescore
    if incremental:
        todo, skipped, changed = ledger.plan(versions, runs, run_id, fingerprint)
    else:
        todo, skipped, changed = versions, [], []
    failed_before = ledger.previous_tries(todo, runs, run_id, fingerprint)
    for url, tries in failed_before.items():
        log.warning("%s could not be read by %d earlier run(s): trying again", url, tries)
    split_bytes = cfg.split_bytes or review_files.default_split_bytes(sum(v["size"] for v in todo))
    now = scored.now_utc().isoformat()
    return RunPlan(
        output=cfg.output,
        run_id=run_id,
        attempt=attempt,
        date=date,
        model_url=model_url,
        registry_version=registry_version,
        fingerprint=fingerprint,
        id2label=id2label,
        torch_threads=torch_threads,
        split_bytes=split_bytes,
        keep=tuple(scored.parse_keep_columns(cfg.keep_columns)),
        max_inference_error_rate=cfg.max_inference_error_rate,
        lease=held.handle(),
        ledger=tuple(
            {**v, "model_fingerprint": fingerprint, "run_id": run_id, "scored_at": now}
            for v in todo
        ),
        failed_before=failed_before,
        quantize=cfg.quantize,
        bf16=cfg.bf16,
        runner=cfg.runner,
        teacher_cache=cfg.teacher_cache,
        incremental=incremental,
        files_skipped=len(skipped),
        files_changed=tuple(
            {"url": storage.redact(c["url"]), "previous_run_id": c["previous"]["run_id"]}
            for c in changed
        ),
    )
