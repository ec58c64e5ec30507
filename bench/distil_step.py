"""Student train steps/s: cached teacher targets vs an online teacher forward, same batch, same
device, no Ray. Baseline = online (the original DistilBERT scripts); prints the speed-up. The
cached step runs twice: as the recipe runs it (``DistillationObjective`` on a fixed-shape batch:
gathered target rows, on-device loss parts), and as it ran before (boolean-indexed rows of a
ragged batch, ``cached_ragged``): ``speedup_fixed_vs_ragged`` says what the change costs or saves
on this device.

    python bench/distil_step.py                                   # CPU, small sizes
    python bench/distil_step.py --device cuda --teacher-size bert-base --batch-size 64

With a 12 -> 6 layer student the ceiling is ~1.67x: a step costs ~3 student forwards (forward +
backward) = 18 layer-forwards, and the online teacher adds 12 more (30 / 18). ``--cache URL``
also times the ``TeacherCache`` reader alone (batches/s of one worker) to show whether the
reader keeps a training worker fed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distil import losses, training  # noqa: E402
from distil.student.model import MaskedLMForDistillation, build_student  # noqa: E402
from distil.train.data import BatchShape, fixed_shape, to_device  # noqa: E402
from distil.train.objective import DistillationObjective  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256),
    "small": dict(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024
    ),
    "bert-base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
}


def make_batch(b: int, seq_len: int, vocab: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (b, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    # the masking routine's count: round(15%) of the maskable positions of every row
    keys = torch.rand(b, seq_len, generator=g)
    keys[:, 0] = keys[:, -1] = 2.0  # [CLS] / [SEP] are never masked
    n_mask = round(0.15 * (seq_len - 2))
    chosen = torch.zeros(b, seq_len, dtype=torch.bool)
    chosen.scatter_(1, keys.argsort(1)[:, :n_mask], True)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked = ids.masked_fill(chosen, 103)
    mask = torch.ones_like(ids)
    return {
        k: v.to(device)
        for k, v in dict(input_ids=masked, attention_mask=mask, labels=labels).items()
    }


def time_steps(step, n: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--teacher-size", choices=list(SIZES), default="small")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--k", type=int, default=8, help="cached top-k")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only, as the recipe)")
    p.add_argument("--cache", default=None, help="also time TeacherCache.iter_batches on this URL")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertForMaskedLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=30522, **SIZES[args.teacher_size]))
    teacher = teacher.to(device).eval().requires_grad_(False)
    student = build_student(teacher).to(device).train()
    model = MaskedLMForDistillation(student)
    # the recipe's optimizer step (distil.training): AdamW, fused on CUDA, clipped at 5.0
    optim = training.optimization(
        student.named_parameters(),
        SimpleNamespace(lr=1e-4, weight_decay=0.01, max_grad_norm=5.0),
        warmup_steps=0,
        total_steps=10**9,
        device=device,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    batch = make_batch(args.batch_size, args.seq_len, 30522, device)
    labels = batch["labels"]
    masked_labels = labels[labels != -100]
    with torch.no_grad():  # the cache holds exactly this: top-k + log-partition at T = 2
        t_hidden = teacher.bert(batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        t_logp = torch.log_softmax(teacher.cls(t_hidden[labels != -100]), -1)
        top = torch.topk(t_logp, args.k)
        logz = torch.logsumexp(t_logp / 2.0, -1)
    # the same targets as a cache batch, in the fixed shape the recipe trains on
    host = {k: v.cpu() for k, v in batch.items()}
    host.update(
        target_ids=top.indices.cpu(),
        target_logprobs=top.values.float().cpu(),
        target_logz=torch.stack([torch.zeros_like(logz), logz], -1).cpu(),
    )
    slots = int((host["labels"] != -100).sum(1).max())
    # every row fills seq_len, as packed text does: the recipe then runs with no mask
    shape = BatchShape(args.batch_size, args.seq_len, slots, 0, unpadded=True)
    fixed = to_device(fixed_shape(host, shape), device)
    objective = DistillationObjective(
        model,
        alpha_ce=5.0,
        alpha_mlm=2.0,
        alpha_cos=0.0,
        temperature=2.0,
        kd_temperatures=[1.0, 2.0],
    )
    autocast = training.autocast(device, args.bf16)

    def optim_step(loss):
        loss.backward()
        optim.step()
        optim.optimizer.zero_grad(set_to_none=True)

    def cached_step():
        with autocast:
            loss, _ = objective(fixed)
        optim_step(loss)

    def cached_ragged_step():
        with autocast:
            logits, _ = model(batch["input_ids"], batch["attention_mask"], labels)
            loss = 5.0 * losses.kd_topk(logits, top.indices, top.values, 2.0, logz)
            loss = loss + 2.0 * losses.mlm_loss(logits, masked_labels)
        optim_step(loss)

    def online_step():
        with autocast:
            with torch.no_grad():
                th = teacher.bert(batch["input_ids"], attention_mask=batch["attention_mask"])[0]
                tl = teacher.cls(th[labels != -100])
            logits, hidden = model(batch["input_ids"], batch["attention_mask"], labels)
            loss = 5.0 * losses.kd_dense(logits, tl, 2.0)
            loss = loss + 2.0 * losses.mlm_loss(logits, masked_labels)
            loss = loss + 1.0 * losses.cosine_loss(hidden, th, batch["attention_mask"])
        optim_step(loss)

    # interleave two rounds so load drift on a shared machine hits both alike
    rates = {"online": [], "cached": [], "cached_ragged": []}
    for _ in range(2):
        rates["online"].append(time_steps(online_step, args.steps, args.warmup, device))
        rates["cached"].append(time_steps(cached_step, args.steps, args.warmup, device))
        rates["cached_ragged"].append(
            time_steps(cached_ragged_step, args.steps, args.warmup, device)
        )
    online, cached = max(rates["online"]), max(rates["cached"])
    ragged = max(rates["cached_ragged"])
    nt, ns = teacher.config.num_hidden_layers, student.config.num_hidden_layers
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "teacher": f"{args.teacher_size} ({nt} layers, hidden {teacher.config.hidden_size})",
        "student_layers": ns,
        "batch": [args.batch_size, args.seq_len],
        "online_steps_per_s": round(online, 3),
        "cached_steps_per_s": round(cached, 3),
        "cached_ragged_steps_per_s": round(ragged, 3),
        "speedup_cached_vs_online": round(cached / online, 3),
        "speedup_fixed_vs_ragged": round(cached / ragged, 3),
        "ideal_limit": round((3 * ns + nt) / (3 * ns), 3),
    }
    if args.cache:
        from distil.teacher.cache import TeacherCache

        cache = TeacherCache(args.cache)
        n, t0 = 0, time.perf_counter()
        for _ in cache.iter_batches(args.batch_size):
            n += 1
        result["cache_reader_batches_per_s"] = round(n / (time.perf_counter() - t0), 1)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
