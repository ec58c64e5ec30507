"""Experiment: dynamic masking from a static teacher cache — cache bytes vs student quality.
Decision it backs: the packaged logits configs' `copies` (docs/stages/teacher-logits.md, "Dynamic masking").

    python scripts/experiments/dynamic_masking.py            # <= 10 min on 2 shared cores; prints one table

Epoch e of a cached distil run reads masked copy ``e % copies`` of every sequence
(``TeacherCache.copy_for``), so ``copies`` C gives C differently masked views of the data over
C epochs, at C times the cache bytes. This script measures what that buys: on real text (gensim's
Lee news, ``bench/prepare_text.py``, the packaged tokenizer) it adapts the packaged teacher's
MLM head briefly (``distil teacher adapt``'s code), builds caches with copies 1, 2 and 4
(``build_in_process``, the stage's own steps), trains the same student (``DistilRecipe``
in-process, world 1, cached mode, ``alpha_cos`` 0, same seed) for the same number of steps
spanning ``--epochs`` epochs on each, and reports bytes per token and the student's held-out
MLM accuracy, top-1 agreement and KL to the teacher (copy 0 of the held-out split, the same
positions for every C). Intermediate outputs under ``--work`` are reused on a rerun.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distil import storage  # noqa: E402
from distil.packaged import PACKAGED_TEACHER  # noqa: E402

ADAPT_HELDOUT = 0.1  # the teacher's own held-out split (its adaptation is reused across runs)


def prepared(work: str, seqs: int, seq_len: int) -> str:
    import prepare_text

    url = f"{work}/prepared"
    if not storage.is_committed(url):
        prepare_text.main(
            ["--output", url, "--seq-len", str(seq_len), "--max-sequences", str(seqs)]
            + ["--rows-per-shard", str(max(1, seqs // 2))]
        )
    return url


def teacher(work: str, data: str, tokens: int) -> str:
    from distil.teacher.adapt import adapt
    from distil.teacher.config import AdaptConfig

    url = f"{work}/teacher"
    cfg = AdaptConfig(
        input=data,
        output=url,
        teacher=PACKAGED_TEACHER,
        token_budget=tokens,
        max_seq_len=64,
        heldout_fraction=ADAPT_HELDOUT,
    )
    m = adapt(cfg)
    print(f"teacher: packaged MiniLM + MLM head adapted on {tokens} tokens -> {m.get('output')}")
    return url


def cache(work: str, data: str, teacher_url: str, copies: int) -> tuple[str, dict, float]:
    from distil.teacher.build import build_in_process, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.load import load_teacher

    cfg = LogitsConfig(
        input=data,
        cache_root=f"{work}/caches",
        teacher=teacher_url,
        copies=copies,
        batch_size=32,
        row_group_rows=64,
    )
    plan = plan_cache(cfg, load_teacher(teacher_url).weights_sha256)
    t0 = time.perf_counter()
    if not plan.committed:
        build_in_process(plan, cfg)
    return plan.url, storage.read_manifest(plan.url), time.perf_counter() - t0


def train(
    work: str, cache_url: str, teacher_url: str, copies: int, steps: int, bs: int, heldout: float
) -> dict:
    from distil.train.config import DistilConfig
    from distil.train.recipe import DistilRecipe

    cfg = DistilConfig(
        mode="cached",
        cache=cache_url,
        teacher=teacher_url,
        output=f"{work}/student-c{copies}-s{steps}",
        storage_path=f"{work}/runs",
        student_layers=2,
        alpha_cos=0.0,
        batch_size=bs,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        lr=5e-4,
        eval_every=steps,
        eval_batches=1000,
        log_every=steps,
        heldout_fraction=heldout,
        num_workers=1,
        seed=0,
    )
    r = DistilRecipe(cfg, work_dir=f"{work}/work-c{copies}-s{steps}")
    r.setup(None)
    t0 = time.perf_counter()
    r.train()
    return {**r.history[-1], **r.data.state(), "seconds": time.perf_counter() - t0}


def teacher_accuracy(cache_url: str, heldout: float) -> float:
    """The teacher's own held-out MLM accuracy (its top-1 cached id vs the label), copy 0."""
    from distil.data.readers.stream import ReadPosition
    from distil.teacher.cache import TeacherCache

    hit = n = 0
    position = ReadPosition(split="heldout", heldout_fraction=heldout)
    for b in TeacherCache(cache_url).iter_batches(256, position):
        labels = b["labels"][b["labels"] != -100]
        hit += int((b["target_ids"][:, 0] == labels).sum())
        n += len(labels)
    return hit / max(n, 1)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/distil-bench-dynmask")
    ap.add_argument("--seqs", type=int, default=192, help="sequences of --seq-len tokens")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--adapt-tokens", type=int, default=15_000)
    ap.add_argument("--epochs", type=int, default=4, help="epochs every run spans (>= 4)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--copies", default="1,2,4")
    ap.add_argument("--heldout", type=float, default=0.1, help="distil held-out fraction")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("distil.teacher.compat").setLevel(logging.ERROR)  # no recorded identity
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    data = prepared(args.work, args.seqs, args.seq_len)
    t_url = teacher(args.work, data, args.adapt_tokens)
    rows = []
    for c in [int(x) for x in args.copies.split(",")]:
        url, m, build_s = cache(args.work, data, t_url, c)
        from distil.data.readers.stream import ReadPosition
        from distil.teacher.cache import TeacherCache

        per_epoch = TeacherCache(url).num_batches(
            args.batch_size, ReadPosition(split="train", heldout_fraction=args.heldout)
        )
        steps = per_epoch * args.epochs
        ev = train(args.work, url, t_url, c, steps, args.batch_size, args.heldout)
        rows.append(
            {
                "copies": c,
                "bytes": m["bytes"],
                "bytes_per_token": m["bytes_per_token"],
                "target_bytes_per_token": m["target_bytes"] / m["tokens"],
                "build_s": build_s,
                "steps": steps,
                "acc": ev["eval_mlm_accuracy"],
                "agree": ev["eval_teacher_agreement"],
                "kl": ev["eval_kl_to_teacher"],
                "positions": ev["eval_positions"],
                "train_s": ev["seconds"],
            }
        )
        print(f"copies {c}: {rows[-1]}", flush=True)
    acc_t = teacher_accuracy(url, args.heldout)
    print(
        f"\n{args.seqs} sequences x {args.seq_len} tokens (Lee news), held-out {args.heldout:.0%} "
        f"(copy 0, {rows[0]['positions']} positions); student 2 layers, batch "
        f"{args.batch_size}, {rows[0]['steps']} steps = {args.epochs} epochs; teacher held-out "
        f"MLM accuracy {acc_t:.3f}\n"
    )
    head = "| copies | cache B/token | target B/token | student MLM acc | top-1 agree | KL(T‖S) |"
    print(head)
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['copies']} | {r['bytes_per_token']:.1f} | {r['target_bytes_per_token']:.1f} | "
            f"{r['acc']:.3f} | {r['agree']:.3f} | {r['kl']:.3f} |"
        )
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    return rows


if __name__ == "__main__":
    main()
