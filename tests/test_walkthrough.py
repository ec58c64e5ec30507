"""The README's day-two walkthrough, run line by line as a user would: their corpus, their own
teacher with its own tokenizer (made here: a WordPiece vocab trained on the corpus and a small
random ``BertForMaskedLM`` — not the packaged model or vocab), a review CSV shaped like a
user's, and an S3 bucket (the SeaweedFS fixture) as ``DISTIL_ROOT``.

The commands come from the README block between the ``walkthrough`` markers; the test only
appends tiny step budgets to each line (``BUDGET``), so the README cannot drift from what runs.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from distil import storage

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# what the test appends to each stage's line: budgets for 2 CPU cores, nothing that changes *what*
# the line does
BUDGET = {
    "storage": [],
    "prepare": ["--seq-len", "64", "--num-workers", "1"],
    "logits": ["--batch-size", "16", "--num-cpus-per-actor", "0.5", "--torch-threads", "1"],
    "distil": [
        "--max-steps", "4", "--batch-size", "8", "--warmup-steps", "1", "--eval-every", "2",
        "--eval-batches", "1", "--checkpoint-every", "2", "--log-every", "1",
        "--num-workers", "1", "--cpus-per-worker", "0.5",
    ],
    "finetune": ["--max-steps", "4", "--batch-size", "16", "--max-length", "32"],
    "score": ["--batch-size", "64", "--micro-batch-size", "32", "--max-length", "32"],
}  # fmt: skip

TOPICS = ["river", "city", "music", "science", "history", "village", "engineer", "painter",
          "season", "mountain", "library", "train", "harbor", "garden", "market", "bridge"]  # fmt: skip
POSITIVE = ["great", "wonderful", "excellent", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "terrible", "dull", "dreadful"]
FILLER = ["the", "product", "story", "was", "and", "it", "really", "this", "a", "of"]


def readme_walkthrough() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:begin -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README has no walkthrough block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def write_corpus(folder: Path, rng: random.Random) -> list[str]:
    """Two files in two formats, as a user's corpus folder would have."""
    folder.mkdir()
    words = TOPICS + POSITIVE + NEGATIVE + FILLER
    docs = [
        ". ".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(8))
        for _ in range(160)
    ]
    with open(folder / "articles.jsonl", "w") as f:
        for i, d in enumerate(docs[:100]):
            f.write(json.dumps({"id": f"a{i}", "text": d}) + "\n")
    (folder / "notes.txt").write_text("\n\n".join(docs[100:]) + "\n")
    return docs


def make_teacher(out: Path, docs: list[str]) -> int:
    """A teacher with its *own* tokenizer: WordPiece trained on the corpus (a few hundred ids,
    unlike the packaged 30,522) and a random 4-layer BertForMaskedLM of that vocab size."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(
        docs, vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok = BertTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
    )
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return len(tok)


def write_reviews(path: Path, n: int, rng: random.Random, blank_every: int = 0) -> list[dict]:
    """A review export: an id column, the text, a label by name, and columns we do not use."""
    rows = []
    for i in range(n):
        label = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(6)]
        words.insert(rng.randint(0, 6), rng.choice(POSITIVE if label else NEGATIVE))
        text = "" if blank_every and i % blank_every == blank_every - 1 else " ".join(words)
        rows.append(
            {
                "review_id": f"R{1000 + i}",
                "product": rng.choice(TOPICS),
                "review": text,
                "sentiment": "positive" if label else "negative",
                "stars": 5 if label else 1,
            }
        )
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


@pytest.mark.timeout(1500)
def test_readme_walkthrough_runs_on_a_users_inputs(s3_server, tmp_path):
    rng = random.Random(7)
    work = tmp_path / "work"
    work.mkdir()
    docs = write_corpus(work / "my-corpus", rng)
    teacher = tmp_path / "my-teacher"
    vocab = make_teacher(teacher, docs)
    train_rows = write_reviews(work / "my_reviews.csv", 240, rng)
    score_rows = write_reviews(work / "reviews_to_score.csv", 80, rng, blank_every=20)
    assert any(r["review"] == "" for r in score_rows) and train_rows

    root = f"s3://{s3_server.bucket}/walk-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, DISTIL_HOME=str(tmp_path / "home"), TOKENIZERS_PARALLELISM="false")
    env.pop("RAY_ADDRESS", None)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])

    lines = readme_walkthrough()
    exports = [ln for ln in lines if ln.startswith("export ")]
    assert [e.split("=")[0] for e in exports] == ["export DISTIL_ROOT", "export TEACHER"]
    env.update(DISTIL_ROOT=root, TEACHER=str(teacher))  # the user's values for those two
    commands = [ln for ln in lines if not ln.startswith("export ")]
    stages = [shlex.split(c)[1] for c in commands]
    assert stages == ["storage", "prepare", "logits", "distil", "finetune", "score"], stages
    for cmd, stage in zip(commands, stages, strict=True):
        line = cmd.split("#")[0].strip() + " " + shlex.join(BUDGET[stage])
        out = subprocess.run(
            ["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, f"{line}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"

    # prepare: the user's tokenizer (by identity), not the packaged one
    from distil.data.tokenizer import tokenizer_identity

    prep = storage.read_manifest(f"{root}/prepared")
    # 100 JSONL records + notes.txt, which the plain-text reader takes as one book
    assert prep["rows"] > 0 and prep["records"]["documents"] == 100 + 1
    own = tokenizer_identity((teacher / "tokenizer.json").read_text())
    assert prep["tokenizer"]["identity"] == own
    # logits: the pointer names a committed cache built from this teacher
    pointer = storage.read_json(f"{root}/teacher-cache/latest.json")
    cache_url = pointer["url"]
    assert cache_url and storage.is_committed(cache_url), pointer
    # distil: an HF student of the teacher's vocabulary, half its depth
    from transformers import AutoTokenizer, BertForMaskedLM

    local_student = storage.copy_dir_to_local(f"{root}/student", str(tmp_path / "student"))
    student = BertForMaskedLM.from_pretrained(local_student)
    assert student.config.vocab_size == vocab and student.config.num_hidden_layers == 2
    assert len(AutoTokenizer.from_pretrained(local_student)) == vocab
    # finetune: the pointer names a committed classifier with validation metrics
    latest = storage.read_json(f"{root}/sentiment/latest.json")
    model_url = latest["model"]
    assert model_url and storage.is_committed(model_url), latest
    assert 0.0 <= storage.read_manifest(model_url)["metrics"]["accuracy"] <= 1.0
    # score: every CSV row is accounted for; blank reviews are dead letters with a reason
    summary = storage.read_json(f"{root}/scored/run_id=first/summary.json")
    blanks = sum(r["review"] == "" for r in score_rows)
    assert summary["rows_in"] == len(score_rows)
    assert summary["scored"] == len(score_rows) - blanks
    assert summary["dead_letter"] == blanks and summary["dead_letter_by_reason"]
