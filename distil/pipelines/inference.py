"""The RunInference side of ``distil score``: the model handler, how many torch threads each SDK
worker process gets, and which worker scored a row (for the run summary).

Threads: one SDK worker process runs one model; several such processes (``--direct_num_workers N
--direct_running_mode multi_processing``, or a Flink task manager's SDK workers) each left at
torch's default would each start one intra-op thread per core, N × cores threads on cores
cores. So the thread count is set explicitly in ``load_model`` on every worker process.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from distil.sentiment import classifier
from distil.sentiment.config import ScoreConfig

# Runners whose SDK workers all run on the launching machine (their count is direct_num_workers).
LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}
WORKER = "_worker"  # row key (never written to Parquet) naming the process that scored it
ERROR = "error"  # inference key: the exception a row raised when run alone (-> dead letter)
METRICS = "distil_score"  # Beam metrics namespace of the scoring stage


def local_cpus() -> int:
    """CPUs this process may run on (the affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_torch_threads(cfg: ScoreConfig, options: PipelineOptions) -> int:
    """``--torch-threads`` if given. Otherwise, on a local runner, the machine's CPUs divided
    among its ``--direct_num_workers`` workers (0 = one per CPU → 1 thread each); on a
    distributed runner (Flink, Spark, Dataflow, …) 1: those run one SDK worker process per core or
    several bundles per process, and parallelism comes from the bundles, not from torch."""
    if cfg.torch_threads:
        return cfg.torch_threads
    runner = options.view_as(StandardOptions).runner or cfg.runner
    runner = runner.rsplit(".", 1)[-1]  # a runner may be named by its class path
    if runner not in LOCAL_RUNNERS:
        return 1
    workers = options.view_as(DirectOptions).direct_num_workers or local_cpus()
    return max(1, local_cpus() // workers)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class ReviewClassifierHandler(ModelHandler[dict, dict, classifier.SequenceClassifier]):
    """RunInference handler: a batch of review dicts → tokenized in one call, sorted by length,
    run in padded micro-batches. (Beam's HF handler imports TF classes transformers 5 removed.)"""

    def __init__(self, model_url: str, fingerprint: str, cfg: ScoreConfig, torch_threads: int):
        super().__init__(
            # Full batches from the start (Beam's default min of 1 grows batches adaptively from
            # a single row; small batches lose the length sorting). A bundle's tail still flushes.
            min_batch_size=cfg.batch_size,
            max_batch_size=cfg.batch_size,
            large_model=cfg.share_model_across_processes,
        )
        self.model_url, self.fingerprint = model_url, fingerprint
        self.cache, self.max_length = cfg.model_cache, cfg.max_length
        self.quantize, self.bf16, self.threads = cfg.quantize, cfg.bf16, torch_threads
        self.micro_batch_size = cfg.micro_batch_size
        self.device = cfg.device

    def load_model(self) -> classifier.SequenceClassifier:
        """Runs once per SDK worker process (per machine with ``large_model``)."""
        import torch

        torch.set_num_threads(self.threads)
        local, fp = classifier.fetch_model(self.model_url, self.cache)
        if fp != self.fingerprint:
            raise ValueError(f"model changed under the run: {fp} != {self.fingerprint}")
        return classifier.SequenceClassifier(
            local,
            max_length=self.max_length,
            quantize=self.quantize,
            bf16=self.bf16,
            device=self.device,
        )

    def run_inference(
        self,
        batch: Sequence[dict],
        model: classifier.SequenceClassifier,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """A batch that raises is run again row by row: one row that breaks the model (or a
        transient failure) must not fail its whole batch, and Beam retrying the bundle would
        fail the run. A row that still raises alone comes back with ``ERROR`` set, and
        becomes an ``inference_error`` dead letter."""
        t0 = time.perf_counter()
        worker = worker_id()
        try:
            out = model.classify([r["text"] for r in batch], self.micro_batch_size)
            results = [self._result(row, out, i, worker) for i, row in enumerate(batch)]
        except Exception:
            Metrics.counter(METRICS, "batches_retried_row_by_row").inc()
            results = []
            for row in batch:
                try:
                    out = model.classify([row["text"]], self.micro_batch_size)
                    results.append(self._result(row, out, 0, worker))
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"
                    results.append(
                        PredictionResult(row, {ERROR: error, WORKER: worker}, self.fingerprint)
                    )
        Metrics.distribution(METRICS, "batch_latency_ms").update(
            int((time.perf_counter() - t0) * 1000)
        )
        return results

    def _result(self, row: dict, out: dict, i: int, worker: str) -> PredictionResult:
        return PredictionResult(
            row,
            {
                "label_id": int(out["label_id"][i]),
                "probs": out["probs"][i],
                "truncated": bool(out["truncated"][i]),
                "n_tokens": int(out["n_tokens"][i]),
                WORKER: worker,
            },
            self.fingerprint,
        )

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(r["text"]) for r in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS
