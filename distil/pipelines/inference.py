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

import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from distil.score.config import ScoreConfig
from distil.sentiment import classifier

# Runners whose SDK workers all run on the launching machine (their count is direct_num_workers).
LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}
WORKER = "_worker"  # inference key naming the process that scored a batch (never written)
ERROR = "error"  # inference key: per row, the exception it raised when run alone, or None
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


def batch_sizes(cfg: ScoreConfig) -> tuple[int, int | None]:
    """(rows per RunInference batch, rows per forward pass or None for the whole batch): the
    configured ones, else 512 and 64 on the CPU, and on a GPU 4096 rows in one forward pass
    (a GPU runs one large pass faster than many small ones: fewer launches, fuller kernels)."""
    cuda = cfg.device.startswith("cuda")
    rows = cfg.batch_size or (4096 if cuda else 512)
    return rows, cfg.micro_batch_size or (None if cuda else 64)


def review_rows(batch: pa.RecordBatch) -> int:
    """The size of one element for Beam's batching: its reviews, not 1 (an element is an
    Arrow batch of reviews from ``ReadReviews``)."""
    return batch.num_rows


# The model this process loaded last, by what it was loaded with: a second run in the same
# process (gpu_check's warm run, a notebook, tests) does not load it again. One at most, so a
# process that scores with a new model lets the old one go.
_HELD: dict[tuple, classifier.SequenceClassifier] = {}


class ReviewClassifierHandler(ModelHandler[pa.RecordBatch, dict, classifier.SequenceClassifier]):
    """RunInference handler over Arrow batches of reviews (``score_graph.ReadReviews``): Beam
    groups them up to ``batch_size`` reviews in all (``review_rows``), whose texts are
    tokenized in one call, sorted by length and run in micro-batches; each element gets its
    results back as arrays. (Beam's HF handler imports TF classes transformers 5 removed.)"""

    def __init__(self, model_url: str, fingerprint: str, cfg: ScoreConfig, torch_threads: int):
        rows, self.micro_batch_size = batch_sizes(cfg)
        super().__init__(
            # Full batches from the start (Beam's default min of 1 grows batches adaptively from
            # a single element; small batches lose the length sorting). A bundle's tail still
            # flushes.
            min_batch_size=rows,
            max_batch_size=rows,
            element_size_fn=review_rows,
            large_model=cfg.share_model_across_processes,
        )
        self.model_url, self.fingerprint = model_url, fingerprint
        self.cache, self.max_length = cfg.model_cache, cfg.max_length
        self.quantize, self.bf16, self.threads = cfg.quantize, cfg.bf16, torch_threads
        self.device = cfg.device

    def load_model(self) -> classifier.SequenceClassifier:
        """Runs once per SDK worker process (per machine with ``large_model``); a process that
        already holds this very model (same files, same settings) gets it back."""
        import torch

        torch.set_num_threads(self.threads)
        local, fp = classifier.fetch_model(self.model_url, self.cache)
        if fp != self.fingerprint:
            raise ValueError(f"model changed under the run: {fp} != {self.fingerprint}")
        key = (fp, local, self.max_length, self.quantize, self.bf16, self.device)
        if key not in _HELD:
            _HELD.clear()
            _HELD[key] = classifier.SequenceClassifier(
                local,
                max_length=self.max_length,
                quantize=self.quantize,
                bf16=self.bf16,
                device=self.device,
            )
        return _HELD[key]

    def run_inference(
        self,
        batch: Sequence[pa.RecordBatch],
        model: classifier.SequenceClassifier,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """One ``PredictionResult`` per review batch: arrays ``label_id``, ``probs``,
        ``truncated``, ``n_tokens`` and ``ERROR`` (per row: None, or the exception the row
        raised), and the ``WORKER``. A batch that raises is run again row by row: one row that
        breaks the model (or a transient failure) must not fail its whole batch, and Beam
        retrying the bundle would fail the run. A row that still raises alone gets its error
        and becomes an ``inference_error`` dead letter."""
        t0 = time.perf_counter()
        texts = [t for b in batch for t in b.column("text").to_pylist()]
        try:
            out = model.classify(texts, self.micro_batch_size)
            errors: list[str | None] = [None] * len(texts)
        except Exception:
            Metrics.counter(METRICS, "batches_retried_row_by_row").inc()
            out, errors = self._row_by_row(texts, model)
        worker, results, start = worker_id(), [], 0
        for b in batch:
            rows = slice(start, start + b.num_rows)
            inference = {k: v[rows] for k, v in out.items()}
            inference.update({ERROR: errors[rows], WORKER: worker})
            results.append(PredictionResult(b, inference, self.fingerprint))
            start += b.num_rows
        Metrics.distribution(METRICS, "batch_latency_ms").update(
            int((time.perf_counter() - t0) * 1000)
        )
        return results

    def _row_by_row(
        self, texts: list[str], model: classifier.SequenceClassifier
    ) -> tuple[dict[str, np.ndarray], list[str | None]]:
        n, labels = len(texts), len(model.id2label)
        out = {
            "label_id": np.zeros(n, np.int64),
            "probs": np.zeros((n, labels), np.float32),
            "truncated": np.zeros(n, bool),
            "n_tokens": np.zeros(n, np.int32),
        }
        errors: list[str | None] = [None] * n
        for i, text in enumerate(texts):
            try:
                one = model.classify([text], self.micro_batch_size)
            except Exception as e:
                errors[i] = f"{type(e).__name__}: {e}"
                continue
            for k, v in one.items():
                out[k][i] = v[0]
        return out, errors

    def get_num_bytes(self, batch: Sequence[pa.RecordBatch]) -> int:
        return sum(b.column("text").nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS
