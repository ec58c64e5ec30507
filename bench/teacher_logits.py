"""Bench: this stage's teacher batch function vs a plain Hugging Face loop, same teacher/data.

    python bench/teacher_logits.py                               # CPU, MiniLM-sized, ~1-2 min
    python bench/teacher_logits.py --device cuda --size bert-base --seqs 4096 --batch-size 256

(a) ``distil.teacher.logits.teacher_logits_batch``: encoder, then the MLM head only at the
    masked positions, top-k in place (on GPU bf16 weights, no autocast, host batches in and
    one copy of the results out, as the stage runs it);
(b) baseline: ``BertForMaskedLM(input_ids, attention_mask).logits`` in fp32 over every position
    ([B, L, V]), log-softmax, gather the masked rows, top-k.
Both see the same masked sequences (real text: gensim's lee_background news, tokenized with the
packaged tokenizer) in the same batches. Prints seq/s, tokens/s, the speed-up (a)/(b), bytes per
token of the written cache vs dense fp16 logits, and on CUDA the model FLOPs utilisation (MFU).
Weights are random unless --teacher is given: speed does not depend on them.

Also printed: masking rows/s of the stage's vectorised ``mask_batch`` against the per-row loop
it replaced (one PCG64 generator and ``choice`` per sequence, kept here as the named baseline),
same sequences, same process. Peak RSS at N vs 10 N sequences:
``scripts/experiments/teacher_logits_memory.py``.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil.data import shards  # noqa: E402
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402
from distil.teacher import cache as cache_format  # noqa: E402
from distil.teacher.build import target_bytes  # noqa: E402
from distil.teacher.logits import MaskingParams, teacher_logits_batch  # noqa: E402
from distil.teacher.masking import MaskedSequence  # noqa: E402
from distil.training import forward_flops, mfu, peak_bf16_tflops  # noqa: E402

SIZES = {  # (layers, hidden, heads, intermediate)
    "tiny": (2, 128, 2, 512),
    "minilm": (6, 384, 12, 1536),
    "bert-base": (12, 768, 12, 3072),
}


def real_sequences(n: int, seq_len: int, tokenizer) -> np.ndarray:
    from prepare_text import lee_documents

    body = seq_len - 2
    stream: list[int] = []
    for ids in tokenizer(lee_documents(), add_special_tokens=False)["input_ids"]:
        stream += [*ids, tokenizer.sep_token_id]
    rows = len(stream) // body
    arr = np.asarray(stream[: rows * body]).reshape(rows, body)
    arr = np.tile(arr, (-(-n // rows), 1))[:n]
    cls = np.full((n, 1), tokenizer.cls_token_id)
    sep = np.full((n, 1), tokenizer.sep_token_id)
    return np.concatenate([cls, arr, sep], axis=1)


def build_model(args, device: torch.device):
    from transformers import BertConfig, BertForMaskedLM

    if args.teacher:
        from distil.teacher.load import load_teacher

        return load_teacher(args.teacher).model.to(device).eval()
    layers, hidden, heads, inter = SIZES[args.size]
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
    )
    return BertForMaskedLM(cfg).to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def baseline_batch(model, x, am, pos, k):
    """Plain HF: full [B, L, V] fp32 logits, then log-softmax/top-k at the masked rows."""
    logits = model(input_ids=x, attention_mask=am).logits
    logprobs = torch.log_softmax(logits[pos].float(), -1)
    return torch.topk(logprobs, k, -1)


def per_row_mask_v1(p: MaskingParams, ids: np.ndarray, length: int, seq_id: int, copy: int):
    """The per-row masking the stage used before (masking version 1), the baseline: a PCG64
    generator per (seed, seq_id, copy) and ``Generator.choice`` over the candidates."""
    ids = np.asarray(ids[:length], dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([p.seed, seq_id & 0xFFFFFFFF, seq_id >> 32, copy, 0]))
    candidates = np.flatnonzero(~np.isin(ids, p.special_ids))
    n_mask = max(1, int(round(p.mask_prob * len(candidates)))) if len(candidates) else 0
    w = None if p.weights is None else p.weights[ids[candidates]]
    chosen = rng.choice(candidates, n_mask, replace=False, p=None if w is None else w / w.sum())
    positions = np.sort(chosen)
    u, random_ids = rng.random(n_mask), rng.integers(0, p.vocab_size, size=n_mask)
    masked = ids.copy()
    masked[positions[u < p.mask_token_frac]] = p.mask_id
    rand = (u >= p.mask_token_frac) & (u < p.mask_token_frac + p.random_token_frac)
    masked[positions[rand]] = random_ids[rand]
    return MaskedSequence(masked, positions, ids[positions])


def masking_rates(masking: MaskingParams, seqs: np.ndarray, rows: int = 20000) -> None:
    """Masking rows/s: vectorised ``mask_batch`` (units of 1024 rows) vs the per-row loop."""
    ids = np.tile(seqs, (-(-rows // len(seqs)), 1))[:rows]
    lengths = np.full(rows, ids.shape[1])
    seq_ids = np.arange(rows)
    t0 = time.perf_counter()
    for lo in range(0, rows, 1024):
        masking.mask_batch(ids[lo : lo + 1024], lengths[lo : lo + 1024], seq_ids[lo : lo + 1024], 0)
    vec = time.perf_counter() - t0
    n_old = rows // 10
    t0 = time.perf_counter()
    for i in range(n_old):
        per_row_mask_v1(masking, ids[i], int(lengths[i]), i, 0)
    old = (time.perf_counter() - t0) * rows / n_old
    print(
        f"masking: vectorised mask_batch {rows / vec:,.0f} rows/s vs per-row loop (v1 baseline) "
        f"{rows / old:,.0f} rows/s -> {old / vec:.0f}x  (seq_len {ids.shape[1]}, 1 thread)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", default="minilm", choices=sorted(SIZES))
    ap.add_argument("--teacher", default=None, help="a real checkpoint instead of random weights")
    ap.add_argument("--seqs", type=int, default=64, help="sequences per measured pass")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="for MFU (default: by name)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_ref(PACKAGED_TEACHER))
    seqs = real_sequences(args.seqs, args.seq_len, tok)
    manifest = {
        "special_ids": {
            "cls": tok.cls_token_id,
            "sep": tok.sep_token_id,
            "pad": tok.pad_token_id,
            "mask": tok.mask_token_id,
            "unk": tok.unk_token_id,
        },
        "vocab_size": tok.vocab_size,
    }
    masking = MaskingParams.from_config(
        {
            "seed": 0,
            "copies": 1,
            "mask_prob": 0.15,
            "mask_token_frac": 0.8,
            "random_token_frac": 0.1,
            "mlm_smoothing": 0.0,
        },
        manifest,
    )
    masked = [masking.mask(s, args.seq_len, i, 0) for i, s in enumerate(seqs)]
    masking_rates(masking, seqs)
    batches = []  # on the host, as the stage hands them to teacher_logits_batch
    for start in range(0, len(masked), args.batch_size):
        part = masked[start : start + args.batch_size]
        x = torch.from_numpy(np.stack([m.input_ids for m in part]))
        am = torch.ones_like(x)
        pos = torch.zeros_like(x, dtype=torch.bool)
        for j, m in enumerate(part):
            pos[j, torch.from_numpy(m.positions)] = True
        batches.append((x, am, pos))
    on_device = [tuple(t.to(device) for t in b) for b in batches]  # the baseline's
    model = build_model(args, device)
    # the stage's teacher actors hold bf16 weights on CUDA
    stage_model = copy.deepcopy(model).to(torch.bfloat16) if device.type == "cuda" else model
    spec = {"mode": "topk", "k": args.k, "kd_temperatures": [1.0, 2.0]}  # as logits/default
    tokens = int(sum(int(b[1].sum()) for b in batches))
    positions = int(sum(int(b[2].sum()) for b in batches))
    print(
        f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, "
        f"{args.threads} thread(s)) size={args.size} params={sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"seqs={len(seqs)} seq_len={args.seq_len} batch={args.batch_size} k={args.k} "
        f"masked positions={positions}"
    )

    def timed(fn, inputs) -> float:
        fn(*inputs[0])  # warm-up (allocator, kernels)
        sync(device)
        t0 = time.perf_counter()
        for b in inputs:
            fn(*b)
        sync(device)
        return time.perf_counter() - t0

    ours = timed(lambda x, am, pos: teacher_logits_batch(stage_model, x, am, pos, spec), batches)
    base = timed(lambda x, am, pos: baseline_batch(model, x, am, pos, args.k), on_device)
    # agreement of the two on a batch (bf16 on GPU can flip near-ties)
    a = teacher_logits_batch(stage_model, *batches[0], spec)
    b = baseline_batch(model, *on_device[0], args.k)
    agree = float((a.ids[:, 0] == b.indices[:, 0].cpu()).float().mean())

    for name, secs in (
        ("(a) distil teacher_logits_batch", ours),
        ("(b) plain HF fp32 full logits", base),
    ):
        print(
            f"{name:34s} {len(seqs) / secs:9.1f} seq/s {tokens / secs:11.0f} tokens/s  ({secs:.2f}s)"
        )
    print(f"speed-up (a)/(b): {base / ours:.2f}x   top-1 agreement: {agree:.3f}")

    # bytes per token of the cache table (a) writes, vs dense fp16 logits for every token
    out = teacher_logits_batch(stage_model, *batches[0], spec)
    part = masked[: args.batch_size]
    n = len(part)
    mb = masking.mask_batch(seqs[:n], np.full(n, args.seq_len), np.arange(n), 0)
    table = cache_format.masked_table(
        np.arange(n), np.zeros(n), np.full(n, args.seq_len), mb, 30522
    )
    buf = io.BytesIO()
    shards.write_table(cache_format.with_targets(table, out, 30522), buf)
    start = out.num_positions
    part_tokens = sum(len(m.input_ids) for m in part)
    per_position = target_bytes(buf.getvalue()) / start
    ours_bpt = len(buf.getvalue()) / part_tokens
    dense_bpt = 2 * model.config.vocab_size
    print(
        f"bytes/token: (a) cache {ours_bpt:.1f} (masked input + targets; sparse targets "
        f"{per_position:.1f} B per masked position) vs dense fp16 logits {dense_bpt} "
        f"-> {dense_bpt / ours_bpt:.0f}x smaller"
    )
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or peak_bf16_tflops(name)
        tokens = len(seqs) * args.seq_len
        flops_a = forward_flops(model.config, tokens, positions, args.seq_len)
        flops_b = forward_flops(model.config, tokens, tokens, args.seq_len)
        for label, fl, secs in (("(a)", flops_a, ours), ("(b)", flops_b, base)):
            util = mfu(fl, secs, peak)
            share = (
                f"MFU {util:.1%} of {peak:.0f} TFLOP/s bf16"
                if util is not None
                else "MFU: pass --peak-tflops"
            )
            print(f"{label} {fl / secs / 1e12:.1f} TFLOP/s achieved  {share}")


if __name__ == "__main__":
    main()
