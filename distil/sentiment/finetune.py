"""Sentiment fine-tuning recipe, engine-free: setup / train / evaluate / save_checkpoint for one
DDP rank. ``jobs/finetune.py`` runs one recipe per Ray Train worker; tests run it directly
(world size 1, no Ray) through :func:`run_local`.

Loss per example: ``(1 - kd_alpha) * CE(label) + kd_alpha * T² * KL(teacher_T ‖ student_T)``
when a task-level teacher cache is given and covers the text (DistilBERT's second distillation
step), plain cross-entropy otherwise. The KD term is :func:`distil.losses.kd_dense` and the LR
schedule ``transformers.get_linear_schedule_with_warmup``, as in pre-training, so that both stages
mean the same thing by "KD" and "warm-up".

Data reading lives in :mod:`distil.sentiment.labelled_data`, output locations and publishing in
:mod:`distil.sentiment.finetune_export`; the names the job and older callers import from here
(``default_train_url``, ``model_url_for``, ``load_labelled``, ``metrics_of``, …) are re-exported.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distil import losses, storage
from distil.packaged import resolve_model_ref
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune_export import metrics_of, model_url_for, publish_classifier
from distil.sentiment.labelled_data import default_train_url, load_labelled, split_rows
from distil.sentiment.review_files import text_sha256
from distil.sentiment.reviews import id_hash

log = logging.getLogger("distil.finetune")


def classification_metrics(pred: np.ndarray, gold: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro F1 and per-class F1 (for 2 classes, ``f1`` is the positive class's)."""
    f1s = []
    for c in range(num_labels):
        tp = int(((pred == c) & (gold == c)).sum())
        fp = int(((pred == c) & (gold != c)).sum())
        fn = int(((pred != c) & (gold == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    out = {
        "accuracy": float((pred == gold).mean()) if len(gold) else float("nan"),
        "f1_macro": float(np.mean(f1s)),
        "f1_per_class": f1s,
        "examples": int(len(gold)),
    }
    if num_labels == 2:
        out["f1"] = f1s[1]
    return out


class FinetuneRecipe:
    """setup → train → save_checkpoint for one DDP rank (``world_size`` 1 without Ray)."""

    def __init__(self, cfg: FinetuneConfig, *, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.history: list[dict[str, Any]] = []

    # -- setup
    def setup(self) -> None:
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            get_linear_schedule_with_warmup,
        )

        cfg = self.cfg
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)  # same head init on every rank
        ref = resolve_model_ref(cfg.model)
        local = ref
        if "://" in ref:
            local = storage.copy_dir_to_local(ref, tempfile.mkdtemp(prefix="distil-ft-model-"))
        labels = list(cfg.labels)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            local,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
        self.tokenizer = AutoTokenizer.from_pretrained(local)

        train_url = cfg.train or default_train_url(cfg)
        rows, self.data_accounting = load_labelled(
            train_url, cfg.text_column, cfg.label_column, cfg.id_column, labels
        )
        train, val = split_rows(rows, cfg.validation_fraction)
        # Source files are often sorted by label (the movie snippets are: positives first), so a
        # "first N rows" budget would be one class. Order by the id hash instead: a fixed,
        # model-independent sample, the same for every model compared on it.
        train.sort(key=lambda r: id_hash(r["id"]))
        val.sort(key=lambda r: id_hash(r["id"]))
        if cfg.max_train_examples:
            train = train[: cfg.max_train_examples]
        if cfg.max_validation_examples:
            val = val[: cfg.max_validation_examples]
        if not train or not val:
            raise ValueError(f"{len(train)} training / {len(val)} validation rows: need both")
        self.train_rows, self.val_rows = train, val
        self.train_ids = self._encode([r["text"] for r in train])
        self.val_ids = self._encode([r["text"] for r in val])
        self.train_labels = torch.tensor([r["label"] for r in train])
        self.val_labels = np.array([r["label"] for r in val])

        self.teacher_logits = None
        if cfg.teacher_cache:
            from distil.sentiment.teacher_cache import (
                check_labels,
                open_teacher_cache,
                read_teacher_cache,
            )

            check_labels(open_teacher_cache(cfg.teacher_cache), dict(enumerate(labels)))
            cache = read_teacher_cache(cfg.teacher_cache)
            t = np.zeros((len(train), len(labels)), np.float32)
            covered = np.zeros(len(train), bool)
            for i, r in enumerate(train):
                hit = cache.get(text_sha256(r["text"]))
                if hit is not None:
                    t[i], covered[i] = hit, True
            self.teacher_logits, self.teacher_covered = (
                torch.from_numpy(t),
                torch.from_numpy(covered),
            )
            log.info("teacher cache covers %d / %d training rows", covered.sum(), len(train))

        per_step = cfg.batch_size * self.world_size
        steps_per_epoch = math.ceil(len(train) / per_step)
        self.total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.steps_per_epoch = steps_per_epoch
        self.warmup = int(cfg.warmup_fraction * self.total_steps)

        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
        params = list(self.model.named_parameters())
        groups = [
            {
                "params": [p for n, p in params if not n.endswith(no_decay)],
                "weight_decay": cfg.weight_decay,
            },
            {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        # Linear warm-up from 0 to the peak over ``warmup`` steps, then linear decay to 0 at
        # ``total_steps``. No resume: a run is short and restarts from scratch, so the
        # scheduler's state is never saved.
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, self.warmup, self.total_steps
        )
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.cfg.max_length)
        return enc["input_ids"]

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids, mask

    def _rank_batch(self, step: int) -> np.ndarray:
        """Row indices of this rank's batch at ``step``: each epoch is one seeded permutation,
        cut into global batches, each split across ranks (wrapping around, so every rank does the
        same number of steps — DDP needs that)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        perm = np.random.default_rng(self.cfg.seed + epoch).permutation(len(self.train_rows))
        per_step = self.cfg.batch_size * self.world_size
        start = within * per_step + self.rank * self.cfg.batch_size
        return perm[np.arange(start, start + self.cfg.batch_size) % len(perm)]

    # -- train
    def train(self, report: Callable[[int, dict[str, Any]], None] | None = None) -> dict:
        cfg = self.cfg
        self.ddp_model.train()
        t0, running = time.time(), []
        for step in range(self.total_steps):
            idx = self._rank_batch(step)
            ids, mask = self._pad([self.train_ids[i] for i in idx])
            logits = self.ddp_model(input_ids=ids, attention_mask=mask).logits
            ce = F.cross_entropy(logits, self.train_labels[idx], reduction="none")
            loss_rows = ce
            if self.teacher_logits is not None:
                kd = losses.kd_dense(
                    logits, self.teacher_logits[idx], cfg.kd_temperature, reduction="none"
                )
                covered = self.teacher_covered[idx]
                loss_rows = torch.where(covered, (1 - cfg.kd_alpha) * ce + cfg.kd_alpha * kd, ce)
            loss = loss_rows.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            running.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == self.total_steps:
                rec = {
                    "step": step + 1,
                    "loss": float(np.mean(running)),
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "steps_per_s": (step + 1) / (time.time() - t0),
                }
                running = []
                self.history.append(rec)
                if self.rank == 0:
                    log.info(
                        "step %d/%d loss %.4f lr %.2e %.2f steps/s",
                        rec["step"],
                        self.total_steps,
                        rec["loss"],
                        rec["lr"],
                        rec["steps_per_s"],
                    )
                if report:
                    report(step + 1, rec)
        self.train_seconds = time.time() - t0
        return self.history[-1] if self.history else {}

    # -- evaluate
    @torch.inference_mode()
    def predict_logits(self, seqs: list[list[int]], batch_size: int = 128) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.zeros((len(seqs), self.model.config.num_labels), np.float32)
        for start in range(0, len(seqs), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self._pad([seqs[i] for i in idx])
            out[idx] = self.model(input_ids=ids, attention_mask=mask).logits.float().numpy()
        self.model.train()
        return out

    def evaluate(self) -> dict[str, Any]:
        logits = self.predict_logits(self.val_ids)
        m = classification_metrics(logits.argmax(-1), self.val_labels, len(self.cfg.labels))
        m["loss"] = float(
            F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(self.val_labels)).item()
        )
        return m

    # -- save
    def save_checkpoint(self, model_url: str) -> dict[str, Any]:
        """Rank 0: export the HF classifier + metrics.json, move the latest pointer, optionally
        cache this model's logits as a teacher for a student run."""
        cfg = self.cfg
        val = self.evaluate()
        metrics = {
            "validation": val,
            "accuracy": val["accuracy"],
            "f1": val.get("f1", val["f1_macro"]),
            "model": cfg.model,
            "train_examples": len(self.train_rows),
            "validation_examples": len(self.val_rows),
            "steps": self.total_steps,
            "world_size": self.world_size,
            "train_seconds": round(getattr(self, "train_seconds", 0.0), 1),
            "kd": {
                "teacher_cache": cfg.teacher_cache,
                "alpha": cfg.kd_alpha,
                "temperature": cfg.kd_temperature,
            }
            if cfg.teacher_cache
            else None,
            "data": self.data_accounting,
            "history": self.history,
            "config": cfg.model_dump(),
        }
        out = publish_classifier(self.model, self.tokenizer, model_url, metrics, cfg)
        if cfg.write_teacher_cache:
            from distil.sentiment.teacher_cache import write_teacher_cache

            rows = self.train_rows + self.val_rows
            logits = self.predict_logits(self.train_ids + self.val_ids)
            write_teacher_cache(
                cfg.write_teacher_cache,
                [r["text"] for r in rows],
                logits,
                dict(enumerate(cfg.labels)),
                model_url,
                out["fingerprint"],
            )
            out["teacher_cache"] = cfg.write_teacher_cache
        return out


def run_local(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune in this process (world size 1): what one Ray worker does, without Ray."""
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe.save_checkpoint(model_url_for(cfg))


__all__ = [
    "FinetuneRecipe",
    "classification_metrics",
    "default_train_url",
    "load_labelled",
    "metrics_of",
    "model_url_for",
    "run_local",
    "split_rows",
]
