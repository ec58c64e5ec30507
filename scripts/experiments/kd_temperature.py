"""Experiment: which KD temperature a top-k teacher cache can teach at — the teacher's top-k mass
at each temperature the cache serves, and the student's held-out KL curve when distilled at each.
Decision it backs: the demo and scripts/quality.py distil at T = 1 (docs/stages/distil.md, "Which temperature a top-k cache can teach at").

    python scripts/experiments/kd_temperature.py                 # the demo's data and teacher: ~15 min on 2 cores
    python scripts/experiments/kd_temperature.py --cache C --teacher T --temperatures 1,2

KD over a top-k cache compares teacher and student on K + 1 buckets (the K cached ids and the
rest, ``losses.kd_topk``). At a temperature where the teacher's K ids hold little of its mass,
both distributions are almost all "rest" and the KD term carries almost no signal. This prints,
per temperature the cache serves, the mean / median / 10th percentile of the teacher's top-k
mass over the cache's positions; then trains the same student (``DistilRecipe`` in-process,
world 1, cached mode, the demo's distil budget: 100 steps of 32 sequences, lr 5e-4, 10 warm-up
steps, the demo's loss weights) once per ``--temperatures`` entry and prints the held-out
coarsened KL to the teacher (at T = 1, ``distil.quality.eval``) at every ``--eval-every`` steps: the
curve the demo report plots. Without ``--cache``/``--teacher`` the inputs are those of
``scripts/quality.py`` under ``--work`` (built as the demo builds them, reused when present).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def topk_mass(cache_url: str, max_batches: int = 64) -> dict[float, dict[str, float]]:
    """The teacher's probability mass on its cached K ids at each temperature the cache serves
    (``log p_T = log p_1 / T - c_T``), over up to ``max_batches`` batches of 64 rows."""
    from distil.data.readers.stream import ReadPosition
    from distil.losses import teacher_logprobs_at
    from distil.teacher.cache import TeacherCache

    cache = TeacherCache(cache_url)
    masses: dict[float, list[np.ndarray]] = {t: [] for t in cache.kd_temperatures}
    # the "train" split of a ~0 held-out fraction: (nearly) every row, in file order
    for i, batch in enumerate(
        cache.iter_batches(64, ReadPosition(heldout_fraction=1e-9), shuffle=False)
    ):
        if i >= max_batches:
            break
        for j, t in enumerate(cache.kd_temperatures):
            logz = batch["target_logz"][:, j] if t != 1.0 else None
            lp = teacher_logprobs_at(batch["target_logprobs"], t, logz)
            masses[t].append(lp.exp().nan_to_num(0.0).sum(-1).numpy())
    out = {}
    for t, parts in masses.items():
        m = np.concatenate(parts)
        out[t] = {
            "positions": int(m.size),
            "mean": float(m.mean()),
            "median": float(np.median(m)),
            "p10": float(np.percentile(m, 10)),
        }
    return out


def kl_curve(cache: str, teacher: str, temperature: float, args: argparse.Namespace) -> dict:
    """Distil the demo-sized student at ``temperature``; its held-out evaluations."""
    from distil.train.config import DistilConfig
    from distil.train.recipe import DistilRecipe

    with tempfile.TemporaryDirectory(prefix="distil-bench-kdt-") as tmp:
        cfg = DistilConfig(
            mode="cached",
            cache=cache,
            teacher=teacher,
            output=f"{tmp}/out",
            storage_path=f"{tmp}/runs",
            temperature=temperature,
            max_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_steps=args.warmup_steps,
            eval_every=args.eval_every,
            eval_batches=args.eval_batches,
            log_every=args.eval_every,
            num_workers=1,
            seed=args.seed,
        )
        recipe = DistilRecipe(cfg, work_dir=tmp)
        recipe.setup(None)
        t0 = time.perf_counter()
        metrics = recipe.train()
    return {"history": metrics["eval_history"], "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="committed teacher cache (default: scripts/quality.py's)")
    ap.add_argument("--teacher", help="the teacher the cache was built with")
    ap.add_argument("--work", default=".distil/quality", help="scripts/quality.py work dir")
    ap.add_argument("--temperatures", default="1,2", help="KD temperatures to distil at")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--eval-batches", type=int, default=4, help="the demo's 128 held-out rows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if bool(args.cache) != bool(args.teacher):
        ap.error("--cache and --teacher go together (the teacher the cache was built with)")
    cache, teacher = args.cache, args.teacher
    if cache is None:
        from distil.quality.ablation import shared_inputs
        from distil.quality.config import QualityConfig

        qc = QualityConfig(work=args.work, samples=str(Path(args.work).parent / "samples"))
        shared = shared_inputs(qc)
        cache, teacher = shared["cache"], shared["teacher"]

    mass = topk_mass(cache)
    print(f"cache {cache}")
    print("\n| T | teacher top-k mass: mean | median | 10th pct | positions |")
    print("|---|---|---|---|---|")
    for t, m in mass.items():
        print(
            f"| {t:g} | {m['mean']:.3f} | {m['median']:.3f} | {m['p10']:.3f} | {m['positions']} |"
        )

    temps = [float(t) for t in args.temperatures.split(",")]
    curves = {t: kl_curve(cache, teacher, t, args) for t in temps}
    steps = [h["step"] for h in curves[temps[0]]["history"]]
    print("\nheld-out KL to the teacher (coarsened, T = 1) at step:")
    print(
        "| KD T | " + " | ".join(str(s) for s in steps) + " | rises | top-1 agreement (last) | s |"
    )
    print("|---" * (len(steps) + 4) + "|")
    for t, c in curves.items():
        kl = [h["eval_kl_to_teacher"] for h in c["history"]]
        rises = sum(b > a for a, b in zip(kl, kl[1:], strict=False))
        agree = c["history"][-1]["eval_teacher_agreement"]
        cells = " | ".join(f"{v:.4f}" for v in kl)
        print(f"| {t:g} | {cells} | {rises} | {agree:.4f} | {c['seconds']:.0f} |")
    return {"mass": mass, "curves": curves}


if __name__ == "__main__":
    main()
