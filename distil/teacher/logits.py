"""Teacher logits for masked positions, without any engine (Ray or not).

The masked-LM head is a [H, V] projection (V = 30,522): running it on every token of a batch
and throwing away 85% of the rows costs more than the encoder of a small teacher. So we run the
encoder, gather the hidden states of the masked positions only, and apply the head to those
(in chunks, so even the kept rows never need one huge [N, V] tensor).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil.data import shards
from distil.teacher import cache as cache_format
from distil.teacher.load import mlm_parts
from distil.teacher.masking import MaskedSequence, mask_sequence, rng_for, selection_weights
from distil.teacher.sparse import SparseLogits, sparsify

HEAD_CHUNK = 2048  # positions per head matmul: 2048 x 30522 fp32 = 250 MB at most


def autocast_for(device: torch.device):
    """bf16 autocast on GPU (tensor cores), nothing on CPU (bf16 matmuls are slower there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def teacher_logits_batch(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    sparsity: dict[str, Any],
    uniforms: torch.Tensor | None = None,
) -> SparseLogits:
    """Sparse teacher targets at ``positions`` (bool [B, L]) of one batch, row-major order.

    ``sparsity`` is ``{"mode": "topk"|"sampled", "k": K, "temperature": T}``; sampled mode needs
    ``uniforms`` [N, K] (one row per selected position, same order).
    """
    encoder, head = mlm_parts(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device, non_blocking=True)
    attention_mask = attention_mask.to(device, non_blocking=True)
    positions = positions.to(device, non_blocking=True)
    with autocast_for(device):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        kept = hidden[positions]  # [N, H], row-major over (batch, position)
    parts = []
    for start in range(0, kept.shape[0], HEAD_CHUNK):
        with autocast_for(device):
            logits = head(kept[start : start + HEAD_CHUNK])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        u = None if uniforms is None else uniforms[start : start + HEAD_CHUNK]
        parts.append(sparsify(logprobs, sparsity, u))
    if not parts:
        k = sparsity["k"]
        empty = torch.zeros((0, k), dtype=torch.long)
        counts = torch.zeros((0, k)) if sparsity["mode"] == "sampled" else None
        return SparseLogits(empty, torch.zeros((0, k)), counts)
    return SparseLogits(
        ids=torch.cat([p.ids for p in parts]).cpu(),
        logprobs=torch.cat([p.logprobs for p in parts]).cpu(),
        counts=None if parts[0].counts is None else torch.cat([p.counts for p in parts]).cpu(),
    )


@dataclass
class MaskingParams:
    """Everything ``mask_sequence`` needs besides the sequence itself."""

    seed: int
    copies: int
    mask_prob: float
    mask_token_frac: float
    random_token_frac: float
    special_ids: np.ndarray
    mask_id: int
    vocab_size: int
    weights: np.ndarray | None

    @classmethod
    def from_config(cls, masking: dict[str, Any], manifest: dict[str, Any]) -> MaskingParams:
        special = manifest["special_ids"]
        counts = manifest.get("token_counts")
        if masking["mlm_smoothing"] > 0 and not counts:
            raise ValueError("mlm_smoothing > 0 needs token_counts in the prepared manifest")
        return cls(
            seed=masking["seed"],
            copies=masking["copies"],
            mask_prob=masking["mask_prob"],
            mask_token_frac=masking["mask_token_frac"],
            random_token_frac=masking["random_token_frac"],
            special_ids=np.array(sorted(set(special.values())), dtype=np.int64),
            mask_id=int(special["mask"]),
            vocab_size=int(manifest["vocab_size"]),
            weights=selection_weights(
                np.asarray(counts) if counts else None, masking["mlm_smoothing"]
            ),
        )

    def mask(self, ids: np.ndarray, length: int, seq_id: int, copy: int) -> MaskedSequence:
        return mask_sequence(
            ids,
            length,
            seed=self.seed,
            seq_id=seq_id,
            copy=copy,
            special_ids=self.special_ids,
            mask_id=self.mask_id,
            vocab_size=self.vocab_size,
            mask_prob=self.mask_prob,
            mask_token_frac=self.mask_token_frac,
            random_token_frac=self.random_token_frac,
            weights=self.weights,
        )


def length_buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (stable sort, so deterministic): padding
    to the longest row of a batch then wastes little compute."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def compute_shard(
    model: Any,
    table: pa.Table,
    masking: MaskingParams,
    sparsity: dict[str, Any],
    batch_size: int,
    pad_id: int,
    progress: Any = None,
) -> tuple[pa.Table, dict[str, Any]]:
    """Mask every (row, copy) of a prepared shard, run the teacher, return the cache table.

    The output depends only on the shard, the model and the configs (fixed batch composition,
    per-sequence random streams), so a rerun of the same shard writes the same bytes.
    """
    t0 = time.perf_counter()
    seq_ids = table.column("seq_id").to_numpy()
    lengths = table.column("length").to_numpy().astype(np.int64)
    ids = shards.input_ids_matrix(table)
    entries: list[tuple[int, int, MaskedSequence]] = []  # (seq_id, copy, masked)
    for i, sid in enumerate(seq_ids):
        for c in range(masking.copies):
            entries.append((int(sid), c, masking.mask(ids[i], int(lengths[i]), int(sid), c)))
    k = sparsity["k"]
    sampled = sparsity["mode"] == "sampled"
    results: list[SparseLogits | None] = [None] * len(entries)
    entry_len = np.array([len(m.input_ids) for _, _, m in entries], dtype=np.int64)
    n_tokens = int(lengths.sum())
    for batch in length_buckets(entry_len, batch_size):
        width = int(entry_len[batch].max()) if len(batch) else 0
        x = torch.full((len(batch), width), pad_id, dtype=torch.long)
        am = torch.zeros((len(batch), width), dtype=torch.long)
        pos = torch.zeros((len(batch), width), dtype=torch.bool)
        uni = []
        for j, e in enumerate(batch):
            sid, c, m = entries[e]
            x[j, : len(m.input_ids)] = torch.from_numpy(m.input_ids)
            am[j, : len(m.input_ids)] = 1
            pos[j, torch.from_numpy(m.positions)] = True
            if sampled:
                uni.append(rng_for(masking.seed, sid, c, stream=1).random((len(m.positions), k)))
        uniforms = torch.from_numpy(np.concatenate(uni)) if sampled else None
        out = teacher_logits_batch(model, x, am, pos, sparsity, uniforms)
        start = 0
        for e in batch:
            n = len(entries[e][2].positions)
            results[e] = SparseLogits(
                out.ids[start : start + n],
                out.logprobs[start : start + n],
                None if out.counts is None else out.counts[start : start + n],
            )
            start += n
        if progress is not None:
            progress(len(batch))
    rows: dict[str, list] = {
        "seq_id": [e[0] for e in entries],
        "copy": [e[1] for e in entries],
        "input_ids": [e[2].input_ids for e in entries],
        "positions": [e[2].positions for e in entries],
        "labels": [e[2].labels for e in entries],
        "target_ids": [r.ids.numpy().reshape(-1) for r in results],
        "target_logprobs": [r.logprobs.numpy().reshape(-1) for r in results],
    }
    if sampled:
        rows["target_counts"] = [r.counts.numpy().reshape(-1) for r in results]
    out_table = cache_format.rows_to_table(rows, masking.vocab_size, sampled)
    n_pos = int(sum(len(e[2].positions) for e in entries))
    stats = {
        "rows": len(entries),
        "sequences": len(seq_ids),
        "tokens": n_tokens,
        "positions": n_pos,
        "seconds": time.perf_counter() - t0,
    }
    return out_table, stats
