"""Teacher logits for the target positions, without any engine (Ray or not).

The masked-LM head is a [H, V] projection (V = 30,522): running it on every token of a batch
and throwing away 85% of the rows costs more than the encoder of a small teacher. So we run the
encoder, gather the hidden states of the target positions only (the masked ones, or every
non-pad one with ``kd_positions: all``), and apply the head to those (in chunks, so even the
kept rows never need one huge [N, V] tensor). With a sketch matrix it also returns the int8
sketch of every non-pad token's last hidden state (``distil.teacher.sketch``).
"""

from __future__ import annotations

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


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: through pinned memory on CUDA, so the copy is async."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _pack(tensors: list[torch.Tensor | None]) -> tuple[torch.Tensor, list]:
    """``tensors`` as one uint8 buffer (widest dtype first, so every slice of it stays aligned
    for its dtype) and the layout ``_unpack`` needs to view them back."""
    real = [i for i, t in enumerate(tensors) if t is not None]
    order = sorted(real, key=lambda i: -tensors[i].element_size())
    flat = torch.cat([tensors[i].contiguous().reshape(-1).view(torch.uint8) for i in order])
    layout, offset = [None] * len(tensors), 0
    for i in order:
        t = tensors[i]
        n = t.numel() * t.element_size()
        layout[i] = (offset, n, t.dtype, tuple(t.shape))
        offset += n
    return flat, layout


def _unpack(flat: torch.Tensor, layout: list) -> list[torch.Tensor | None]:
    return [
        None
        if where is None
        else flat[where[0] : where[0] + where[1]].view(where[2]).reshape(where[3])
        for where in layout
    ]


def _download(tensors: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Device tensors on the host in one copy: packed into one byte buffer on the device,
    copied into pinned memory, waited for once and viewed back (instead of one blocking
    pageable copy per tensor)."""
    first = next((t for t in tensors if t is not None), None)
    if first is None or first.device.type != "cuda":
        return [None if t is None else t.cpu() for t in tensors]
    flat, layout = _pack(tensors)
    host = torch.empty(flat.shape, dtype=torch.uint8, pin_memory=True)
    host.copy_(flat, non_blocking=True)
    torch.cuda.current_stream(flat.device).synchronize()
    return _unpack(host, layout)


@torch.inference_mode()
def teacher_logits_batch(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    sparsity: dict[str, Any],
    uniforms: torch.Tensor | None = None,
    sketch: torch.Tensor | None = None,
    rows: int | None = None,
) -> SparseLogits:
    """Sparse teacher targets at ``positions`` (bool [B, L]) of one batch, row-major order.

    ``sparsity`` is ``{"mode": "topk"|"sampled", "k": K, "temperature": T, "kd_temperatures":
    [...]}``; sampled mode needs ``uniforms`` [N, K] (one row per selected position, same order).
    ``sketch``: the projection ``R`` [d, H]; then ``.sketch`` holds the int8 ``R @ h`` of every
    non-pad token (``attention_mask``), row-major. ``rows``: how many leading rows are real;
    the others only pad the batch to a fixed shape (a compiled encoder), attended in full, so
    they never decide whether the encoder needs a mask.

    The model runs in its own dtype (the stage holds bf16 weights on CUDA), without autocast.
    The inputs are host tensors, and what depends on them is worked out on the host: the rows
    the head runs on, whether any real row is padded (if none, no mask at all: SDPA's flash
    kernel, and no ``.all()`` check of a 2-D mask), the non-pad tokens. So nothing waits for
    the device until the one copy of the results back.
    """
    from distil.student.model import encoder_mask

    encoder, head = mlm_parts(model)
    device = next(model.parameters()).device
    input_ids, attention_mask, positions = (t.cpu() for t in (input_ids, attention_mask, positions))
    real = attention_mask[: input_ids.shape[0] if rows is None else rows]
    unpadded = bool(real.all())
    target_rows = torch.from_numpy(np.flatnonzero(positions.numpy().reshape(-1)))
    mask = None if unpadded else encoder_mask(model, _upload(attention_mask, device), False)
    hidden = encoder(input_ids=_upload(input_ids, device), attention_mask=mask).last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])
    kept = flat.index_select(0, _upload(target_rows, device))  # [N, H], row-major
    sketched = None
    if sketch is not None:
        tokens = torch.from_numpy(np.flatnonzero(real.numpy().reshape(-1)))
        sketched = quantize(project(flat.index_select(0, _upload(tokens, device)), sketch))
    if uniforms is not None:
        uniforms = _upload(uniforms, device)
    parts = []
    for start in range(0, kept.shape[0], HEAD_CHUNK):
        logits = head(kept[start : start + HEAD_CHUNK])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        u = None if uniforms is None else uniforms[start : start + HEAD_CHUNK]
        parts.append(sparsify(logprobs, sparsity, u))
    if not parts:
        k = sparsity["k"]
        empty = torch.zeros((0, k), dtype=torch.long)
        counts = torch.zeros((0, k)) if sparsity["mode"] == "sampled" else None
        logz = torch.zeros((0, len(stored_temperatures(sparsity))))
        return SparseLogits(empty, torch.zeros((0, k)), counts, logz, _download([sketched])[0])
    ids, logprobs, counts, logz, sketched = _download(
        [
            torch.cat([p.ids for p in parts]),
            torch.cat([p.logprobs for p in parts]),
            None if parts[0].counts is None else torch.cat([p.counts for p in parts]),
            torch.cat([p.log_partition for p in parts]),
            sketched,
        ]
    )
    return SparseLogits(ids, logprobs, counts, logz, sketched)


def compile_widths(seq_len: int) -> list[int]:
    """The fixed batch widths a compiled encoder sees (``LogitsConfig.compile``): a quarter, a
    half and all of ``seq_len`` (rounded up to multiples of 8), so three graphs (each with and
    without a mask) serve every batch of the job."""
    return sorted({min(seq_len, -(-seq_len * f // 4 // 8) * 8) for f in (1, 2, 4)})


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
    widths: list[int] | None = None,
) -> pa.Table:
    """The full cache table of one unit of work: the teacher's sparse targets at every masked
    position of ``masked`` (``cache_format.masked_table``), or at every non-pad one when
    ``sparsity["kd_positions"] == "all"``, appended as the target columns; with ``sketch``
    (``R`` [d, H]) also the hidden-state sketch of every non-pad token.

    Batches are a function of the unit alone (length buckets of its rows), and the sampling
    uniforms of a position come from its own ``(seed, seq_id, copy, position)`` stream, so
    the same unit always gives the same bytes. ``widths`` (a compiled encoder's
    ``compile_widths``): every batch padded to ``batch_size`` rows and the smallest of these
    widths that fits it, so the encoder only ever sees those shapes.
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
        attention = valid.astype(np.int64)
        if widths is not None:  # a fixed shape; the padding rows attend in full (no mask)
            width = next(w for w in widths if w >= valid.shape[1])
            attention = np.ones((batch_size, width), np.int64)
            attention[: len(batch)] = 0
            attention[: len(batch), : valid.shape[1]] = valid
        x = np.full(attention.shape, pad_id, dtype=np.int64)
        x[: len(batch), : valid.shape[1]][valid] = id_flat[flat]
        dest, pvalid = _ragged(pos_off, batch)  # unit-order index of each position, batch order
        pos = np.zeros(attention.shape, dtype=bool)
        pos[np.nonzero(pvalid)[0], pos_flat[dest]] = True
        uniforms = None
        if sampled:
            row_of = np.searchsorted(pos_off, dest, side="right") - 1
            u = sample_uniforms(masking.seed, seq_ids[row_of], copies[row_of], pos_flat[dest], k)
            uniforms = torch.from_numpy(u)
        out = teacher_logits_batch(
            model,
            torch.from_numpy(x),
            torch.from_numpy(attention),
            torch.from_numpy(pos),
            sparsity,
            uniforms,
            sketch,
            rows=len(batch),
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
