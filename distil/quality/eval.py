"""``distil eval``: how close a distilled student is to its teacher, on data neither trained on.

Two questions, one report: (a) does the student's masked-LM match the teacher's on held-out masked
positions (top-1 agreement, and KL(teacher || student) coarsened to ``{cached top-k, rest}`` as in
``losses.kl_coarse``), and (b) does the student's fine-tuned sentiment classifier keep the
teacher's accuracy, in domain (the fine-tune's validation split) and out of domain (a review set
from another source that no model trained on).

``mlm_metrics`` is the single held-out MLM computation: the distillation recipe's periodic eval
calls it too, so the numbers in a training run and in ``distil eval`` mean the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from typing import Any

import numpy as np
from pydantic import Field

from distil import storage
from distil.config import ConfigError, StageConfig
from distil.data.readers.compression import open_stream
from distil.data.readers.stream import ReadPosition
from distil.progress import Progress
from distil.sentiment.finetune_export import classification_metrics
from distil.train.heldout import mlm_metrics

log = logging.getLogger("distil.quality.eval")

EVAL_JSON = "eval.json"
CHUNK = 1024  # reviews per classify call: the progress line moves, length sorting still pays
# (student logits [N, V], batch) -> KL(teacher || student) averaged over the batch's N positions


class EvalConfig(StageConfig):
    teacher: str = Field(..., description="teacher checkpoint (path, fsspec URL, packaged:NAME)")
    student: str = Field(..., description="distilled student checkpoint (HF dir, path or URL)")
    cache: str = Field(..., description="committed teacher cache: its heldout split is scored")
    heldout_fraction: float = Field(
        0.05, description="held-out fraction by seq_id; must match the distil run's"
    )
    batch_size: int = Field(64, description="rows per MLM batch")
    max_batches: int | None = Field(None, description="stop the MLM eval after this many batches")
    teacher_classifier: str | None = Field(None, description="teacher's fine-tuned classifier dir")
    student_classifier: str | None = Field(None, description="student's fine-tuned classifier dir")
    reviews: str | None = Field(None, description="reviews dir (distil data samples: reviews/)")
    in_domain: str = Field("movie_snippets.jsonl", description="review set the classifiers saw")
    out_of_domain: str = Field(
        "amazon_snippets.jsonl", description="review set from another source, never trained on"
    )
    max_length: int = Field(128, description="classifier max tokens per review")
    model_cache: str = Field(".distil/models", description="local dir models are pulled into")
    device: str = Field("cpu", description="torch device")
    output: str | None = Field(None, description="URL of a dir to write eval.json into")

    PATH_FIELDS = ("teacher", "student", "cache", "teacher_classifier", "student_classifier")


# ---------------------------------------------------------------------------------------- MLM
def _load_mlm(flag: str, url: str):
    from distil.teacher.load import load_teacher

    try:
        return load_teacher(url, require_mlm_head=True)
    except (ValueError, OSError) as e:
        raise ConfigError(f"{flag} {url}: {e}") from e


def evaluate_mlm(
    teacher: str,
    student: str,
    cache: str,
    *,
    heldout_fraction: float = 0.05,
    batch_size: int = 64,
    max_batches: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``mlm_metrics`` of ``student`` on the heldout split of the teacher ``cache`` (the
    teacher's targets are the cached ones). The student must share the teacher's tokenizer and
    vocab, and the cache must be the teacher's, or the numbers compare different things."""
    from distil.student.model import MaskedLMForDistillation
    from distil.teacher.cache import TeacherCache, resolve_cache_url

    try:
        tc = TeacherCache(resolve_cache_url(cache))
    except (ValueError, FileNotFoundError, storage.NotCommittedError) as e:
        raise ConfigError(f"--cache {cache}: {e}") from e
    t = _load_mlm("--teacher", teacher)
    s = _load_mlm("--student", student)
    cached = tc.manifest.get("teacher", {}).get("weights_sha256")
    if cached and cached != t.weights_sha256:
        raise ConfigError(
            f"--cache {cache} holds the logits of another teacher (weights sha256 "
            f"{cached[:12]}…) than --teacher {teacher} ({t.weights_sha256[:12]}…): pass the "
            "cache built from this teacher"
        )
    t_vocab, s_vocab = t.model.config.vocab_size, s.model.config.vocab_size
    if s_vocab != t_vocab or s.tokenizer_identity != t.tokenizer_identity:
        raise ConfigError(
            f"--student {student} has another tokenizer than --teacher {teacher} (vocab "
            f"{s_vocab} vs {t_vocab}); a student distilled from this teacher shares its "
            "tokenizer: pass that student"
        )
    heldout = ReadPosition(split="heldout", heldout_fraction=heldout_fraction)
    if tc.plan(heldout, shuffle=False).rows == 0:
        raise ConfigError(
            f"--cache {cache} has no heldout rows at --heldout-fraction {heldout_fraction}"
        )
    model = MaskedLMForDistillation(s.model).to(device).eval()
    total = tc.num_batches(batch_size, heldout)
    if max_batches is not None:
        total = min(total, max_batches)
    with Progress("eval mlm (heldout)", total=total, unit="batch", log=log) as prog:
        out = mlm_metrics(
            model,
            tc.iter_batches(batch_size, heldout, shuffle=False),
            device=device,
            max_batches=max_batches,
            progress=prog,
        )
    return {
        "top1_agreement": out.get("top1_agreement"),
        "kl_coarse": out.get("kl"),
        "mlm_accuracy": out.get("mlm_accuracy"),
        "positions": out["positions"],
        "k": tc.k,
        "sparsity": tc.sparsity.get("mode"),
    }


# ---------------------------------------------------------------------------------- sentiment
def _read_review_set(
    url: str, split: str, max_rows: int | None = None
) -> tuple[list[str], list[int]]:
    """(texts, labels) of a review JSONL (``distil data samples`` format: id, text, label,
    split); ``split="all"`` keeps every row. ``max_rows``: a seeded random subset of that many
    rows, in file order (the same rows on every call)."""
    if max_rows is not None and max_rows < 1:
        raise ConfigError(f"max_rows must be at least 1 (got {max_rows})")
    fs, path = storage.get_fs(url)
    if not fs.exists(path):
        raise ConfigError(f"review set {url} does not exist")
    texts, labels = [], []
    with open_stream(url) as f:  # decompressed by its suffix, as every reader does
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if split != "all" and row.get("split") != split:
                continue
            texts.append(row["text"])
            labels.append(int(row["label"]))
    if not texts:
        raise ConfigError(f"review set {url} has no rows in split {split!r}")
    if max_rows is not None and len(texts) > max_rows:
        keep = sorted(random.Random(0).sample(range(len(texts)), max_rows))
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    return texts, labels


def load_classifier(
    url: str, cache_dir: str, *, max_length: int = 128, device: str = "cpu", name: str = "model"
):
    """A ``SequenceClassifier`` for a fine-tuned model dir; a dir without a classification head
    (e.g. a bare distilled student) is a clear error, not a random head scored as if trained."""
    from distil.sentiment.classifier import SequenceClassifier, fetch_model

    local, _ = fetch_model(url, cache_dir)
    cfg_path = os.path.join(local, "config.json")
    archs: list[str] = []
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            archs = json.load(f).get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(
            f"{name} classifier {url} has no sequence-classification head (architectures: "
            f"{archs or 'none'}): "
            "pass the dir `distil finetune` wrote, not the distilled student"
        )
    return SequenceClassifier(local, max_length=max_length, device=device)


def evaluate_sentiment(
    classifier_dirs: dict[str, str],
    review_files: dict[str, str],
    split: str | dict[str, str] = "validation",
    *,
    cache_dir: str = ".distil/models",
    max_length: int = 128,
    micro_batch_size: int = 64,
    device: str = "cpu",
    max_rows: int | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{model: {set: {accuracy, rows, correct}}}``. ``split``: which rows of each set to score
    (one for all sets, or per set name): ``validation`` for the set a model was tuned on, ``all``
    for a set no model saw. ``max_rows``: score a seeded subset of at most that many rows of
    each set (the same rows for every model)."""
    sets = {
        name: _read_review_set(
            url, split if isinstance(split, str) else split.get(name, "all"), max_rows
        )
        for name, url in review_files.items()
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for model_name, url in classifier_dirs.items():
        clf = load_classifier(url, cache_dir, max_length=max_length, device=device, name=model_name)
        out[model_name] = {}
        for set_name, (texts, labels) in sets.items():
            pred = []
            with Progress(f"eval {model_name} on {set_name}", total=len(texts), unit="review") as p:
                for i in range(0, len(texts), CHUNK):
                    chunk = texts[i : i + CHUNK]
                    pred.extend(clf.classify(chunk, micro_batch_size)["label_id"].tolist())
                    p.update(len(chunk))
            pred_a, gold = np.asarray(pred), np.asarray(labels)
            metrics = classification_metrics(
                pred_a, gold, max(len(clf.id2label), int(gold.max()) + 1)
            )
            hits = pred_a == gold
            out[model_name][set_name] = {
                **metrics,
                "rows": len(texts),
                "correct": int(hits.sum()),
                # per review, in set order: paired comparisons between models need it
                "hits": "".join("1" if h else "0" for h in hits),
            }
    return out


def paired_difference(hits_a: str, hits_b: str) -> dict[str, float]:
    """Accuracy of model A minus model B on the same reviews, with the standard error of that
    difference paired over the reviews (the spread of ``a_i - b_i``): two models that agree on
    most reviews differ by less noise than two independent accuracy estimates."""
    a = np.frombuffer(hits_a.encode(), np.uint8) - ord("0")
    b = np.frombuffer(hits_b.encode(), np.uint8) - ord("0")
    if len(a) != len(b) or not len(a):
        raise ValueError("paired difference needs the same reviews scored by both models")
    d = a.astype(np.float64) - b
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {
        "difference": float(d.mean()),
        "se": se,
        "z": float(d.mean() / se) if se else float("nan"),
    }


def review_sets(reviews: str, in_domain: str, out_of_domain: str) -> dict[str, str]:
    """URLs of the two sets, checked against the reviews dir's manifest."""
    manifest = storage.read_manifest(reviews)
    names = [f["name"] for f in manifest.get("files", [])]
    for flag, name in (("--in-domain", in_domain), ("--out-of-domain", out_of_domain)):
        if name not in names:
            raise ConfigError(f"{flag} {name}: not a set in {reviews} (sets: {', '.join(names)})")
    if in_domain == out_of_domain:
        raise ConfigError("--in-domain and --out-of-domain name the same set; pick another source")
    return {
        in_domain: storage.join(reviews, in_domain),
        out_of_domain: storage.join(reviews, out_of_domain),
    }


# ------------------------------------------------------------------------------------- stage
def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Both parts of the report (sentiment only when both classifiers and --reviews are given)."""
    result: dict[str, Any] = {"teacher": cfg.teacher, "student": cfg.student, "cache": cfg.cache}
    result["mlm"] = evaluate_mlm(
        cfg.teacher,
        cfg.student,
        cfg.cache,
        heldout_fraction=cfg.heldout_fraction,
        batch_size=cfg.batch_size,
        max_batches=cfg.max_batches,
        device=cfg.device,
    )
    clfs = {"teacher": cfg.teacher_classifier, "student": cfg.student_classifier}
    given = [k for k, v in clfs.items() if v]
    if given or cfg.reviews:
        if len(given) < 2 or not cfg.reviews:
            raise ConfigError(
                "sentiment eval needs --teacher-classifier, --student-classifier and --reviews "
                "together"
            )
        files = review_sets(cfg.reviews, cfg.in_domain, cfg.out_of_domain)
        acc = evaluate_sentiment(
            clfs,  # type: ignore[arg-type]
            files,
            {cfg.in_domain: "validation", cfg.out_of_domain: "all"},
            cache_dir=cfg.model_cache,
            max_length=cfg.max_length,
            device=cfg.device,
        )
        result["sentiment"] = {
            "in_domain": cfg.in_domain,
            "out_of_domain": cfg.out_of_domain,
            "accuracy": acc,
            "student_share": {
                s: acc["student"][s]["accuracy"] / max(acc["teacher"][s]["accuracy"], 1e-12)
                for s in files
            },
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    mlm = result["mlm"]
    lines = [
        f"MLM on {mlm['positions']} held-out masked positions ({mlm['sparsity']}, k={mlm['k']})"
    ]
    if mlm["positions"]:
        lines += [
            f"  top-1 agreement student/teacher  {mlm['top1_agreement']:.4f}",
            f"  KL(teacher || student), coarse   {mlm['kl_coarse']:.4g}",
        ]
    sent = result.get("sentiment")
    if sent:
        sets = ((sent["in_domain"], "in-domain"), (sent["out_of_domain"], "out-of-domain"))
        lines.append(f"{'sentiment accuracy':42} {'teacher':>9} {'student':>9} {'share':>7} rows")
        for s, kind in sets:
            t, st = sent["accuracy"]["teacher"][s], sent["accuracy"]["student"][s]
            lines.append(
                f"  {s + ' (' + kind + ')':40} {t['accuracy']:9.4f} {st['accuracy']:9.4f} "
                f"{sent['student_share'][s]:7.3f} {t['rows']}"
            )
        lines.append(
            f"{'macro precision / recall / F1, confusion [gold][pred]':42} "
            f"{'P':>7} {'R':>7} {'F1':>7}  confusion"
        )
        for s, _ in sets:
            for who in ("teacher", "student"):
                m = sent["accuracy"][who][s]
                lines.append(
                    f"  {s + ' ' + who:40} {m['precision_macro']:7.4f} {m['recall_macro']:7.4f} "
                    f"{m['f1_macro']:7.4f}  {m['confusion']}"
                )
    return "\n".join(lines)


def run(cfg: EvalConfig) -> None:
    """``distil eval``: print the table; write ``eval.json`` under ``--output`` when given."""
    result = evaluate(cfg)
    print(format_table(result))
    if cfg.output:
        url = storage.join(cfg.output, EVAL_JSON)
        storage.write_json(url, result)
        print(f"wrote {storage.redact(url)}", file=sys.stderr)
