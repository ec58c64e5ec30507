"""Is each stage's cost per worker flat in corpus size, and its I/O 1/world? One command:

    PYTHONPATH=. python bench/scale.py [--n-tokens 5000000] [--prepare-only] [--repeat 1]

Builds corpora of N and 10·N tokens from the real sample corpus (``distil data samples``),
replicated with a per-copy perturbation (words dropped and neighbours swapped by a seeded RNG,
so the tokens of each copy differ) into JSONL files of a fixed size — at any corpus size a
worker's unit of work is the same size, which is what "flat per worker" means. Each stage runs
on a fresh local Ray (2 CPUs) and on a fresh process for the loader:

* prepare (``distil.jobs.prepare.run``) at N/10, N and 10·N, without deduplication
  (``--no-dedup``) and with it (the default: ``prepare+dedup``, same corpora; its tokens are
  the input's, as read and tokenized, so "dedup cost" compares the two rates like for like;
  ``--repeat R`` runs each R times and keeps the median CPU-seconds and the largest peak RSS;
  ``--prepare-only`` stops after these rows);
* teacher logits with a tiny real BERT teacher (``distil.jobs.teacher_logits.run``) at N/100,
  N/10 and N — its full-vocabulary MLM head makes 10·N too slow for this budget on 2 cores, so
  its two compared sizes are a decade lower than the others';
* the distil data loader (``TeacherCache.iter_batches``, world 1) on the N/10 and N caches and a
  10·N cache made of the N cache's files listed ten times (the loader never looks at values).

Per run: peak RSS of the largest worker (``VmHWM`` from ``/proc``, sampled while the stage
runs), and tokens per CPU-second of all Ray workers + the driver, raw and "steady" (the
smallest run of the stage subtracted, which removes start-up: workers importing torch, model
load). On the N cache, copied to a SeaweedFS S3 server on loopback: bytes each rank's loader
reads from object storage at world 1, 2 and 4 (counted by ``storage.CountingFileSystem``),
against ``cache_bytes / world``; and a resume at 90% of the epoch: bytes read before the first
new batch, against the largest row group. Goals: RSS at 10x ≤ 1.25× 1x, steady tokens/CPU-s
within 15%, bytes per rank ≤ 1.1 × cache/world, resume ≤ one row group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distil import storage  # noqa: E402
from distil.data.config import PrepareConfig  # noqa: E402
from distil.data.readers import Document, list_inputs, read_records  # noqa: E402
from distil.data.readers.stream import ReadPosition  # noqa: E402
from distil.ops import procs  # noqa: E402
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402
from distil.samples.config import SamplesConfig  # noqa: E402

TOKENS_PER_WORD = 1.31  # the sample corpus's WordPiece tokens per whitespace word (docs/performance.md "Cost notes")


# ---------------------------------------------------------------- corpus


def sample_documents(samples: str) -> list[str]:
    corpus = storage.join(samples, "corpus")
    if not storage.is_committed(corpus):
        from distil.samples.corpus import run as build_samples

        print("building the sample corpus ...", flush=True)
        build_samples(SamplesConfig(output=samples))
    return [
        r.text
        for url in list_inputs([corpus]).urls
        for r in read_records(url, url, "auto")
        if isinstance(r, Document) and r.text.strip()
    ]


def perturb(words: list[str], rng: np.random.Generator, rate: float = 0.05) -> list[str]:
    """Drop ``rate`` of the words and swap ``rate`` of neighbouring pairs."""
    arr = np.asarray(words, dtype=object)
    arr = arr[rng.random(len(arr)) >= rate]
    swap = np.flatnonzero(rng.random(max(len(arr) - 1, 0)) < rate)
    arr[swap], arr[swap + 1] = arr[swap + 1], arr[swap].copy()
    return arr.tolist()


def write_corpus(docs: list[str], n_tokens: int, out: Path, file_words: int) -> dict[str, int]:
    """JSONL files of ~``file_words`` words until ~``n_tokens`` tokens: copy 0 is the sample
    corpus itself, copy c > 0 the same documents perturbed with seed c."""
    out.mkdir(parents=True, exist_ok=True)
    target_words = int(n_tokens / TOKENS_PER_WORD)
    words = files = copy = 0
    f, in_file = None, 0
    split = [d.split() for d in docs]
    while words < target_words:
        rng = np.random.default_rng(copy)
        for i, doc in enumerate(split):
            if words >= target_words:
                break
            text = " ".join(doc if copy == 0 else perturb(doc, rng))
            if f is None or in_file >= file_words:
                if f is not None:
                    f.close()
                f = open(out / f"part-{files:05d}.jsonl", "w")  # noqa: SIM115
                files, in_file = files + 1, 0
            f.write(json.dumps({"id": f"c{copy}-d{i}", "text": text}) + "\n")
            n = text.count(" ") + 1
            words, in_file = words + n, in_file + n
        copy += 1
    if f is not None:
        f.close()
    return {"words": words, "files": files, "copies": copy}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def tiny_teacher(out: Path) -> str:
    """A 2-layer, 32-wide real ``BertForMaskedLM`` with the real bert-base-uncased WordPiece
    vocabulary (the MLM head still spans all 30,522 ids): the stage's data path at full
    vocabulary, with a model small enough for 2 CPU cores."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok_dir = resolve_model_ref(PACKAGED_TEACHER)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertForMaskedLM(cfg).eval().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def replicate_cache(url: str, out: Path, times: int) -> str:
    """A cache whose manifest lists ``url``'s committed files ``times`` times (copied under new
    names): ``times`` × the rows and bytes, for a loader that does not look at the values."""
    manifest = storage.read_manifest(url)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for c in range(times):
        for entry, src in zip(manifest["files"], storage.committed_files(url), strict=True):
            name = f"r{c:03d}-{os.path.basename(src)}"
            shutil.copyfile(src, out / name)
            entries.append({**entry, "name": name} if isinstance(entry, dict) else name)
    manifest = {**manifest, "files": entries, "rows": manifest["rows"] * times}
    storage.commit(str(out), manifest)
    return str(out)


# ---------------------------------------------------------------- measurement


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in (procs.PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        stat = (procs.PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@dataclass
class WorkerSampler:
    """Peak RSS and CPU time of this process's Ray workers (``ray::…`` processes below it),
    polled from ``/proc`` on a thread; ``VmHWM`` is the kernel's own peak, so a short spike
    between polls is not missed, only a worker that exits between polls."""

    period_s: float = 0.2
    match: Callable[[str], bool] = lambda cmd: cmd.startswith("ray::")  # Ray workers' titles
    peak_kb: dict[int, int] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _poll(self) -> None:
        for pid in procs.with_descendants({os.getpid()}) - {os.getpid()}:
            if not self.match(procs.cmdline(pid)):
                continue
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), _status_kb(pid, "VmHWM"))
            self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_s(pid))

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            self._poll()

    def __enter__(self) -> WorkerSampler:
        self._cpu0 = time.process_time()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._poll()
        self._stop.set()
        self._thread.join()
        self.driver_cpu = time.process_time() - self._cpu0

    @property
    def peak_rss_mb(self) -> float:
        return max(self.peak_kb.values(), default=0) / 1024

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values()) + self.driver_cpu


def on_fresh_ray(fn, num_cpus: int) -> tuple[Any, WorkerSampler, float]:
    """``fn()`` on a new local Ray (workers start empty, so a peak is this stage's own)."""
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        t0 = time.perf_counter()
        with WorkerSampler() as sampler:
            out = fn()
        return out, sampler, time.perf_counter() - t0
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- stages


@dataclass
class Row:
    stage: str
    size: str
    tokens: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float

    @property
    def tokens_per_cpu_s(self) -> float:
        return self.tokens / max(self.cpu_s, 1e-9)


def run_prepare(
    corpus: Path, out: str, size: str, dedup: bool = False
) -> tuple[Row, dict[str, Any]]:
    """One prepare run; its tokens are the no-dedup run's packed tokens (``tokens``: the
    same input read and tokenized), so the two stages' rates compare like for like."""
    from distil.jobs.prepare import run

    cfg = PrepareConfig(
        input=str(corpus), output=out, num_workers=2, cpus_per_worker=1, dedup=dedup
    )
    summary, s, wall = on_fresh_ray(lambda: run(cfg), num_cpus=2)
    stage = "prepare+dedup" if dedup else "prepare"
    return Row(stage, size, summary["tokens"], wall, s.cpu_s, s.peak_rss_mb), summary


def repeated_prepare(
    times: int, corpus: Path, out: str, size: str, dedup: bool = False
) -> tuple[Row, dict[str, Any]]:
    """``run_prepare`` ``times`` times, each into an emptied ``out`` (the last one stays): the
    row with the median CPU-seconds (a shared machine's noise) and the largest peak RSS."""
    results = []
    for _ in range(times):
        shutil.rmtree(out, ignore_errors=True)
        results.append(run_prepare(corpus, out, size, dedup=dedup))
    results.sort(key=lambda r: r[0].cpu_s)
    row, summary = results[len(results) // 2]
    row.peak_rss_mb = max(r.peak_rss_mb for r, _ in results)
    return row, summary


def run_logits(prepared: str, cache_root: str, teacher: str, size: str, tokens: int):
    from distil.jobs.teacher_logits import run
    from distil.teacher.config import LogitsConfig

    cfg = LogitsConfig(
        input=prepared,
        cache_root=cache_root,
        teacher=teacher,
        device="cpu",
        num_actors=1,
        num_cpus_per_actor=1,
        torch_threads=1,
    )
    summary, s, wall = on_fresh_ray(lambda: run(cfg), num_cpus=2)
    return Row("logits", size, tokens, wall, s.cpu_s, s.peak_rss_mb), summary


def loader_pass(cache_url: str, batch_size: int) -> dict[str, Any]:
    """One epoch of the distil loader at world 1 (run in a fresh process: its VmHWM is the
    loader's own peak)."""
    from distil.teacher.cache import TeacherCache

    c0, t0 = time.process_time(), time.perf_counter()
    cache = TeacherCache(cache_url)
    tokens = batches = 0
    for batch in cache.iter_batches(batch_size, ReadPosition(split="all"), shuffle=True):
        tokens += int(batch["attention_mask"].sum())
        batches += 1
    return {
        "tokens": tokens,
        "batches": batches,
        "cpu_s": time.process_time() - c0,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": _status_kb(os.getpid(), "VmHWM") / 1024,
    }


def run_loader(cache_url: str, size: str, batch_size: int) -> Row:
    out = subprocess.run(
        [sys.executable, __file__, "--loader-pass", cache_url, "--batch-size", str(batch_size)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return Row("distil loader", size, r["tokens"], r["wall_s"], r["cpu_s"], r["peak_rss_mb"])


# ---------------------------------------------------------------- object-storage I/O


@contextlib.contextmanager
def s3_bucket(work: Path) -> Iterator[str]:
    """A SeaweedFS S3 server on loopback with a fresh bucket; ``AWS_*`` point at it meanwhile."""
    from distil.ops.seaweed import start_seaweed
    from distil.ops.stack import free_port_block

    base = free_port_block()
    server = start_seaweed(
        work / "seaweed",
        s3_port=base + 5,
        other_ports_base=base,
        bucket="scale",
        access_key="bench",
        secret_key="bench-secret",
        log_path=work / "weed.log",
    )
    try:
        with server.env_applied():
            yield "s3://scale"
    finally:
        server.proc.terminate()
        server.proc.wait(10)


def counting_cache(url: str):
    from distil.teacher.cache import TeacherCache

    fs = storage.CountingFileSystem(storage.get_fs(url)[0])
    return TeacherCache(url, fs=fs), fs


def io_report(cache_url: str, work: Path, batch_size: int) -> None:
    """Bytes each rank reads from S3 at world 1, 2, 4, and a resume at 90% of the epoch."""
    with s3_bucket(work) as bucket:
        url = storage.join(bucket, "cache-N")
        storage.upload_dir(cache_url, url)
        fs = storage.get_fs(url)[0]
        data_bytes = sum(fs.size(f) for f in storage.committed_files(url))
        print(f"object storage: N cache on S3, {data_bytes / 1e6:,.1f} MB in committed files")
        print(
            f"{'world':>5} {'rank':>4} {'batches':>8} {'MB read':>9} {'cache/world MB':>15} "
            f"{'ratio':>6}  goal <= 1.10"
        )
        worst = 0.0
        for world in (1, 2, 4):
            for rank in range(world):
                cache, counter = counting_cache(url)
                n = sum(1 for _ in cache.iter_batches(batch_size, ReadPosition(rank, world)))
                share = data_bytes / world
                ratio = counter.bytes_read / share
                worst = max(worst, ratio)
                print(
                    f"{world:>5} {rank:>4} {n:>8} {counter.bytes_read / 1e6:>9.2f} "
                    f"{share / 1e6:>15.2f} {ratio:>6.3f}"
                )
        print(f"bytes per rank: worst ratio {worst:.3f} ({'met' if worst <= 1.1 else 'MISSED'})")
        for window in (1, 2):
            cache, counter = counting_cache(url)
            plan = cache.plan()
            largest = max(
                sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
                for rg in (
                    md.row_group(i)
                    for md in cache.row_groups.metadata
                    for i in range(md.num_row_groups)
                )
            )
            index_bytes = counter.bytes_read
            total = -(-plan.rows // batch_size)
            start = int(0.9 * total)
            batches = cache.iter_batches(batch_size, start_batch=start, shuffle_window=window)
            next(batches)
            before = counter.bytes_read - index_bytes
            print(
                f"resume at batch {start}/{total} (shuffle_window {window}): "
                f"{before / 1e3:,.1f} kB read before the first new batch, largest row group "
                f"{largest / 1e3:,.1f} kB ({before / largest:.2f} row groups; goal <= 1: "
                f"{'met' if before <= largest else 'MISSED'}); footers + split index read "
                f"first: {index_bytes / 1e3:,.1f} kB"
            )
            batches.close()


# ---------------------------------------------------------------- report


def steady_rate(rows: list[Row], r: Row) -> float:
    """Tokens per CPU-second beyond the stage's smallest run (its start-up cost removed)."""
    base = next(x for x in rows if x.stage == r.stage)
    if base is r:
        return float("nan")
    return (r.tokens - base.tokens) / max(r.cpu_s - base.cpu_s, 1e-9)


def ratio_line(rows: list[Row], stage: str, small: str, big: str) -> str:
    n, n10 = (next(r for r in rows if r.stage == stage and r.size == s) for s in (small, big))
    rss = n10.peak_rss_mb / max(n.peak_rss_mb, 1e-9)
    tput = steady_rate(rows, n10) / max(steady_rate(rows, n), 1e-9)
    ok_rss, ok_tput = rss <= 1.25, abs(tput - 1) <= 0.15
    return (
        f"{stage:<14} {big} vs {small}: peak RSS {rss:5.2f} (goal <= 1.25: "
        f"{'met' if ok_rss else 'MISSED'})   steady tokens/CPU-s {tput:5.2f} "
        f"(goal 0.85..1.15: {'met' if ok_tput else 'MISSED'})"
    )


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'stage':<14} {'size':<5} {'tokens':>12} {'wall s':>8} {'CPU s':>8} "
        f"{'tokens/CPU-s':>13} {'steady':>10} {'peak RSS/worker MB':>19}"
    )
    for r in rows:
        print(
            f"{r.stage:<14} {r.size:<5} {r.tokens:>12,} {r.wall_s:>8.1f} {r.cpu_s:>8.1f} "
            f"{r.tokens_per_cpu_s:>13,.0f} {steady_rate(rows, r):>10,.0f} "
            f"{r.peak_rss_mb:>19.0f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=5_000_000, help="N (default 5M)")
    parser.add_argument("--file-words", type=int, default=400_000, help="words per corpus file")
    parser.add_argument("--samples", default=str(ROOT / ".distil" / "samples"))
    parser.add_argument("--workdir", help="keep corpora/outputs here (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=32, help="distil loader batch size")
    parser.add_argument(
        "--prepare-only", action="store_true", help="only the prepare rows (with and without dedup)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each prepare row (fresh output each): the median CPU-s and largest peak RSS",
    )
    parser.add_argument("--loader-pass", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loader_pass:
        print(json.dumps(loader_pass(args.loader_pass, args.batch_size)))
        return
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        docs = sample_documents(args.samples)
        n = args.n_tokens
        rows: list[Row] = []
        dedup_rows: list[Row] = []
        prepared: dict[str, tuple[str, int]] = {}
        for size, n_tokens in [("N/100", n // 100), ("N/10", n // 10), ("N", n), ("10N", 10 * n)]:
            tag = size.replace("/", "_")
            # the small runs are start-up baselines: at least two files, so both workers start
            file_words = min(args.file_words, int(n_tokens / TOKENS_PER_WORD) // 2 + 1)
            info = write_corpus(docs, n_tokens, work / f"corpus-{tag}", file_words)
            corpus = work / f"corpus-{tag}"
            out = str(work / f"prepared-{tag}")
            row, prep = repeated_prepare(args.repeat, corpus, out, size)
            prepared[size] = (out, prep["tokens"])
            deduped, dprep = repeated_prepare(
                args.repeat, corpus, str(work / f"dedup-{tag}"), size, dedup=True
            )
            deduped.tokens = row.tokens  # the same input tokens, so the rates compare
            if size != "N/100":
                rows.append(row)
                dedup_rows.append(deduped)
            say(
                f"prepare {size}: {prep['tokens']:,} tokens ({info['words']:,} words, "
                f"{info['files']} files, {info['copies']} copies of the samples), {row.wall_s:.0f}s;"
                f" with dedup {deduped.wall_s:.0f}s ({dprep['dedup']['exact_removed']} exact + "
                f"{dprep['dedup']['near_removed']} near duplicates removed)"
            )
            shutil.rmtree(work / f"dedup-{tag}", ignore_errors=True)
        rows += dedup_rows
        stages = [("prepare", "N", "10N"), ("prepare+dedup", "N", "10N")]
        cache_n = ""
        if not args.prepare_only:
            more, cache_n = other_stages(work, prepared, args.batch_size)
            rows += more
            stages += [("logits", "N/10", "N"), ("distil loader", "N", "10N")]
        print()
        print_rows(rows)
        print()
        print(
            "steady = (tokens - tokens of the smallest run) / (CPU s - its CPU s): start-up "
            "(Ray workers importing torch, model load) removed"
        )
        for stage, small, big in stages:
            print(ratio_line(rows, stage, small, big))
        for size in ("N", "10N"):
            plain, dd = (
                next(r for r in rows if r.stage == s and r.size == size)
                for s in ("prepare", "prepare+dedup")
            )
            cost = dd.tokens_per_cpu_s / plain.tokens_per_cpu_s
            print(
                f"dedup cost at {size}: prepare+dedup / prepare tokens per CPU-s = {cost:.2f} "
                f"(goal >= 0.60: {'met' if cost >= 0.6 else 'MISSED'})"
            )
        if not args.prepare_only:
            print()
            io_report(cache_n, work, args.batch_size)
        print(f"\nbench/scale.py finished in {time.perf_counter() - t_start:.0f}s")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def other_stages(
    work: Path, prepared: dict[str, tuple[str, int]], batch_size: int
) -> tuple[list[Row], str]:
    """Teacher logits and the distil loader on the prepared (no-dedup) corpora: their rows and
    the N cache's URL."""
    rows: list[Row] = []
    teacher = tiny_teacher(work / "teacher")
    # logits at N/100 (start-up base), N/10 and N: the tiny teacher still runs a 30,522-wide
    # head on every masked position, too slow on 2 cores for 10*N within the bench's budget
    caches: dict[str, str] = {}
    for size in ("N/100", "N/10", "N"):
        path, tokens = prepared[size]
        row, summ = run_logits(path, str(work / "caches"), teacher, size, tokens)
        rows.append(row)
        caches[size] = summ["cache_url"]
        say(f"logits {size}: {tokens:,} tokens, {row.wall_s:.0f}s")
    # the loader's cost does not depend on the target values: its 10*N cache is the N cache's
    # committed files listed ten times
    loader_caches = {
        "N/10": caches["N/10"],
        "N": caches["N"],
        "10N": replicate_cache(caches["N"], work / "cache-10N", 10),
    }
    for size, url in loader_caches.items():
        rows.append(run_loader(url, size, batch_size))
        say(f"loader {size}: {rows[-1].tokens:,} tokens, {rows[-1].wall_s:.0f}s")
    return rows, caches["N"]


if __name__ == "__main__":
    main()
