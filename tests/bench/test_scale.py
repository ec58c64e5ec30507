"""``bench/scale.py``'s own pieces (the measurement itself is the benchmark's job, not a test's):
the replicated corpus really differs per copy, a replicated cache reads as ``times`` × the rows,
and the worker sampler sees a child process's memory and CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scale.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_corpus_copies_are_perturbed_and_sized(scale, tmp_path):
    docs = [" ".join(f"w{i}_{j}" for j in range(200)) for i in range(5)]
    info = scale.write_corpus(
        docs, n_tokens=int(3_000 * scale.TOKENS_PER_WORD), out=tmp_path, file_words=700
    )
    rows = [json.loads(line) for f in sorted(tmp_path.glob("*.jsonl")) for line in f.open()]
    assert info["copies"] >= 3 and info["files"] == len(list(tmp_path.glob("*.jsonl"))) > 1
    assert 2_999 <= info["words"] < 3_000 + 200
    by_id = {r["id"]: r["text"] for r in rows}
    assert by_id["c0-d0"] == docs[0]  # copy 0 is the corpus itself
    assert by_id["c1-d0"] != docs[0] and by_id["c2-d0"] != by_id["c1-d0"]
    assert set(by_id["c1-d0"].split()) <= set(docs[0].split())  # perturbed, not invented


def test_replicated_cache_reads_times_the_rows(
    scale, tmp_path, real_tokenizer_dir, tiny_teacher_dir
):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teacher"))
    from teacher_helpers import build_cache, make_prepared

    from distil.data.readers.stream import ReadPosition
    from distil.teacher.cache import TeacherCache

    prepared = str(tmp_path / "prepared")
    make_prepared(prepared, real_tokenizer_dir)
    url = build_cache(prepared, str(tiny_teacher_dir), str(tmp_path / "c"))
    big = scale.replicate_cache(url, tmp_path / "big", 3)
    one, three = TeacherCache(url), TeacherCache(big)
    assert len(three) == 3 * len(one)
    rows = sum(len(b["input_ids"]) for b in three.iter_batches(8, ReadPosition(split="all")))
    assert rows == 3 * sum(
        len(b["input_ids"]) for b in one.iter_batches(8, ReadPosition(split="all"))
    )


def test_sampler_counts_a_worker_process(scale):
    code = (
        "import time; x = bytearray(64 << 20); t = time.process_time()\n"
        "while time.process_time() - t < 0.5: pass\ntime.sleep(0.5)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        sampler = scale.WorkerSampler(period_s=0.05, match=lambda cmd: "bytearray" in cmd)
        with sampler:
            child.wait(30)
    finally:
        child.kill()
    assert sampler.peak_rss_mb >= 60
    assert sampler.cpu_s >= 0.4
