"""The quality table end to end at a tiny budget: a tiny random teacher, a code-built prepared
dataset, planted reviews; every row really distils, fine-tunes (the task rows on a pool the real
Beam pipeline labels) and is scored. What is checked is the accounting (every row present, shares
= student / teacher, the teacher's agreement 1.0, the data discipline, reuse on a rerun), not the
numbers a tiny random model reaches."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from distil import storage
from distil.pipelines import score_reviews, task_pool
from distil.quality.ablation import Stages, run
from distil.quality.config import DEFAULT_ROWS, ROWS, QualityConfig
from distil.quality.table import goals
from distil.samples.reviews import text_key, validation_mask
from distil.sentiment.labelled_data import load_texts

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).parents[1] / "train" / "stage3_data.py"
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)

IN, OOD, UNSEEN = "movie_snippets.jsonl", "amazon_snippets.jsonl", "rotten_tomatoes.jsonl"


def write_reviews(samples: Path, planted) -> None:
    reviews = samples / "reviews"
    reviews.mkdir(parents=True)
    sets = {IN: planted(160, 0), OOD: planted(40, 1)}
    # "Rotten Tomatoes": 10 of the in-domain reviews (spelled otherwise) and 30 others
    sets[UNSEEN] = [
        {**r, "id": f"u{i}", "text": r["text"].upper() + "!"} for i, r in enumerate(sets[IN][:10])
    ] + [{**r, "id": f"v{i}"} for i, r in enumerate(planted(30, 2))]
    for name, rows in sets.items():
        for r, val in zip(rows, validation_mask([r["id"] for r in rows], 0.1), strict=True):
            r["split"] = "validation" if val else "train"
        (reviews / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage.commit(str(reviews), {"kind": "reviews", "files": [{"name": n} for n in sets]})


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_teacher_dir, real_tokenizer_dir, make_planted_reviews):
    root = tmp_path_factory.mktemp("quality")
    prepared = stage3_data.write_prepared(str(root / "prepared"), real_tokenizer_dir)
    write_reviews(root / "samples", make_planted_reviews)
    return {
        "work": str(root / "work"),
        "teacher": str(tiny_teacher_dir),
        "prepared": prepared,
        "samples": str(root / "samples"),
        "unseen": UNSEEN,
        "steps": 3,
        "batch_size": 8,
        "finetune_steps": 6,
        "finetune_batch_size": 8,
        "finetune_max_length": 16,
        "eval_every": 2,
        "patience": 1,
        "teacher_epochs": 1,
        "pool_multiple": 1,
        "pool_methods": "delete,shuffle",
        "threads": 1,
    }


STAGES = Stages(pool=task_pool.run, score=score_reviews.run)


@pytest.mark.timeout(900)
def test_quality_rows_shares_and_data_discipline(tiny_setup):
    rows = DEFAULT_ROWS
    out = run(QualityConfig(**tiny_setup, rows=rows), STAGES)
    by = {r["row"]: r for r in out["rows"]}
    assert list(by) == rows  # the teacher first, then ROWS' order
    sets = list(out["inputs"]["evaluation_sets"])
    unseen = UNSEEN.removesuffix(".jsonl") + "_unseen.jsonl"
    assert sets == [IN, OOD, unseen]
    # the unseen set is the "Rotten Tomatoes" rows that are not in-domain texts
    assert out["evaluation_notes"][unseen]["matched"] == 10
    t = by["teacher"]
    assert (t["top1_agreement"], t["kl"]) == (1.0, 0.0)
    assert all(t[s]["share"] == 1 for s in sets)
    for name in rows[1:]:
        r = by[name]
        if ROWS[name].alphas is not None:
            assert r["heldout_positions"] > 0 and 0 <= r["top1_agreement"] <= 1 and r["kl"] >= 0
        for s in sets:
            assert r[s]["share"] == pytest.approx(r[s]["accuracy"] / t[s]["accuracy"])
            assert 0 <= r[s]["f1_macro"] <= 1 and sum(map(sum, r[s]["confusion"])) == r[s]["rows"]
        scored = out["results"][name]["rows_scored"]
        assert scored == out["results"]["teacher"]["rows_scored"]  # same sets for every row
        assert scored[OOD] == 40 and scored[unseen] == 30 and 0 < scored[IN] < 160
        assert r["finetune_steps"] <= 6  # every student: the same most steps
    for name in ("general-only", "full"):  # general distillation ran its budget
        d = out["results"][name]["distil"]
        assert d["step"] == 3 and d["alpha_ce"] == ROWS[name].alphas["alpha_ce"]
    assert out["results"]["no-distil"]["distil"]["steps"] == 0
    # task rows learned from the pool, the others did not
    ft = {n: out["results"][n]["finetune"] for n in rows}
    assert ft["full"]["pool_examples"] == ft["task-only"]["pool_examples"] > 0
    assert ft["no-distil"]["pool_examples"] == ft["general-only"]["pool_examples"] == 0
    # data discipline: no training, validation or pool row is an evaluation text
    task = out["inputs"]["task"]
    evaluation = {
        text_key(json.loads(line)["text"])
        for s in (OOD, unseen)
        for line in Path(out["inputs"]["evaluation_sets"][s]).read_text().splitlines()
    }
    pool_rows, _ = load_texts([task["pool"]], "text")
    assert not {text_key(r["text"]) for r in pool_rows} & evaluation
    for name in rows:
        data = ft[name]["data"]
        assert data["dropped"].get("in_evaluation_set") == 0  # planted sets share no text
    # the paired comparisons and the int8 check are there; the table has a line per row
    assert {(c["a"], c["b"]) for c in out["comparisons"]} >= {("full", "no-distil")}
    assert set(out["int8"]) == {"fp32", "int8", "difference"} and out["int8"]["fp32"]["rows"] > 0
    table = out["table"].splitlines()
    assert sum(line.startswith(f"| {n} |") for n in rows for line in table) == len(rows)
    assert json.loads(Path(tiny_setup["work"], "quality.json").read_text())["rows"] == out["rows"]

    # a rerun reuses every committed row and the pool's labels: same results, no new dirs
    row_dirs = sorted(p.name for p in Path(tiny_setup["work"], "rows").iterdir())
    again = run(QualityConfig(**tiny_setup, rows=rows), STAGES)
    assert (
        again["rows"] == out["rows"]
        and again["inputs"]["task"]["teacher_cache"] == task["teacher_cache"]
    )
    assert sorted(p.name for p in Path(tiny_setup["work"], "rows").iterdir()) == row_dirs


@pytest.mark.timeout(900)
def test_curve_runs_the_full_row_at_each_pool_size(tiny_setup):
    """After the table (pool 1x): the curve at 0x and 1x; the 1x point is the table's row."""
    rows_before = {p.name for p in Path(tiny_setup["work"], "rows").iterdir()}
    out = run(QualityConfig(**tiny_setup, curve="0,1"), STAGES)
    points = out["curve"]
    assert [p["multiple"] for p in points] == [0, 1]
    assert points[0]["pool_rows"] == 0 < points[1]["pool_rows"]
    for p in points:
        for s in (IN, OOD):
            assert p[s]["share"] == pytest.approx(p[s]["accuracy"] / out["teacher"][s])
            assert p[s]["share_se"] > 0
    new = {p.name for p in Path(tiny_setup["work"], "rows").iterdir()} - rows_before
    assert len(new) == 1 and next(iter(new)).startswith("full-")  # only the 0x point is new
    png = Path(tiny_setup["work"], "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["table"].count("\n") == 3  # head, rule, two points


def test_training_rows_that_are_evaluation_texts_are_excluded(tiny_setup, tmp_path):
    """Planted sets share no text; here the unseen set holds a copy of an in-domain training
    review, the normalised match finds it, and the fine-tune drops it."""
    from distil.sentiment.config import FinetuneConfig
    from distil.sentiment.labelled_data import assemble

    movie = Path(tiny_setup["samples"], "reviews", IN)
    train_row = next(
        json.loads(line) for line in movie.read_text().splitlines() if '"train"' in line
    )
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"text": " " + train_row["text"].title() + " ."}) + "\n")
    data = assemble(
        FinetuneConfig(model="-", train=str(movie), output="-", exclude=[str(held)]), str(movie)
    )
    assert train_row["text"] not in {r["text"] for r in data.train + data.val}
    assert data.accounting["dropped"]["in_evaluation_set"] == 1


def test_goals_compare_full_with_no_distil():
    def row(name, acc_in, acc_ood):
        return {
            "row": name,
            "m": {"accuracy": acc_in, "share": acc_in / 0.85},
            "a": {"accuracy": acc_ood, "share": acc_ood / 0.8},
        }

    rows = [row("teacher", 0.85, 0.8), row("full", 0.84, 0.77), row("no-distil", 0.80, 0.76)]
    comps = [
        {"a": "full", "b": "no-distil", "set": "m", "z": 3.0, "in_b_se": 2.5},
        {"a": "full", "b": "no-distil", "set": "a", "z": 1.5, "in_b_se": 1.0},
    ]
    g = goals(rows, comps, "m", "a")
    assert list(g.values()) == [True, True, True, True, True, False, False]
    assert goals(rows[:1], [], "m", "a")["teacher >= 0.82 in domain"] is True


def test_unknown_row_is_refused():
    with pytest.raises(ValueError, match="unknown row.*rows are teacher, full"):
        QualityConfig(rows="full,no-kd")
