"""Figures for the report that no job computes: the teacher-vs-student comparison (parameters, size
on disk, CPU latency, accuracy) and the score histogram.

They are measured by the demo driver after the run, from the run's own committed artifacts, so the
comparison holds for exactly the models the run produced (reused or fresh) and needs nothing the
jobs did not already write.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from distil import storage


def _local_model(url: str) -> str:
    from distil.config import distil_home

    dest = os.path.join(distil_home(), "cache", "demo-models", storage.fingerprint(url))
    return storage.copy_dir_to_local(url, dest)


def _dir_bytes(url: str) -> int:
    fs, path = storage.get_fs(url)
    return sum(fs.size(p) for p in fs.find(path) if p.endswith((".safetensors", ".bin")))


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def cpu_latency_ms(model_dir: str, texts: list[str], warmup: int = 5) -> float:
    """Median wall time of one review through tokenizer + model, batch 1, one CPU thread."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        with torch.inference_mode():
            for i, text in enumerate(texts):
                t0 = time.perf_counter()
                model(**tok(text, truncation=True, max_length=256, return_tensors="pt"))
                if i >= warmup:
                    times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(threads)
    times.sort()
    return times[len(times) // 2]


def compare_models(
    teacher_mlm: str,
    student_mlm: str,
    teacher_clf: str,
    student_clf: str,
    student_agreement: float | None,
    reviews: str,
    student_kl: float | None = None,
    max_length: int = 128,
    ood_max_rows: int | None = None,
) -> dict[str, Any]:
    """Teacher vs student, every figure measured now or read from the run's own artifacts.

    ``reviews``: a review set from another source than the fine-tune's (no model trained on it):
    its first rows time the latency, all of it scores out-of-domain accuracy (``distil eval``'s
    ``evaluate_sentiment``). Agreement and KL are the distil run's final held-out eval (the same
    ``distil.quality.eval.mlm_metrics`` that ``distil eval`` runs). ``max_length``: the tokens the
    classifiers were fine-tuned on, which the out-of-domain reviews are truncated to as well.
    ``ood_max_rows``: score a seeded subset of that many out-of-domain rows (the tiny scale's
    budget); the report names the row count either way."""
    from safetensors import safe_open

    from distil.quality.eval import evaluate_sentiment

    texts = [
        json.loads(line)["text"]
        for line in storage.read_bytes(reviews).decode().splitlines()[:105]
        if line.strip()
    ]
    local = {k: _local_model(u) for k, u in (("teacher", teacher_clf), ("student", student_clf))}

    def params(d: str) -> int:
        with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
            return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118

    acc = {
        k: storage.read_manifest(u)["metrics"]["accuracy"]
        for k, u in (("teacher", teacher_clf), ("student", student_clf))
    }
    from distil.config import distil_home

    clfs = {"teacher": teacher_clf, "student": student_clf}
    models = os.path.join(distil_home(), "cache", "models")
    ood = evaluate_sentiment(
        clfs, {"ood": reviews}, "all", cache_dir=models, max_length=max_length,
        max_rows=ood_max_rows,
    )  # fmt: skip
    ood_acc = {k: v["ood"]["accuracy"] for k, v in ood.items()}
    ood_name = os.path.basename(reviews).removesuffix(".jsonl").replace("_", " ")
    rows = [
        ("parameters", params(local["teacher"]), params(local["student"])),
        ("size on disk (MB)", _dir_bytes(teacher_clf) / 1e6, _dir_bytes(student_clf) / 1e6),
        (
            "CPU latency per review (ms, batch 1, 1 thread)",
            cpu_latency_ms(local["teacher"], texts),
            cpu_latency_ms(local["student"], texts),
        ),
        ("MLM top-1 agreement with teacher (held-out)", 1.0, student_agreement),
        ("KL(teacher || student), held-out, top-k coarse", 0.0, student_kl),
        ("sentiment accuracy (movie snippets, validation)", acc["teacher"], acc["student"]),
        (
            f"sentiment accuracy ({ood_name}, out of domain, {ood['teacher']['ood']['rows']} rows)",
            ood_acc["teacher"],
            ood_acc["student"],
        ),
    ]
    out = []
    for metric, t, s in rows:
        ratio = (s / t) if (t and s is not None) else None
        out.append({"metric": metric, "teacher": t, "student": s, "student / teacher": ratio})
    kept = acc["student"] / acc["teacher"] if acc["teacher"] else None
    return {"rows": out, "sentiment_accuracy_kept": kept, "mlm_dirs": [teacher_mlm, student_mlm]}


def score_histogram(run_url: str, summary: dict[str, Any], bins: int = 20) -> dict[str, Any]:
    """Histogram of P(positive) per input file, read back through the run's manifest."""
    import numpy as np
    import pyarrow.parquet as pq

    counts: dict[str, np.ndarray] = {}
    edges = np.linspace(0, 1, bins + 1)
    for url in storage.committed_files(run_url, key="files"):
        fs, path = storage.arrow_filesystem(url)
        t = pq.read_table(path, filesystem=fs, columns=["probs", "source_file"])
        probs = t.column("probs").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
        sources = t.column("source_file").to_pylist()
        for src in sorted(set(sources)):
            mask = np.array([x == src for x in sources])
            name = os.path.basename(src)
            h, _ = np.histogram(probs[mask, -1], bins=edges)
            counts[name] = counts.get(name, np.zeros(bins, int)) + h
    return {
        "histogram": {
            "edges": edges.tolist(),
            "counts": {k: v.tolist() for k, v in counts.items()},
        },
        "rows": int(sum(v.sum() for v in counts.values())),
        "summary": {
            k: summary.get(k) for k in ("rows_in", "scored", "dead_letter", "teacher_agreement")
        },
    }
