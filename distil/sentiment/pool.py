"""The task-distillation pool: unlabelled texts for the student to learn the teacher's answers on.

A 9k-review training split is too small for a student to learn its teacher's function from the
labels alone; TinyBERT (Jiao et al. 2020) grows it with augmentations the teacher then labels.
The pool here is ``multiple`` × the training rows of augmented copies, each made of these steps
(``methods``, applied in order to one copy):

* ``synonym`` — each word replaced, with probability ``replace_prob``, by one of its
  ``neighbours`` nearest words in the encoder's input word-embedding space (TinyBERT's GloVe
  step, with the encoder's own embeddings: they need no download and share its vocabulary). A
  neighbour may be an antonym ("dull" → "sharp"): the teacher labels the copy, so it teaches
  where the boundary is rather than corrupting a label.
* ``delete`` — one span of ~15% of the words removed.
* ``shuffle`` — the words of one 3-word span shuffled.

and, optionally, ``prose`` sentences from a plain-text corpus (the sample prose) as extra pool
rows. Every pool text is kept out of the evaluation sets and the validation split by normalised
text (:func:`distil.samples.reviews.text_key`): the pool is training data.

The pool is a committed dir of ``pool-NNNNN.jsonl`` parts (``id``, ``text``, ``origin``: the
training row id or ``prose``, ``method``) plus a ``train.jsonl`` of the training rows' own texts
(the labelled rows need the teacher's logits too), named by a fingerprint of everything that made
it, so a rerun finds it committed and reuses it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from distil import storage
from distil.samples.reviews import text_key

log = logging.getLogger("distil.sentiment.pool")

KIND = "task_pool"
POOL_VERSION = 1  # bump when an augmentation's output changes for the same inputs
METHODS = ("synonym", "delete", "shuffle")
ROWS_PER_PART = 50_000
_WORDS = re.compile(r"[A-Za-z]+|[^A-Za-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class Synonyms:
    """Nearest words by cosine similarity of the encoder's input word embeddings.

    Only whole-word vocabulary entries (alphabetic ASCII, two letters or more, no ``##``
    continuation) take part, so a replacement is always a real word of the vocabulary."""

    def __init__(self, encoder_dir: str, neighbours: int = 8) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
        model = AutoModel.from_pretrained(encoder_dir)
        emb = model.get_input_embeddings().weight.detach().float()
        vocab = tokenizer.convert_ids_to_tokens(list(range(emb.shape[0])))
        words = [i for i, v in enumerate(vocab) if v.isascii() and v.isalpha() and len(v) > 1]
        unit = torch.nn.functional.normalize(emb[words], dim=1)
        self.table: dict[str, list[str]] = {}
        with torch.inference_mode():
            for start in range(0, len(words), 2048):
                top = (unit[start : start + 2048] @ unit.T).topk(neighbours + 1, dim=1).indices
                for row, near in zip(range(start, start + len(top)), top.tolist(), strict=True):
                    word = vocab[words[row]]
                    self.table[word] = [vocab[words[j]] for j in near if j != row][:neighbours]

    def replace(self, text: str, rng: np.random.Generator, prob: float) -> str:
        out = []
        for piece in _WORDS.findall(text):
            near = self.table.get(piece.lower()) if piece[0].isalpha() else None
            if near and rng.random() < prob:
                new = near[int(rng.integers(len(near)))]
                piece = new.capitalize() if piece[0].isupper() else new
            out.append(piece)
        return "".join(out)


def delete_span(text: str, rng: np.random.Generator, fraction: float = 0.15) -> str:
    words = text.split()
    if len(words) < 4:
        return text
    n = max(1, int(len(words) * fraction))
    start = int(rng.integers(0, len(words) - n + 1))
    return " ".join(words[:start] + words[start + n :])


def shuffle_span(text: str, rng: np.random.Generator, width: int = 3) -> str:
    words = text.split()
    if len(words) < 4:
        return text
    start = int(rng.integers(0, len(words) - width + 1))
    span = words[start : start + width]
    rng.shuffle(span)
    return " ".join(words[:start] + span + words[start + width :])


def augmenter(
    methods: list[str], synonyms: Synonyms | None, replace_prob: float
) -> Callable[[str, np.random.Generator], str]:
    """One augmented copy of a text: ``methods`` applied in order."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(METHODS)}")
    steps: list[Callable[[str, np.random.Generator], str]] = []
    for m in methods:
        if m == "synonym":
            if synonyms is None:
                raise ValueError("the synonym augmentation needs an encoder's word embeddings")
            steps.append(lambda t, rng: synonyms.replace(t, rng, replace_prob))
        elif m == "delete":
            steps.append(delete_span)
        else:
            steps.append(shuffle_span)

    def apply(text: str, rng: np.random.Generator) -> str:
        for step in steps:
            text = step(text, rng)
        return text

    return apply


def prose_sentences(texts: list[str], min_words: int = 5, max_words: int = 60) -> list[str]:
    """Sentences of plain prose of review-like length (5-60 words)."""
    out = []
    for text in texts:
        for sentence in _SENTENCE_END.split(" ".join(text.split())):
            if min_words <= len(sentence.split()) <= max_words:
                out.append(sentence)
    return out


def augment(
    train: list[dict[str, Any]],
    augment_one: Callable[[str, np.random.Generator], str],
    multiple: float,
    seed: int,
    forbidden: set[str],
    prose: list[str] | None = None,
    prose_rows: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """``round(multiple × len(train))`` augmented rows (copy ``c`` of row ``i`` seeded by
    ``(seed, c, i)``, so a pool is the same whatever else changed) plus ``prose_rows`` prose
    sentences; rows whose normalised text is in ``forbidden`` (evaluation sets, validation
    split), repeats a training text, or is already in the pool are dropped and counted."""
    seen = set(forbidden)
    own = {text_key(r["text"]) for r in train}
    rows: list[dict[str, Any]] = []
    counts = {"generated": 0, "forbidden": 0, "same_as_training_text": 0, "repeated": 0}
    target = round(multiple * len(train))

    def add(text: str, origin: str, method: str) -> None:
        counts["generated"] += 1
        key = text_key(text)
        if key in forbidden:
            counts["forbidden"] += 1
        elif key in own:
            counts["same_as_training_text"] += 1
        elif key in seen:
            counts["repeated"] += 1
        else:
            seen.add(key)
            rows.append(
                {"id": f"pool-{len(rows)}", "text": text, "origin": origin, "method": method}
            )

    for n in range(target):
        copy, i = divmod(n, len(train))
        rng = np.random.default_rng([seed, copy, i])
        add(augment_one(train[i]["text"], rng), str(train[i]["id"]), "augment")
    if prose and prose_rows:
        rng = np.random.default_rng([seed, 1 << 20])
        for j in rng.permutation(len(prose))[:prose_rows]:
            add(prose[j], "prose", "prose")
    counts["kept"] = len(rows)
    return rows, counts


def write_pool(
    url: str, train: list[dict[str, Any]], pool: list[dict[str, Any]], meta: dict
) -> dict:
    """Commit ``train.jsonl`` (the training texts) and the pool parts under ``url``."""
    files = []

    def put(name: str, rows: list[dict[str, Any]]) -> None:
        # ASCII JSON: U+2028-style characters must not read as line breaks downstream
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        with storage.staged_file(url, name) as f:
            f.write(body)
        files.append({"name": name, "rows": len(rows)})

    put("train.jsonl", [{"id": str(r["id"]), "text": r["text"]} for r in train])
    for part, start in enumerate(range(0, len(pool), ROWS_PER_PART)):
        put(f"pool-{part:05d}.jsonl", pool[start : start + ROWS_PER_PART])
    manifest = {"kind": KIND, "files": files, "rows": len(pool), "train_rows": len(train), **meta}
    storage.commit(url, manifest)
    return manifest


def is_pool(url: str) -> bool:
    """Whether ``url`` is a committed pool dir (not a file, not another kind of dir)."""
    fs, path = storage.get_fs(url)
    return (
        fs.isdir(path)
        and storage.is_committed(url)
        and storage.read_manifest(url).get("kind") == KIND
    )


def pool_files(url: str) -> list[str]:
    """The committed pool's augmented parts (not ``train.jsonl``): what ``finetune --pool`` reads."""
    manifest = storage.read_manifest(url)
    if manifest.get("kind") != KIND:
        raise ValueError(f"{url} is not a task-distillation pool (kind={manifest.get('kind')})")
    return [storage.join(url, f["name"]) for f in manifest["files"] if f["name"] != "train.jsonl"]


__all__ = [
    "KIND",
    "METHODS",
    "Synonyms",
    "augment",
    "augmenter",
    "delete_span",
    "is_pool",
    "pool_files",
    "prose_sentences",
    "shuffle_span",
    "write_pool",
]
