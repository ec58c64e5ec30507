"""Teacher logits for the target positions, without any engine (Ray or not).

The masked-LM head is a [H, V] projection (V = 30,522): running it on every token of a batch
and throwing away 85% of the rows costs more than the encoder of a small teacher. So we run the
encoder, gather the hidden states of the target positions only (the masked ones, or every
non-pad one with ``kd_positions: all``), and apply the head to those (in chunks, so even the
kept rows never need one huge [N, V] tensor). With a sketch matrix it also returns the int8
sketch of every non-pad token's last hidden state (``distil.teacher.sketch``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from distil.teacher import cache_format
from distil.teacher.load import mlm_parts
from distil.teacher.masking import MaskingParams, sample_uniforms
from distil.teacher.sketch import project, quantize
from distil.teacher.sparse import SparseLogits, sparsify, stored_temperatures

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
    sketch: torch.Tensor | None = None,
) -> SparseLogits:
    """Sparse teacher targets at ``positions`` (bool [B, L]) of one batch, row-major order.

    ``sparsity`` is ``{"mode": "topk"|"sampled", "k": K, "temperature": T, "kd_temperatures":
    [...]}``; sampled mode needs ``uniforms`` [N, K] (one row per selected position, same order).
    ``sketch``: the projection ``R`` [d, H]; then ``.sketch`` holds the int8 ``R @ h`` of every
    non-pad token (``attention_mask``), row-major.
    """
    encoder, head = mlm_parts(model)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device, non_blocking=True)
    attention_mask = attention_mask.to(device, non_blocking=True)
    positions = positions.to(device, non_blocking=True)
    with autocast_for(device):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        kept = hidden[positions]  # [N, H], row-major over (batch, position)
    sketched = None
    if sketch is not None:
        sketched = quantize(project(hidden[attention_mask.bool()], sketch)).cpu()
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
        logz = torch.zeros((0, len(stored_temperatures(sparsity))))
        return SparseLogits(empty, torch.zeros((0, k)), counts, logz, sketched)
    return SparseLogits(
        ids=torch.cat([p.ids for p in parts]).cpu(),
        logprobs=torch.cat([p.logprobs for p in parts]).cpu(),
        counts=None if parts[0].counts is None else torch.cat([p.counts for p in parts]).cpu(),
        log_partition=torch.cat([p.log_partition for p in parts]).cpu(),
        sketch=sketched,
    )


def length_buckets(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (stable sort, so deterministic): padding
    to the longest row of a batch then wastes little compute."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _ragged(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, valid [len(rows), width]) of list rows ``rows`` of a list column with
    ``offsets``, laid out as a padded matrix (width = longest of them)."""
    starts, ends = offsets[rows], offsets[rows + 1]
    width = int((ends - starts).max()) if len(rows) else 0
    valid = np.arange(width)[None, :] < (ends - starts)[:, None]
    return (starts[:, None] + np.arange(width)[None, :])[valid], valid


def _offsets(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = table.column(name).combine_chunks()
    return col.offsets.to_numpy().astype(np.int64), col.values.to_numpy(zero_copy_only=False)


def compute_unit(
    model: Any,
    masked: pa.Table,
    masking: MaskingParams,
    sparsity: dict[str, Any],
    batch_size: int,
    pad_id: int,
    sketch: torch.Tensor | None = None,
) -> pa.Table:
    """The full cache table of one unit of work: the teacher's sparse targets at every masked
    position of ``masked`` (``cache_format.masked_table``), or at every non-pad one when
    ``sparsity["kd_positions"] == "all"``, appended as the target columns; with ``sketch``
    (``R`` [d, H]) also the hidden-state sketch of every non-pad token.

    Batches are a function of the unit alone (length buckets of its rows), and the sampling
    uniforms of a position come from its own ``(seed, seq_id, copy, position)`` stream, so
    the same unit always gives the same bytes.
    """
    id_off, id_flat = _offsets(masked, "input_ids")
    if sparsity.get("kd_positions", "masked") == "all":  # targets at 0..length-1 of each row
        pos_off = id_off
        pos_flat = np.arange(int(id_off[-1])) - np.repeat(id_off[:-1], np.diff(id_off))
    else:
        pos_off, pos_flat = _offsets(masked, "positions")
        pos_flat = pos_flat.astype(np.int64)
    seq_ids = masked.column("seq_id").to_numpy()
    copies = masked.column("copy").to_numpy().astype(np.int64)
    k = sparsity["k"]
    sampled = sparsity["mode"] == "sampled"
    n_pos = int(pos_off[-1])
    ids_out = torch.zeros((n_pos, k), dtype=torch.long)
    lp_out = torch.zeros((n_pos, k), dtype=torch.float32)
    counts_out = torch.zeros((n_pos, k), dtype=torch.float32) if sampled else None
    logz_out = torch.zeros((n_pos, len(stored_temperatures(sparsity))), dtype=torch.float32)
    sketch_out = None
    if sketch is not None:
        sketch_out = torch.zeros((int(id_off[-1]), sketch.shape[0]), dtype=torch.int8)
    for batch in length_buckets(np.diff(id_off), batch_size):
        flat, valid = _ragged(id_off, batch)
        x = np.full(valid.shape, pad_id, dtype=np.int64)
        x[valid] = id_flat[flat]
        dest, pvalid = _ragged(pos_off, batch)  # unit-order index of each position, batch order
        pos = np.zeros(valid.shape, dtype=bool)
        pos[np.nonzero(pvalid)[0], pos_flat[dest]] = True
        uniforms = None
        if sampled:
            row_of = np.searchsorted(pos_off, dest, side="right") - 1
            u = sample_uniforms(masking.seed, seq_ids[row_of], copies[row_of], pos_flat[dest], k)
            uniforms = torch.from_numpy(u)
        out = teacher_logits_batch(
            model,
            torch.from_numpy(x),
            torch.from_numpy(valid.astype(np.int64)),
            torch.from_numpy(pos),
            sparsity,
            uniforms,
            sketch,
        )
        if sketch_out is not None:  # non-pad tokens of the batch, row-major = unit order `flat`
            sketch_out[torch.from_numpy(flat)] = out.sketch
        idx = torch.from_numpy(dest)
        ids_out[idx], lp_out[idx], logz_out[idx] = out.ids, out.logprobs, out.log_partition
        if sampled:
            counts_out[idx] = out.counts
    return cache_format.with_targets(
        masked,
        SparseLogits(ids_out, lp_out, counts_out, logz_out, sketch_out),
        masking.vocab_size,
        sparsity.get("kd_positions", "masked"),
    )
