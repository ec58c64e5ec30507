"""Teacher adaptation: turn an encoder without a masked-LM head into an MLM teacher.

The embedded default teacher (packaged MiniLM, a sentence-embedding encoder) ships no MLM head.
Training only a fresh head on the frozen encoder does not learn (its last layer was tuned for
mean-pooled sentence embeddings, not token identity: a head trained alone for 400 steps stayed
near loss 6.9), so the head and the whole encoder are trained together with the usual BERT
objective on the prepared shards, for a token budget. Which parameters train when is
``distil.teacher.adapt_method`` (options measured by ``scripts/experiments/adapt_curve.py``); the
optimizer, LR schedule and gradient clipping are ``distil.training``'s, as in every training loop.
The head is computed only at the masked positions (15% of tokens), which makes a step about 3x cheaper than ``BertForMaskedLM(..., labels=...)`` on a 30k vocab.

Plain torch: this is minutes of CPU for the demo and needs no cluster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distil import storage, training
from distil.data import shards
from distil.teacher.adapt_method import plan_trainable, start_phase
from distil.teacher.compat import check_tokenizer
from distil.teacher.config import AdaptConfig
from distil.teacher.load import load_teacher, mlm_parts
from distil.teacher.logits import MaskingParams

log = logging.getLogger(__name__)
ADAPTED_KIND = "adapted_teacher"


@dataclass
class Rows:
    """Sequences held in memory: ids [n, seq_len], lengths [n], seq_ids [n]."""

    ids: np.ndarray
    lengths: np.ndarray
    seq_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)


def load_rows(url: str, manifest: dict[str, Any], train_tokens: int, heldout: int, frac: float):
    """Read shards in order until there are ``train_tokens`` training tokens and ``heldout``
    held-out sequences (or the data runs out; training then cycles over what there is)."""
    train, held = [], []
    n_train_tokens = n_held = 0
    for f in manifest["files"]:
        if n_train_tokens >= train_tokens and n_held >= heldout:
            break
        table = shards.read_table(storage.join(url, f["name"]))
        ids = shards.input_ids_matrix(table)
        lengths = table.column("length").to_numpy().astype(np.int64)
        seq_ids = table.column("seq_id").to_numpy()
        is_held = shards.is_heldout(seq_ids, frac)
        train.append((ids[~is_held], lengths[~is_held], seq_ids[~is_held]))
        held.append((ids[is_held], lengths[is_held], seq_ids[is_held]))
        n_train_tokens += int(lengths[~is_held].sum())
        n_held += int(is_held.sum())

    def cat(parts):
        return Rows(*(np.concatenate([p[i] for p in parts]) for i in range(3)))

    return cat(train), cat(held)


def make_batch(rows: Rows, idx: np.ndarray, masking: MaskingParams, copy: int, pad: int, cap: int):
    """Masked batch trimmed to its longest row (at most ``cap`` tokens)."""
    lengths = np.minimum(rows.lengths[idx], cap).astype(np.int64)
    width = int(lengths.max())
    inside = np.arange(width)[None, :] < lengths[:, None]
    m = masking.mask_batch(rows.ids[idx, :width], lengths, rows.seq_ids[idx], copy)
    x = np.where(inside, m.input_ids, pad)
    labels = np.full((len(idx), width), -100, dtype=np.int64)
    labels[m.selected] = m.labels
    return torch.from_numpy(x), torch.from_numpy(inside.astype(np.int64)), torch.from_numpy(labels)


def masked_lm_loss(model: Any, x: torch.Tensor, am: torch.Tensor, labels: torch.Tensor):
    """(mean cross-entropy, #correct, #positions), with the head run on masked positions only."""
    encoder, head = mlm_parts(model)
    dev = next(model.parameters()).device
    x, am, labels = x.to(dev), am.to(dev), labels.to(dev)
    hidden = encoder(input_ids=x, attention_mask=am).last_hidden_state
    sel = labels != -100
    logits = head(hidden[sel])
    target = labels[sel]
    loss = torch.nn.functional.cross_entropy(logits.float(), target)
    correct = int((logits.argmax(-1) == target).sum())
    return loss, correct, int(target.numel())


@torch.no_grad()
def evaluate(model: Any, rows: Rows, masking: MaskingParams, pad: int, cap: int, bs: int = 32):
    """Held-out masked-token accuracy and perplexity (fixed masks: copy 0 of the eval stream)."""
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for start in range(0, len(rows), bs):
        idx = np.arange(start, min(start + bs, len(rows)))
        x, am, labels = make_batch(rows, idx, masking, 0, pad, cap)
        loss, c, k = masked_lm_loss(model, x, am, labels)
        total_loss += float(loss) * k
        correct += c
        n += k
    mean = total_loss / max(n, 1)
    return {"accuracy": correct / max(n, 1), "perplexity": math.exp(mean), "loss": mean, "n": n}


def adapt_fingerprint(cfg: AdaptConfig, teacher_sha256: str, data_fingerprint: str) -> str:
    """What an adapted teacher depends on: the teacher's weights, the data and the settings
    (not where they are read and written, nor how fast or verbosely)."""
    settings = cfg.fingerprint_dump(
        exclude={"input", "output", "torch_threads", "log_every", "device"}
    )
    return storage.fingerprint(
        {"teacher": teacher_sha256, "data": data_fingerprint, "cfg": settings}
    )


def adapt(cfg: AdaptConfig) -> dict[str, Any]:
    """Train head + encoder for ``cfg.token_budget`` tokens; save the HF dir to ``cfg.output``."""
    t_start = time.perf_counter()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    teacher = load_teacher(cfg.teacher, cfg.allow_pickle)
    manifest = shards.open_prepared(cfg.input)
    check_tokenizer(teacher, cfg.teacher, manifest, cfg.input)
    fingerprint = adapt_fingerprint(cfg, teacher.weights_sha256, manifest["fingerprint"])
    if storage.is_committed(cfg.output):
        done = storage.read_manifest(cfg.output)
        if done.get("kind") == ADAPTED_KIND and done.get("fingerprint") == fingerprint:
            print(f"already adapted: {storage.redact(cfg.output)} (nothing to do)")
            return {"output": cfg.output, "skipped": True, **done["metrics"]}
    model = teacher.model.to(cfg.device)
    plan = plan_trainable(model, cfg.train_layers, cfg.train_word_embeddings)  # checks first
    pad = int(manifest["special_ids"]["pad"])
    masking_cfg = {
        "seed": cfg.seed,
        "copies": 1,
        "mask_prob": cfg.mask_prob,
        "mask_token_frac": 0.8,
        "random_token_frac": 0.1,
        "mlm_smoothing": 0.0,
    }
    masking = MaskingParams.from_config(masking_cfg, manifest)
    eval_masking = MaskingParams.from_config({**masking_cfg, "seed": cfg.seed + 7919}, manifest)
    train, held = load_rows(
        cfg.input, manifest, cfg.token_budget, cfg.eval_sequences, cfg.heldout_fraction
    )
    if len(train) == 0 or len(held) == 0:
        raise ValueError(
            f"{cfg.input}: {len(train)} training and {len(held)} held-out sequences; need both "
            "(raise --heldout-fraction or use more data)"
        )
    held = Rows(*(a[: cfg.eval_sequences] for a in (held.ids, held.lengths, held.seq_ids)))
    cap = cfg.max_seq_len
    before = evaluate(model, held, eval_masking, pad, cap)
    log.info("before: held-out accuracy %.4f, perplexity %.1f", *_ap(before))

    tokens_per_seq = float(np.minimum(train.lengths, cap).mean())
    total_steps = max(1, math.ceil(cfg.token_budget / (tokens_per_seq * cfg.batch_size)))
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    head_only = cfg.head_warmup_tokens > 0
    start_phase(plan, with_body=not head_only)
    # the frozen-for-now encoder is in the optimizer from the start: no gradient, no update.
    # In the model's parameter order: the clipped norm sums in that order, as it always has.
    order = {id(p): i for i, p in enumerate(model.parameters())}
    optim = training.optimization(
        sorted(plan.all(), key=lambda named: order[id(named[1])]),
        cfg,
        warmup_steps=warmup,
        total_steps=total_steps,
        device=torch.device(cfg.device),
        schedule=cfg.lr_schedule,
        first_step=1,
    )
    model.train()
    rng = np.random.default_rng(cfg.seed)
    tokens, step, epoch = 0, 0, 0
    order = rng.permutation(len(train))
    cursor = 0
    t0 = time.perf_counter()
    losses: list[float] = []
    while tokens < cfg.token_budget:
        if cursor >= len(order):  # next epoch: new order and new masks (copy = epoch)
            epoch += 1
            order, cursor = rng.permutation(len(train)), 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        if head_only and tokens >= cfg.head_warmup_tokens:
            head_only = False
            start_phase(plan, with_body=True)
            log.info(
                "step %d: head warm-up done (%d tokens); training head + encoder", step, tokens
            )
        x, am, labels = make_batch(train, idx, masking, epoch, pad, cap)
        loss, _, _ = masked_lm_loss(model, x, am, labels)
        optim.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        step += 1
        tokens += int(am.sum())
        losses.append(loss.item())
        if step % cfg.log_every == 0 or tokens >= cfg.token_budget:
            dt = time.perf_counter() - t0
            log.info(
                "step %d/%d  loss %.3f  %d/%d tokens  %.0f tok/s  eta %.0fs",
                step,
                total_steps,
                float(np.mean(losses[-cfg.log_every :])),
                tokens,
                cfg.token_budget,
                tokens / dt,
                max(0.0, (cfg.token_budget - tokens) / max(tokens / dt, 1e-9)),
            )
    train_seconds = time.perf_counter() - t0
    after = evaluate(model, held, eval_masking, pad, cap)
    log.info("after: held-out accuracy %.4f, perplexity %.1f", *_ap(after))
    metrics = {
        "before": before,
        "after": after,
        "steps": step,
        "tokens": tokens,
        "epochs": epoch + cursor / max(len(order), 1),
        "train_sequences": len(train),
        "heldout_sequences": len(held),
        "train_seconds": round(train_seconds, 1),
        "seconds": round(time.perf_counter() - t_start, 1),
        "final_train_loss": float(np.mean(losses[-cfg.log_every :])),
        "teacher": cfg.teacher,
        "teacher_weights_sha256": teacher.weights_sha256,
        "data_fingerprint": manifest["fingerprint"],
        "config": cfg.model_dump(),
    }
    save_adapted(model, teacher.tokenizer, cfg.output, metrics, fingerprint)
    return {"output": cfg.output, "skipped": False, **_flat(metrics)}


def _ap(m: dict[str, float]) -> tuple[float, float]:
    return m["accuracy"], m["perplexity"]


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "heldout_accuracy_before": metrics["before"]["accuracy"],
        "heldout_accuracy_after": metrics["after"]["accuracy"],
        "heldout_perplexity_before": metrics["before"]["perplexity"],
        "heldout_perplexity_after": metrics["after"]["perplexity"],
        "steps": metrics["steps"],
        "tokens": metrics["tokens"],
        "train_seconds": metrics["train_seconds"],
    }


def save_adapted(model: Any, tokenizer: Any, url: str, metrics: dict, fingerprint: str) -> None:
    """HF ``*ForMaskedLM`` dir (safetensors + tokenizer + metrics.json), committed at ``url``."""
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        storage.upload_dir(tmp, url)
        files = sorted(os.listdir(tmp))
    storage.commit(
        url,
        {
            "kind": ADAPTED_KIND,
            "fingerprint": fingerprint,
            "files": files,
            "metrics": _flat(metrics),
        },
    )
