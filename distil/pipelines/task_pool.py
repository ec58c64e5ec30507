"""``distil pool``: the task-distillation pool, labelled by the fine-tuned teacher with Beam.

    distil pool --teacher s3://b/sentiment/teacher/latest.json --output s3://b/task \
        --multiple 4 --exclude s3://b/eval/amazon.jsonl

1. The training rows — read and split exactly as ``distil finetune`` reads and splits them (the
   shared ``LabelledDataConfig`` fields: ``--train``, columns, ``--validation-fraction``,
   ``--max-train-examples``, ``--exclude``) — are augmented into ``--multiple`` × as many
   unlabelled texts (:mod:`distil.sentiment.pool`), committed at ``OUTPUT/pool-<fingerprint>``.
2. The teacher labels the training texts and the pool with the scoring pipeline
   (:func:`distil.pipelines.score_reviews.run`, any Beam runner): the same length-sorted batched
   inference, ranges, dead letters and model verification ``distil score`` has, and its rows
   already carry the text hash the cache is keyed by. Beam rather than a Ray Data job because
   scoring text with a classifier is what the Beam stage is, and FnApiRunner needs no cluster.
3. The scored probabilities become the task teacher cache (``sentiment_teacher_logits``,
   log-probabilities: the same softmax at every temperature) at
   ``OUTPUT/teacher-logits-<fingerprint of teacher and pool>``.

A rerun with the same rows, settings and teacher finds both committed and does nothing; a new
teacher reuses the pool and labels it again. The summary names ``pool`` (for ``finetune --pool``)
and ``teacher_cache`` (for ``finetune --teacher-cache``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from distil import storage
from distil.config import absolute_paths, job_main, setup_logging
from distil.samples.reviews import text_key
from distil.score import scored
from distil.score.config import ScoreConfig
from distil.sentiment import classifier, pool
from distil.sentiment.config import PoolConfig
from distil.sentiment.labelled_data import assemble, load_texts
from distil.sentiment.teacher_cache import write_teacher_logits

log = logging.getLogger("distil.pool")
LABEL_RUN = "label"  # the run id of the labelling pass under its scratch output


def _prose(cfg: PoolConfig) -> tuple[list[str], dict[str, int]]:
    """The prose inputs' sentences and their dead letters counted by reason (a record no reader
    could read is counted in the pool's manifest and logged, never dropped without a word)."""
    from distil.data.readers import Document, list_inputs, read_records

    texts: list[str] = []
    dead: dict[str, int] = {}
    listing = list_inputs(list(cfg.prose))
    listing.check(skip_unknown=False)  # a prose file no reader takes stops the stage, named
    for url in listing.urls:
        for rec in read_records(url, url, "auto"):
            if isinstance(rec, Document):
                texts.append(rec.text)
            else:
                dead[rec.reason] = dead.get(rec.reason, 0) + 1
    if dead:
        log.warning("prose: %d records could not be read %s", sum(dead.values()), dead)
    return pool.prose_sentences(texts), dead


def build(
    cfg: PoolConfig, train: list[dict[str, Any]], forbidden: set[str], encoder_sha: str
) -> str:
    """The committed pool dir for these rows and settings (built unless committed)."""
    settings = cfg.model_dump(
        include={"multiple", "methods", "replace_prob", "neighbours", "prose", "prose_rows", "seed"}
    )
    fp = storage.fingerprint(
        {
            "v": pool.POOL_VERSION,
            "train": storage.fingerprint(sorted(text_key(r["text"]) for r in train)),
            "forbidden": storage.fingerprint(sorted(forbidden)),
            "encoder": encoder_sha,
            **settings,
        }
    )
    url = storage.join(cfg.output, f"pool-{fp}")
    if storage.is_committed(url):
        log.info("pool %s: committed, reused", storage.redact(url))
        return url
    t0 = time.perf_counter()
    synonyms = None
    if "synonym" in cfg.methods:
        synonyms = pool.Synonyms(_encoder_dir(cfg), cfg.neighbours)
    augment_one = pool.augmenter(list(cfg.methods), synonyms, cfg.replace_prob)
    prose, prose_dead = _prose(cfg) if cfg.prose and cfg.prose_rows else (None, {})
    rows, counts = pool.augment(
        train, augment_one, cfg.multiple, cfg.seed, forbidden, prose, cfg.prose_rows
    )
    if prose_dead:
        counts["prose_dead_letters"] = prose_dead
    pool.write_pool(
        url,
        train,
        rows,
        {"fingerprint": fp, "settings": settings, "counts": counts, "encoder": encoder_sha},
    )
    log.info(
        "pool %s: %d rows from %d training rows in %.0fs (%s)",
        storage.redact(url),
        len(rows),
        len(train),
        time.perf_counter() - t0,
        counts,
    )
    return url


def _encoder_dir(cfg: PoolConfig) -> str:
    from distil.packaged import resolve_model_ref

    ref = (
        resolve_model_ref(cfg.encoder) if cfg.encoder else classifier.resolve_model_url(cfg.teacher)
    )
    if "://" in ref:
        import tempfile

        ref = storage.copy_dir_to_local(ref, tempfile.mkdtemp(prefix="distil-pool-encoder-"))
    return ref


def label(cfg: PoolConfig, pool_url: str, model_url: str, manifest: dict[str, Any]) -> str:
    """The task teacher cache of ``pool_url`` (training texts + pool) by the teacher at
    ``model_url``; labelled with the scoring pipeline unless committed."""
    from distil.pipelines import score_reviews

    pool_fp = storage.read_manifest(pool_url)["fingerprint"]
    fp = storage.fingerprint([manifest["fingerprint"], pool_fp, cfg.max_length])
    url = storage.join(cfg.output, f"teacher-logits-{fp}")
    if storage.is_committed(url):
        log.info("teacher cache %s: committed, reused (no teacher pass)", storage.redact(url))
        return url
    scratch = storage.join(cfg.output, f"labelling-{fp}")
    files = [storage.join(pool_url, f["name"]) for f in storage.read_manifest(pool_url)["files"]]
    summary = score_reviews.run(
        ScoreConfig(
            input=files,
            model=model_url,
            output=scratch,
            run_id=LABEL_RUN,
            id_column="id",
            text_column="text",
            max_length=cfg.max_length,
            batch_size=cfg.batch_size,
            torch_threads=cfg.torch_threads,
            runner=cfg.runner,
            beam_args=list(cfg.beam_args),
        )
    )
    if summary["dead_letter"]:
        raise RuntimeError(
            f"the teacher could not label {summary['dead_letter']} pool rows "
            f"({summary['dead_letter_by_reason']}): see the dead letters under "
            f"{storage.redact(scratch)}"
        )
    table = scored.read_run(scratch, LABEL_RUN)
    probs = np.asarray(table.column("probs").to_pylist(), np.float64)
    # log-probabilities are logits up to a constant per row: the same softmax at any T
    logits = np.log(np.clip(probs, 1e-30, None)).astype(np.float32)
    id2label = {int(k): v for k, v in manifest["id2label"].items()}
    write_teacher_logits(
        url,
        table.column("text_sha256").to_pylist(),
        logits,
        id2label,
        storage.redact(model_url),
        manifest["fingerprint"],
        extra={"pool": storage.redact(pool_url), "pool_fingerprint": pool_fp},
    )
    fs, path = storage.get_fs(scratch)
    fs.rm(path, recursive=True)
    return url


def run(cfg: PoolConfig) -> dict[str, Any]:
    setup_logging()
    t0 = time.perf_counter()
    cfg = absolute_paths(cfg)
    model_url = classifier.resolve_model_url(cfg.teacher)
    manifest = classifier.verify_model(model_url)
    if manifest.get("kind") != classifier.MODEL_KIND:
        raise ValueError(f"--teacher {model_url} is not a fine-tuned model dir (distil finetune)")
    data = assemble(cfg, cfg.train)
    forbidden = {text_key(r["text"]) for r in data.val}
    if cfg.exclude:
        forbidden |= {
            text_key(r["text"]) for r in load_texts(list(cfg.exclude), cfg.text_column)[0]
        }
    encoder_sha = storage.fingerprint(cfg.encoder) if cfg.encoder else manifest["fingerprint"]
    pool_url = build(cfg, data.train, forbidden, encoder_sha)
    cache_url = label(cfg, pool_url, model_url, manifest)
    pm = storage.read_manifest(pool_url)
    summary = {
        "pool": pool_url,
        "teacher_cache": cache_url,
        "train_rows": pm["train_rows"],
        "pool_rows": pm["rows"],
        "counts": pm["counts"],
        "teacher": storage.redact(model_url),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    log.info(
        "pool of %d rows labelled: --pool %s --teacher-cache %s", pm["rows"], pool_url, cache_url
    )
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return job_main(PoolConfig, run, __doc__, argv)


if __name__ == "__main__":
    main()
