"""Stage 1 throughput on the sample corpus, in tokens per CPU-second ("per core").

    PYTHONPATH=. python bench/prepare.py [--samples DIR] [--ray]

(a) this stage: ``distil.data.prepare.run_serial`` (read + wikitext->text + tokenize + pack +
    write zstd Parquet), in this process;
(b) the HF baseline: ``datasets.Dataset.map(tokenize, batched=True)`` + ``group_texts`` from
    transformers' ``run_mlm.py`` on the already-extracted document texts;
(c) the raw ceiling: ``tokenizers.Tokenizer.encode_batch`` on the same texts (+ reading ``ids``);
    ``encode_batch_fast`` (what the stage uses: no offsets) is printed too.

CPU-seconds come from ``time.process_time()`` (all threads of this process, so the tokenizers'
own thread pool is counted), which makes the numbers per core whatever the machine. (b) and (c)
start from extracted text, so (a) also pays for reading and wikitext parsing that they skip;
"a (excl. reading)" subtracts the reading time measured on its own. Builds the samples first if
missing. With ``--ray`` also times the Ray job (wall clock, all workers).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distil import storage  # noqa: E402
from distil.data.config import PrepareConfig, SamplesConfig  # noqa: E402
from distil.data.prepare import run_serial  # noqa: E402
from distil.data.readers import Document, list_inputs, read_records  # noqa: E402
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def read_texts(corpus: str) -> list[str]:
    texts = []
    for url in list_inputs([corpus]):
        texts += [r.text for r in read_records(url, url, "auto") if isinstance(r, Document)]
    return texts


def bench_stage(corpus: str, out: str, seq_len: int):
    cfg = PrepareConfig(input=corpus, output=out, seq_len=seq_len)
    manifest, cpu, wall = timed(lambda: run_serial(cfg))
    content = manifest["tokens"] - manifest["rows"] * 2 - _inner_seps(manifest)
    return content, cpu, wall, manifest


def _inner_seps(manifest) -> int:
    # [SEP]s between documents inside rows: every [SEP] beyond one per row
    return manifest["token_counts"][manifest["special_ids"]["sep"]] - manifest["rows"]


def bench_hf(texts: list[str], tok_dir: str, seq_len: int):
    """run_mlm.py's default path: tokenize (with special tokens) then group_texts."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    ds = datasets.Dataset.from_dict({"text": texts})

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    def group_texts(examples):  # verbatim logic of run_mlm.py
        concatenated = {k: sum(examples[k], []) for k in examples}
        total_length = len(concatenated[next(iter(examples.keys()))])
        total_length = (total_length // seq_len) * seq_len
        return {
            k: [t[i : i + seq_len] for i in range(0, total_length, seq_len)]
            for k, t in concatenated.items()
        }

    def work():
        tok = ds.map(tokenize_function, batched=True, remove_columns=["text"])
        grouped = tok.map(group_texts, batched=True)
        return sum(len(x) for x in tok["input_ids"]) - 2 * len(tok), len(grouped)

    (content, rows), cpu, wall = timed(work)
    return content, cpu, wall, rows


def bench_raw(texts: list[str], tok_dir: str, batch: int = 512, fast: bool = False):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    encode = tok.encode_batch_fast if fast else tok.encode_batch

    def work():
        n = 0
        for i in range(0, len(texts), batch):
            for enc in encode(texts[i : i + batch], add_special_tokens=False):
                n += len(enc.ids)
        return n

    return timed(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(ROOT / ".distil" / "samples"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ray", action="store_true", help="also time the Ray job (wall clock)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    corpus = storage.join(args.samples, "corpus")
    if not storage.is_committed(corpus):
        from distil.data.samples import run as samples

        print("building the sample corpus ...", flush=True)
        samples(SamplesConfig(output=args.samples))
    tok_dir = resolve_model_ref(PACKAGED_TEACHER)
    tmp = tempfile.mkdtemp(prefix="bench-prepare-")
    try:
        texts, read_cpu, _ = timed(lambda: read_texts(corpus))
        a_tok, a_cpu, a_wall, manifest = bench_stage(corpus, os.path.join(tmp, "a"), args.seq_len)
        b_tok, b_cpu, b_wall, b_rows = bench_hf(texts, tok_dir, args.seq_len)
        c_tok, c_cpu, c_wall = bench_raw(texts, tok_dir)
        f_tok, f_cpu, f_wall = bench_raw(texts, tok_dir, fast=True)
        assert a_tok == c_tok, f"stage saw {a_tok} content tokens, raw tokenizer {c_tok}"
        a = a_tok / a_cpu
        a_excl = a_tok / max(a_cpu - read_cpu, 1e-9)
        b, c = b_tok / b_cpu, c_tok / c_cpu
        print(
            f"sample corpus: {len(texts)} documents/pieces, {c_tok:,} tokens, "
            f"seq_len {args.seq_len}, cpus {os.cpu_count()}"
        )
        print(
            f"(a) this stage            {a:>12,.0f} tokens/cpu-s  (cpu {a_cpu:6.1f}s, "
            f"wall {a_wall:6.1f}s, {manifest['rows']:,} rows, pad "
            f"{manifest['padding_fraction']:.4f})"
        )
        print(
            f"    reading+parsing alone  cpu {read_cpu:6.1f}s  -> (a) excl. reading "
            f"{a_excl:,.0f} tokens/cpu-s"
        )
        print(
            f"(b) HF datasets.map+group {b:>12,.0f} tokens/cpu-s  (cpu {b_cpu:6.1f}s, "
            f"wall {b_wall:6.1f}s, {b_rows:,} rows)"
        )
        print(
            f"(c) raw encode_batch      {c:>12,.0f} tokens/cpu-s  (cpu {c_cpu:6.1f}s, "
            f"wall {c_wall:6.1f}s)"
        )
        print(
            f"    encode_batch_fast     {f_tok / f_cpu:>12,.0f} tokens/cpu-s  (cpu {f_cpu:6.1f}s; "
            "what the stage calls: no character offsets)"
        )
        print(f"ratio a/b = {a / b:.2f}   (goal >= 3)")
        print(f"ratio a/c = {a / c:.2f}   (goal >= 0.85)")
        print(f"excluding reading: a/b = {a_excl / b:.2f}, a/c = {a_excl / c:.2f}")
        if args.ray:
            import ray

            from distil.jobs.prepare import run

            ray.init(address="local", include_dashboard=False, log_to_driver=False)
            cfg = PrepareConfig(input=corpus, output=os.path.join(tmp, "ray"), num_workers=2)
            summary, _, wall = timed(lambda: run(cfg))
            print(
                f"Ray job, 2 workers: {summary['tokens']:,} tokens in {wall:.1f}s wall "
                f"({summary['tokens'] / wall:,.0f} tokens/s incl. start-up)"
            )
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
