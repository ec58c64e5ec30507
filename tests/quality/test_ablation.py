"""The quality ablation end to end at a tiny budget: a tiny random teacher, a code-built prepared
dataset, planted reviews; every row really distils, fine-tunes and is scored. What is checked is
the accounting (every row present, shares = student / teacher, the teacher's agreement 1.0,
reuse on a rerun), not the numbers a tiny random model reaches."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from distil import storage
from distil.quality.ablation import run
from distil.quality.config import ROWS, QualityConfig
from distil.quality.table import goals
from distil.sentiment.reviews import validation_mask

_spec = importlib.util.spec_from_file_location(
    "stage3_data", Path(__file__).parents[1] / "train" / "stage3_data.py"
)
stage3_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage3_data)

IN, OOD = "movie_snippets.jsonl", "amazon_snippets.jsonl"


def write_reviews(samples: Path, planted) -> None:
    reviews = samples / "reviews"
    reviews.mkdir(parents=True)
    for name, n, seed in ((IN, 160, 0), (OOD, 40, 1)):
        rows = planted(n, seed)
        for r, val in zip(rows, validation_mask([r["id"] for r in rows], 0.1), strict=True):
            r["split"] = "validation" if val else "train"
        (reviews / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    storage.commit(str(reviews), {"kind": "reviews", "files": [{"name": IN}, {"name": OOD}]})


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
        "steps": 3,
        "batch_size": 8,
        "finetune_steps": 3,
        "finetune_batch_size": 8,
        "finetune_max_length": 16,
        "threads": 1,
    }


def runnable_rows() -> list[str]:
    return list(ROWS)


def test_quality_rows_and_shares(tiny_setup):
    rows = runnable_rows()
    out = run(QualityConfig(**tiny_setup, rows=rows))
    by = {r["row"]: r for r in out["rows"]}
    assert list(by) == rows  # the teacher first, then ROWS' order
    t = by["teacher"]
    assert (t["top1_agreement"], t["kl"], t["in_domain_share"], t["ood_share"]) == (1.0, 0.0, 1, 1)
    for name in rows[1:]:
        r = by[name]
        assert r["heldout_positions"] > 0 and 0 <= r["top1_agreement"] <= 1 and r["kl"] >= 0
        assert r["in_domain_share"] == pytest.approx(
            r["in_domain_accuracy"] / t["in_domain_accuracy"]
        )
        assert r["ood_share"] == pytest.approx(r["ood_accuracy"] / t["ood_accuracy"])
        scored = out["results"][name]["rows_scored"]
        assert scored == out["results"]["teacher"]["rows_scored"]  # same sets for every row
        assert scored[OOD] == 40 and 0 < scored[IN] < 160  # OOD: all rows; in domain: validation
    distilled = [n for n in rows if ROWS[n].alphas is not None]
    for name in distilled:  # every distilled row ran the same budget, with its own alphas
        d = out["results"][name]["distil"]
        assert d["step"] == 3 and d["alpha_ce"] == ROWS[name].alphas["alpha_ce"]
        assert d["alpha_cos"] == ROWS[name].alphas["alpha_cos"]  # as configured
    assert out["results"]["no-distil"]["distil"]["steps"] == 0
    # the table has a line per row, and the JSON was written where --out defaults to
    table = out["table"].splitlines()
    assert sum(line.startswith(f"| {n} |") for n in rows for line in table) == len(rows)
    assert json.loads(Path(tiny_setup["work"], "quality.json").read_text())["rows"] == out["rows"]

    # a rerun reuses every committed row: same results, no new row dirs
    row_dirs = sorted(p.name for p in Path(tiny_setup["work"], "rows").iterdir())
    again = run(QualityConfig(**tiny_setup, rows=rows))
    assert again["rows"] == out["rows"]
    assert sorted(p.name for p in Path(tiny_setup["work"], "rows").iterdir()) == row_dirs


def test_goals_compare_full_with_the_baselines():
    base = {"in_domain_share": 0.98, "ood_share": 0.9}
    rows = [
        {"row": "full", "in_domain_accuracy": 0.8, "ood_accuracy": 0.7, "kl": 0.5, **base},
        {"row": "mlm-only", "in_domain_accuracy": 0.7, "ood_accuracy": 0.75, "kl": 0.9},
    ]
    g = goals(rows)
    assert list(g.values()) == [True, False, True, False, True, None, None, None]


def test_unknown_row_is_refused():
    with pytest.raises(ValueError, match="unknown row.*rows are teacher, full"):
        QualityConfig(rows="full,no-kd")
