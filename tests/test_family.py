"""Teacher families (``distil.family``) end to end: for RoBERTa (byte-level BPE) and XLM-RoBERTa
(SentencePiece Unigram, vocabulary padded past 65,536 ids so every real piece needs the int32
path), a teacher built here (tokenizer trained with ``tokenizers`` on the real sample corpus, a
random-init 4-layer ``…ForMaskedLM``) goes prepare -> logits -> distil -> fine-tune -> score
through the stages' job entry points, on a real local Ray and SeaweedFS S3, at tiny scale."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from family_fixtures import UINT16_IDS, save_family_teacher

from distil import storage
from distil.family import FAMILIES, mlm_attrs

pytestmark = pytest.mark.slow

SCORE_ROWS = 40
CORPUS_DOCS = 60  # of the 300 news documents: tiny scale for every stage (the tokenizer sees all)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The real sample corpus's news documents (gensim's Lee corpus, ``distil data samples``) and
    the real labelled review snippets (``assemble_reviews``), written locally once."""
    from distil.samples.corpus import assemble_news
    from distil.samples.reviews import MOVIE_SNIPPETS, assemble_reviews

    out = tmp_path_factory.mktemp("samples")
    assemble_news(str(out / "corpus"))
    news = out / "corpus" / "news" / "lee_background.jsonl"
    lines = news.read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    news.write_text("\n".join(lines[:CORPUS_DOCS]) + "\n")
    assemble_reviews(str(out / "reviews"))
    reviews = [json.loads(line) for line in (out / "reviews" / MOVIE_SNIPPETS).open()]
    return out / "corpus", texts, reviews


@pytest.mark.timeout(600)
@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_a_family_teacher_goes_through_every_stage(family, samples, ray_local, s3_url, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from distil.data.config import PrepareConfig
    from distil.jobs.distil import run as distil_run
    from distil.jobs.finetune import run as finetune_run
    from distil.jobs.prepare import run as prepare_run
    from distil.jobs.teacher_logits import run as logits_run
    from distil.pipelines.score_reviews import run as score_run
    from distil.score.config import ScoreConfig
    from distil.sentiment.config import FinetuneConfig
    from distil.teacher.config import LogitsConfig
    from distil.train.config import DistilConfig

    corpus, texts, reviews = samples
    spec = FAMILIES[family]
    local_teacher = save_family_teacher(tmp_path / "teacher", family, texts)
    tok = AutoTokenizer.from_pretrained(local_teacher)
    teacher = storage.join(s3_url, "teacher")
    storage.upload_dir(str(local_teacher), teacher)
    storage.upload_dir(str(corpus), storage.join(s3_url, "corpus"))

    # prepare: the family's specials and template, ids past uint16 for the padded XLM-R vocab
    prepared = storage.join(s3_url, "prepared")
    prepare_run(
        PrepareConfig(
            input=storage.join(s3_url, "corpus"),
            output=prepared,
            tokenizer=teacher,
            seq_len=64,
            num_workers=1,
        )
    )
    pm = storage.read_manifest(prepared)
    assert pm["tokenizer"]["family"] == family
    from distil.data.tokenizer import tokenizer_identity

    assert pm["tokenizer"]["identity"] == tokenizer_identity(
        (local_teacher / "tokenizer.json").read_text()
    )
    special = {role: tok.convert_tokens_to_ids(t) for role, t in spec.special_tokens.items()}
    assert pm["special_ids"] == special and pm["vocab_size"] == len(tok)
    local_prep = storage.copy_dir_to_local(prepared, str(tmp_path / "prepared"))
    shard = pq.read_table(storage.committed_files(local_prep)[0])
    rows = shard.column("input_ids").to_pylist()
    lengths = shard.column("length").to_pylist()
    assert all(
        r[0] == special["cls"] and r[n - 1] == special["sep"]
        for r, n in zip(rows, lengths, strict=True)
    )
    assert all(set(r[n:]) <= {special["pad"]} for r, n in zip(rows, lengths, strict=True))
    if family == "xlm-roberta":
        assert len(tok) > UINT16_IDS and pm["id_dtype"] == "int32"
        assert str(shard.schema.field("input_ids").type.value_type) == "int32"
        words = np.concatenate(
            [np.asarray(r[1 : n - 1]) for r, n in zip(rows, lengths, strict=True)]
        )
        words = words[~np.isin(words, list(special.values()))]  # separators between documents
        assert words.min() >= UINT16_IDS  # every real piece is past what uint16 holds
    else:
        assert pm["id_dtype"] == "uint16"

    # logits: the cache records the family; a special token is never masked, and a random
    # replacement is never one
    cache_root = storage.join(s3_url, "cache")
    logits = logits_run(
        LogitsConfig(
            input=prepared,
            cache_root=cache_root,
            teacher=teacher,
            batch_size=16,
            num_cpus_per_actor=0.5,
            torch_threads=1,
        )
    )
    cm = storage.read_manifest(logits["cache_url"])
    assert cm["teacher"]["family"] == family and cm["tokenizer"]["family"] == family
    local_cache = storage.copy_dir_to_local(logits["cache_url"], str(tmp_path / "cache"))
    table = pa.concat_tables([pq.read_table(p) for p in _parquet(local_cache)])
    specials = set(special.values())
    labels = np.concatenate(table.column("labels").to_numpy(zero_copy_only=False))
    assert len(labels) > 0 and not specials & set(labels.tolist())
    masked_ids, positions = (table.column(c).to_pylist() for c in ("input_ids", "positions"))
    at_masked = np.concatenate(
        [np.asarray(ids)[pos] for ids, pos in zip(masked_ids, positions, strict=True)]
    )
    assert not (specials - {special["mask"]}) & set(at_masked.tolist())
    assert (at_masked == special["mask"]).any() and (at_masked != special["mask"]).any()

    # distil: a student of the teacher's class with half its layers, a fill-mask model
    student = storage.join(s3_url, "student")
    distil_run(
        DistilConfig(
            cache=logits["cache_url"],
            output=student,
            storage_path=storage.join(s3_url, "runs"),
            num_workers=1,
            cpus_per_worker=0.5,
            batch_size=8,
            max_steps=3,
            warmup_steps=1,
            checkpoint_every=3,
            eval_every=3,
            eval_batches=1,
            log_every=1,
        )
    )
    local_student = storage.copy_dir_to_local(student, str(tmp_path / "student"))
    mlm = AutoModelForMaskedLM.from_pretrained(local_student)
    t_cls = type(AutoModelForMaskedLM.from_pretrained(local_teacher))
    assert type(mlm) is t_cls and mlm.config.model_type == family
    assert mlm.config.num_hidden_layers == 2 and mlm_attrs(mlm)[1] == spec.head
    preds = pipeline("fill-mask", model=local_student)(f"The minister said the {tok.mask_token}.")
    assert len(preds) == 5 and all(p["token"] not in specials for p in preds)

    # eval: `distil eval`'s MLM metrics of the student against the cached teacher; the online
    # teacher path (encoder + head of its family) agrees fully with a full-depth copy of itself
    from distil.data.readers.stream import ReadPosition
    from distil.quality.eval import evaluate_mlm
    from distil.student.model import MaskedLMForDistillation
    from distil.teacher.cache import TeacherCache
    from distil.train.heldout import mlm_metrics

    ev = evaluate_mlm(teacher, student, logits["cache_url"], heldout_fraction=0.5, batch_size=16)
    assert ev["positions"] > 0 and 0 <= ev["top1_agreement"] <= 1
    t_model = AutoModelForMaskedLM.from_pretrained(local_teacher).eval()
    heldout = TeacherCache(logits["cache_url"]).iter_batches(
        16, ReadPosition(split="heldout", heldout_fraction=0.5), shuffle=False
    )
    same = mlm_metrics(MaskedLMForDistillation(t_model), heldout, max_batches=2, teacher=t_model)
    assert same["positions"] > 0 and same["top1_agreement"] == 1.0 and same["kl"] < 1e-5

    # fine-tune the student on real labelled snippets: the family's …ForSequenceClassification
    train = storage.join(s3_url, "reviews.jsonl")
    storage.write_bytes(train, "".join(json.dumps(r) + "\n" for r in reviews[:400]).encode())
    ft = finetune_run(
        FinetuneConfig(
            model=student,
            train=train,
            output=storage.join(s3_url, "models"),
            run_name="ft",
            max_steps=4,
            batch_size=16,
            max_length=32,
            torch_threads=1,
            storage_path=storage.join(s3_url, "ft-runs"),
        )
    )
    model_url = storage.read_json(storage.join(s3_url, "models", "latest.json"))["model"]
    local_clf = storage.copy_dir_to_local(model_url, str(tmp_path / "clf"))
    clf = pipeline("text-classification", model=local_clf)
    assert type(clf.model).__name__ == t_cls.__name__.replace("MaskedLM", "SequenceClassification")
    assert clf("a wonderful, moving film")[0]["label"] in {"negative", "positive"}
    assert ft["metrics"]["steps"] == 4

    # score: every row is scored or a dead letter with a reason
    score_in = storage.join(s3_url, "to-score.jsonl")
    to_score = [{"id": f"s{i}", "text": r["text"]} for i, r in enumerate(reviews[-SCORE_ROWS:])]
    to_score[3]["text"] = ""
    to_score[7]["text"] = None
    storage.write_bytes(score_in, "".join(json.dumps(r) + "\n" for r in to_score).encode())
    summary = score_run(
        ScoreConfig(
            input=[score_in],
            model=model_url,
            output=storage.join(s3_url, "scored"),
            run_id="fam",
            model_cache=str(tmp_path / "model-cache"),
            max_length=32,
            batch_size=16,
            micro_batch_size=8,
            runner="FnApiRunner",
        )
    )
    assert summary["rows_in"] == SCORE_ROWS
    assert summary["scored"] + summary["dead_letter"] == SCORE_ROWS
    assert summary["dead_letter"] == 2 and summary["dead_letter_by_reason"]


def _parquet(local_dir: str) -> list[str]:
    from pathlib import Path

    return sorted(str(p) for p in Path(local_dir).rglob("*.parquet"))
