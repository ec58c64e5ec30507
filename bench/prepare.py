"""Stage 1 end to end vs a fair Hugging Face baseline, both from the same raw files.

    PYTHONPATH=. python bench/prepare.py [--samples DIR] [--ray] [--dedup-only]

(a) this stage: ``distil.data.prepare.run_serial`` on the sample corpus (Wikipedia bz2 dump
    excerpt, news and Brown JSONL, six Austen books): read + wikitext->text + tokenize + pack +
    write zstd Parquet, in this process.
(b) the HF path a user would write for the same raw files: the wiki dump read the way HF's
    ``wikipedia`` builder does (bz2 + ``iterparse``, namespace 0 and non-redirects only, each page
    through ``mwparserfromhell.parse(...)``, media links and ``<ref>``/``<table>`` removed,
    ``strip_code`` per section) into ``Dataset.from_generator``; JSONL with
    ``load_dataset("json")``, books with ``load_dataset("text", sample_by="paragraph")``; then
    ``run_mlm.py``'s ``map(tokenize, batched=True)`` + ``group_texts``.

(c) this stage with deduplication (the default; (a) runs with ``--no-dedup``, like (b)), on the
    same files, (a) and (c) alternated ``--repeat`` times: the ratio of (c)'s tokens per
    CPU-second to (a)'s, both counting the tokens of the whole input (what was read and
    tokenized; (c) then packs fewer), goal >= 0.60.

Both are timed in CPU-seconds (``time.process_time()``: every thread of this process, so the
tokenizers' own thread pool counts), which makes the figures per core whatever the machine.
The ratio is (b)'s CPU time over (a)'s for the same corpus; tokens per CPU-second are printed
too (the two extractions keep slightly different text). Also printed: how close the stage's
scan-based wikitext extractor is to the ``mwparserfromhell`` reference on the dump's pages
(word-level F1 per page). Builds the samples first if missing. ``--ray`` also times the Ray job.

Deduplication, on the same sample corpus:

* quality on issue 32's planted set (``tests/data/prepare_corpus.py``): distinct windows of
  120-300 words of every document (no two with word 5-gram Jaccard >= 0.5), each with an exact
  copy, a copy with 1% of its words changed and a re-wrapped copy: the share of each kind of
  copy removed (with its own original kept) and of originals removed;
* MinHash libraries: the stage's vectorised numpy signer against ``datasketch`` (and ``rensa``
  when installed) on the same documents, same normalisation, shingles and 112 permutations,
  in CPU-seconds; the ratio is each library's CPU time over numpy's.

``--dedup-only`` runs (a), (c) and these two sections only.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import hashlib
import logging
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests" / "data"))  # the planted set, shared with its test

from prepare_corpus import distinct, score_planted, word_windows, write_planted  # noqa: E402

from distil import storage  # noqa: E402
from distil.data import dedup  # noqa: E402
from distil.data.config import PrepareConfig  # noqa: E402
from distil.data.prepare_ranges import run_serial  # noqa: E402
from distil.data.readers import Document, list_inputs, read_records  # noqa: E402
from distil.data.readers.wikitext import (  # noqa: E402
    token_f1,
    wikitext_to_text,
    wikitext_to_text_mwparser,
)
from distil.packaged import PACKAGED_TEACHER, resolve_model_ref  # noqa: E402
from distil.samples.config import SamplesConfig  # noqa: E402


def timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def bench_stage(corpus: str, out: str, seq_len: int, dedup: bool = False):
    cfg = PrepareConfig(input=corpus, output=out, seq_len=seq_len, dedup=dedup)
    manifest, cpu, wall = timed(lambda: run_serial(cfg))
    sep = manifest["special_ids"]["sep"]
    # content tokens: minus [CLS]/[SEP] per row and the [SEP]s between documents
    content = manifest["tokens"] - manifest["rows"] - manifest["token_counts"][sep]
    return content, cpu, wall, manifest


# --- HF's wikipedia builder (datasets' wikipedia.py), English aliases only -------------------
_MAGIC = re.compile("__[A-Z]*__")
_MEDIA = re.compile("^(?:File|Image|Media):", re.IGNORECASE)
_CATEGORY = re.compile("^(?:Category):", re.IGNORECASE)


def hf_parse_and_clean_wikicode(raw: str) -> str:
    import mwparserfromhell

    wikicode = mwparserfromhell.parse(raw)

    def clean_wikilink(obj):
        obj.text = re.sub(_CATEGORY, "", obj.__strip__())

    sections = []
    for section in wikicode.get_sections(flat=True, include_lead=True, include_headings=True):
        for obj in section.ifilter_wikilinks(recursive=True):
            if _MEDIA.match(str(obj.title)):
                with contextlib.suppress(ValueError):
                    section.remove(obj)
            elif _CATEGORY.match(str(obj.title)):
                with contextlib.suppress(ValueError):
                    clean_wikilink(obj)
        for obj in section.ifilter_tags(matches=lambda t: str(t.tag) in {"ref", "table"}):
            with contextlib.suppress(ValueError):
                section.remove(obj)
        sections.append(re.sub(_MAGIC, "", section.strip_code().strip()))
    return "\n\n".join(sections)


def hf_wiki_examples(paths: list[str]):
    for path in paths:
        with open(path, "rb") as raw, bz2.BZ2File(raw) as f:
            for _, elem in ET.iterparse(f, events=("end",)):
                if not elem.tag.endswith("page"):
                    continue
                ns_uri = elem.tag[:-4]
                ns = elem.find(f"./{ns_uri}ns").text
                text = elem.find(f"./{ns_uri}revision/{ns_uri}text").text
                redirect = elem.find(f"./{ns_uri}redirect")
                elem.clear()
                if ns != "0" or text is None or redirect is not None:
                    continue
                clean = hf_parse_and_clean_wikicode(text)
                if clean:
                    yield {"text": clean}


def bench_hf(files: list[str], tok_dir: str, seq_len: int, cache: str):
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    wiki = [f for f in files if ".xml" in f]
    books = [f for f in files if f.endswith(".txt")]
    jsonl = [f for f in files if f.endswith(".jsonl")]

    def load():
        parts = [
            datasets.Dataset.from_generator(
                hf_wiki_examples, gen_kwargs={"paths": wiki}, cache_dir=cache
            ),
            datasets.load_dataset("json", data_files=jsonl, split="train", cache_dir=cache),
            datasets.load_dataset(
                "text", data_files=books, sample_by="paragraph", split="train", cache_dir=cache
            ),
        ]
        return datasets.concatenate_datasets([p.select_columns(["text"]) for p in parts])

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

    ds, read_cpu, _ = timed(load)

    def work():
        tok = ds.map(tokenize_function, batched=True, remove_columns=["text"])
        grouped = tok.map(group_texts, batched=True)
        return sum(len(x) for x in tok["input_ids"]) - 2 * len(tok), len(grouped)

    (content, rows), map_cpu, _ = timed(work)
    return content, read_cpu, map_cpu, rows, len(ds)


def extractor_overlap(wiki_files: list[str]) -> tuple[list[float], float, float]:
    """Word F1 per article page, scan extractor vs mwparserfromhell reference, and CPU of each."""
    pages = []
    for path in wiki_files:
        with open(path, "rb") as raw, bz2.BZ2File(raw) as f:
            for _, elem in ET.iterparse(f):
                if elem.tag.endswith("}page"):
                    ns, text = elem.find("{*}ns").text, elem.find(".//{*}text").text or ""
                    if ns == "0" and not text.lstrip().lower().startswith("#redirect"):
                        pages.append(text)
                    elem.clear()
    fast, fast_cpu, _ = timed(lambda: [wikitext_to_text(p) for p in pages])
    ref, ref_cpu, _ = timed(lambda: [wikitext_to_text_mwparser(p) for p in pages])
    return [token_f1(r, f) for r, f in zip(ref, fast, strict=True)], fast_cpu, ref_cpu


# --- deduplication ---------------------------------------------------------------------------


def corpus_documents(files: list[str]) -> list[str]:
    """Every document of the corpus as one text (a book's pieces joined)."""
    docs: list[str] = []
    for url in files:
        for r in read_records(url, url, "auto"):
            if isinstance(r, Document):
                if r.continues:
                    docs[-1] += " " + r.text
                else:
                    docs.append(r.text)
    return docs


def bench_dedup_cost(corpus: str, tmp: str, seq_len: int, repeat: int) -> None:
    """(a) without and (c) with dedup, alternated; medians of CPU-seconds."""
    cpu = {False: [], True: []}
    tokens, manifests = {}, {}
    for r in range(repeat):
        for on in (False, True):
            out = os.path.join(tmp, f"cost-{r}-{on}")
            tokens[on], c, _, manifests[on] = bench_stage(corpus, out, seq_len, dedup=on)
            cpu[on].append(c)
            shutil.rmtree(out, ignore_errors=True)
    a, c = statistics.median(cpu[False]), statistics.median(cpu[True])
    d = manifests[True]["dedup"]
    print(
        f"(a) --no-dedup         cpu {a:6.2f}s  {tokens[False] / a:>10,.0f} tokens/cpu-s  "
        f"(median of {repeat}: {', '.join(f'{x:.2f}' for x in cpu[False])})"
    )
    print(
        f"(c) dedup (default)    cpu {c:6.2f}s  {tokens[False] / c:>10,.0f} tokens/cpu-s  "
        f"(median of {repeat}: {', '.join(f'{x:.2f}' for x in cpu[True])}; "
        f"{d['exact_removed']} exact + {d['near_removed']} near duplicates of "
        f"{d['documents_in']} documents removed, {tokens[True]:,} tokens packed)"
    )
    ratio = a / c
    print(
        f"dedup cost: (c)/(a) tokens per CPU-s = {ratio:.2f} (goal >= 0.60: "
        f"{'met' if ratio >= 0.6 else 'MISSED'}), both over the {tokens[False]:,} input tokens"
    )


def bench_dedup_quality(docs: list[str], tmp: str, seq_len: int) -> None:
    base = distinct(word_windows(docs, random.Random(0)))
    truth = write_planted(Path(tmp) / "planted", base)
    out = os.path.join(tmp, "planted-out")
    manifest, cpu, _ = timed(
        lambda: run_serial(PrepareConfig(input=os.path.join(tmp, "planted"), output=out))
    )
    score = score_planted(out, truth)
    j = score["near_jaccard"]
    print(
        f"planted set: {score['originals']:,} distinct documents (windows of the sample corpus) "
        f"+ 3 copies each, {manifest['dedup']['documents_in']:,} documents, "
        f"prepared in {cpu:.1f} CPU-s"
    )
    for kind, goal in (("exact", 1.0), ("rewrap", 1.0), ("near", 0.99)):
        k = score[kind]
        share = k["right"] / k["copies"]
        print(
            f"  {kind:<7} copies removed (own original kept): {k['right']:>6,} / {k['copies']:,} "
            f"= {share:.4%} (goal >= {goal:.0%}: {'met' if share >= goal else 'MISSED'})"
        )
    wrong = score["originals_removed"] / score["originals"]
    print(
        f"  distinct documents removed: {score['originals_removed']} / {score['originals']:,} = "
        f"{wrong:.4%} (goal <= 0.1%: {'met' if wrong <= 0.001 else 'MISSED'}); near copies' "
        f"true word 5-gram Jaccard mean {j['mean']:.3f}, min {j['min']:.3f}"
    )


def bench_minhash_libraries(docs: list[str]) -> None:
    """Signatures of the same documents: the stage's numpy signer vs datasketch (vs rensa)."""
    words = sum(len(d.split()) for d in docs)

    def shingles(text: str) -> list[str]:
        w = dedup.normalize(text).split()
        return [" ".join(w[i : i + dedup.NGRAM]) for i in range(max(1, len(w) - dedup.NGRAM + 1))]

    def exact(text: str) -> bytes:
        return hashlib.blake2b(dedup.normalize(text).encode(), digest_size=8).digest()

    def numpy_signer():
        signer = dedup.Signer()
        for _ in signer.observe(Document("b", i, str(i), d) for i, d in enumerate(docs)):
            pass
        return signer.take().sig

    rows = [("numpy (this stage)", numpy_signer)]
    try:
        from datasketch import MinHash

        def datasketch_sigs():
            out = []
            for d in docs:
                exact(d)
                m = MinHash(num_perm=dedup.NUM_PERM, seed=dedup.SEED)
                m.update_batch([s.encode() for s in shingles(d)])
                out.append(m.hashvalues)
            return out

        rows.append(("datasketch", datasketch_sigs))
    except ImportError:
        print("  datasketch not installed (pip install datasketch) : not compared")
    try:
        import rensa

        def rensa_sigs():
            out = []
            for d in docs:
                exact(d)
                m = rensa.RMinHash(num_perm=dedup.NUM_PERM, seed=dedup.SEED)
                m.update(shingles(d))
                out.append(m.digest())
            return out

        rows.append(("rensa", rensa_sigs))
    except ImportError:
        print("  rensa not installed (pip install rensa): not compared")
    base = None
    for name, fn in rows:
        cpu = min(timed(fn)[1] for _ in range(3))
        base = base or cpu
        print(
            f"  {name:<20} {cpu:6.2f} CPU-s  {words / cpu / 1e6:5.2f} M words/CPU-s  "
            f"({cpu / base:.2f}x numpy's CPU time)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default=str(ROOT / ".distil" / "samples"))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--ray", action="store_true", help="also time the Ray job (wall clock)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of (a) and (c) each")
    parser.add_argument(
        "--dedup-only", action="store_true", help="only (a), (c) and the dedup sections"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    corpus = storage.join(args.samples, "corpus")
    if not storage.is_committed(corpus):
        from distil.samples.corpus import run as samples

        print("building the sample corpus ...", flush=True)
        samples(SamplesConfig(output=args.samples))
    tok_dir = resolve_model_ref(PACKAGED_TEACHER)
    files = list_inputs([corpus]).urls
    tmp = tempfile.mkdtemp(prefix="bench-prepare-")
    try:
        print(
            f"sample corpus: {len(files)} raw files, seq_len {args.seq_len}, cpus {os.cpu_count()}"
        )
        bench_dedup_cost(corpus, tmp, args.seq_len, args.repeat)
        docs = corpus_documents(files)
        print(f"MinHash signatures of the {len(docs)} sample documents:")
        bench_minhash_libraries(docs)
        bench_dedup_quality(docs, tmp, args.seq_len)
        if args.dedup_only:
            return
        a_tok, a_cpu, a_wall, manifest = bench_stage(corpus, os.path.join(tmp, "a"), args.seq_len)
        b_tok, b_read, b_map, b_rows, b_docs = bench_hf(
            files, tok_dir, args.seq_len, os.path.join(tmp, "hf")
        )
        b_cpu = b_read + b_map
        f1, fast_cpu, ref_cpu = extractor_overlap([f for f in files if ".xml" in f])
        print(
            f"(a) this stage         cpu {a_cpu:6.1f}s  {a_tok / a_cpu:>10,.0f} tokens/cpu-s  "
            f"({a_tok:,} tokens, {manifest['records']['documents']} docs, "
            f"{manifest['rows']:,} rows, wall {a_wall:.1f}s)"
        )
        print(
            f"(b) HF end to end      cpu {b_cpu:6.1f}s  {b_tok / b_cpu:>10,.0f} tokens/cpu-s  "
            f"({b_tok:,} tokens, {b_docs} examples, {b_rows:,} rows)"
        )
        print(
            f"    of which reading + mwparserfromhell {b_read:.1f}s, map + group_texts {b_map:.1f}s"
        )
        print(
            f"ratio (b)/(a) CPU time = {b_cpu / a_cpu:.2f}   tokens/cpu-s ratio = "
            f"{(a_tok / a_cpu) / (b_tok / b_cpu):.2f}   (goal >= 3)"
        )
        print(
            f"wikitext extraction on {len(f1)} dump articles: scan {fast_cpu:.2f}s vs "
            f"mwparserfromhell reference {ref_cpu:.2f}s CPU ({ref_cpu / fast_cpu:.1f}x); word F1 "
            f"min {min(f1):.3f} median {statistics.median(f1):.3f} mean {sum(f1) / len(f1):.4f}"
        )
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
