"""The quality table and goals, from the rows' results alone (no torch): what
``scripts/quality.py`` prints and writes, and what the tests check the accounting of.

Per row and evaluation set: accuracy with its binomial standard error, macro-F1, balanced
accuracy (the unseen Rotten Tomatoes reviews are mostly positive: accuracy alone flatters a model
that says "positive") and the share of the teacher's accuracy kept (1.0 = all of it). The full
recipe is compared with the undistilled student on the same reviews: the difference, its standard
error paired over the reviews (``distil.quality.eval.paired_difference``), and the difference in
units of the undistilled row's own binomial standard error. The goals are the issue's acceptance
lines; they are reported as met or not, never adjusted.
"""

from __future__ import annotations

from typing import Any

IN_SHARE_GOAL = 0.97
OOD_SHARE_GOAL = 0.95
TEACHER_GOAL = 0.82
MARGIN_SE = 2.0


def _share(student: float | None, teacher: float | None) -> float | None:
    if student is None or not teacher:
        return None
    return student / teacher


def flat_rows(results: dict[str, dict[str, Any]], sets: list[str]) -> list[dict]:
    """One flat record per row (the teacher first): the table's cells, shares computed here."""
    teacher = results["teacher"]["sets"]
    rows = []
    for name, r in results.items():
        rec: dict[str, Any] = {
            "row": name,
            "what": r["what"],
            "top1_agreement": r["mlm"].get("top1_agreement"),
            "kl": r["mlm"].get("kl_coarse"),
            "heldout_positions": r["mlm"].get("positions"),
            "finetune_steps": r.get("finetune", {}).get("selection", {}).get("steps_trained"),
            "selected_step": r.get("finetune", {}).get("selection", {}).get("step"),
            "seconds": r["seconds"]["total"],
        }
        for s in sets:
            m = r["sets"][s]
            rec[s] = {
                "accuracy": m["accuracy"],
                "accuracy_se": m["accuracy_se"],
                "f1_macro": m["f1_macro"],
                "balanced_accuracy": m["balanced_accuracy"],
                "precision_macro": m["precision_macro"],
                "recall_macro": m["recall_macro"],
                "confusion": m["confusion"],
                "rows": m["rows"],
                "share": _share(m["accuracy"], teacher[s]["accuracy"]),
            }
        rows.append(rec)
    return rows


def comparisons(
    results: dict[str, dict[str, Any]], sets: list[str], pairs: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """``a`` minus ``b`` on each set, paired over the reviews, for each pair both rows have."""
    from distil.quality.eval import paired_difference

    out = []
    for a, b in pairs:
        if a not in results or b not in results:
            continue
        for s in sets:
            d = paired_difference(results[a]["sets"][s]["hits"], results[b]["sets"][s]["hits"])
            se_b = results[b]["sets"][s]["accuracy_se"]
            out.append(
                {
                    "a": a,
                    "b": b,
                    "set": s,
                    **d,
                    "b_accuracy_se": se_b,
                    "in_b_se": d["difference"] / se_b if se_b else None,
                }
            )
    return out


def goals(
    rows: list[dict[str, Any]], comps: list[dict[str, Any]], in_domain: str, ood: str
) -> dict[str, bool | None]:
    """The issue's goals; None where a row they need was not run."""
    by = {r["row"]: r for r in rows}
    full, teacher = by.get("full"), by["teacher"]
    out: dict[str, bool | None] = {
        f"teacher >= {TEACHER_GOAL} in domain": teacher[in_domain]["accuracy"] >= TEACHER_GOAL,
        f"full keeps >= {IN_SHARE_GOAL:.0%} of the teacher's in-domain accuracy": (
            full[in_domain]["share"] >= IN_SHARE_GOAL if full else None
        ),
        f"full keeps >= {OOD_SHARE_GOAL:.0%} of the teacher's accuracy on {ood}": (
            full[ood]["share"] >= OOD_SHARE_GOAL if full else None
        ),
    }
    for s in (in_domain, ood):
        c = next((c for c in comps if (c["a"], c["b"], c["set"]) == ("full", "no-distil", s)), None)
        out[f"full beats no-distil on {s} by > {MARGIN_SE:g} paired SE of the difference"] = (
            c["z"] > MARGIN_SE if c else None
        )
        out[f"full beats no-distil on {s} by > {MARGIN_SE:g} SE of no-distil's accuracy"] = (
            c["in_b_se"] > MARGIN_SE if c else None
        )
    return out


def _cell(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(rows: list[dict[str, Any]], sets: list[str], unseen: str | None) -> str:
    """The table as markdown (one line per row, the teacher first)."""
    head = ["row", "MLM top-1", "KL"]
    for s in sets:
        short = s.removesuffix(".jsonl")
        head += [f"{short} acc ± SE", "F1", "share"]
        if s == unseen:
            head.insert(len(head) - 1, "bal. acc")
    head += ["steps (best)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], _cell(r["top1_agreement"], ".3f"), _cell(r["kl"], ".4f")]
        for s in sets:
            m = r[s]
            cells += [f"{m['accuracy']:.4f} ± {m['accuracy_se']:.4f}", f"{m['f1_macro']:.4f}"]
            if s == unseen:
                cells.append(f"{m['balanced_accuracy']:.4f}")
            cells.append(f"{m['share']:.3f}")
        cells.append(f"{_cell(r['finetune_steps'], 'd')} ({_cell(r['selected_step'], 'd')})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_lines(comps: list[dict[str, Any]]) -> str:
    lines = [
        "| a − b | set | difference | paired SE | z | in SE of b |",
        "|---|---|---|---|---|---|",
    ]
    for c in comps:
        lines.append(
            f"| {c['a']} − {c['b']} | {c['set'].removesuffix('.jsonl')} | {c['difference']:+.4f} "
            f"| {c['se']:.4f} | {c['z']:.2f} | {_cell(c['in_b_se'], '.2f')} |"
        )
    return "\n".join(lines)


def goal_lines(g: dict[str, bool | None]) -> str:
    mark = {True: "met", False: "NOT met", None: "not run"}
    return "\n".join(f"- {k}: {mark[v]}" for k, v in g.items())


PAIRS = [
    ("full", "no-distil"),
    ("full", "general-only"),
    ("full", "task-only"),
    ("task-only", "no-distil"),
    ("general-only", "no-distil"),
]


def summarize(
    results: dict[str, dict[str, Any]],
    sets: list[str],
    in_domain: str,
    ood: str,
    int8: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{rows, table, comparisons, goals, results}``: everything the JSON holds about the rows."""
    rows = flat_rows(results, sets)
    comps = comparisons(results, sets, PAIRS)
    g = goals(rows, comps, in_domain, ood)
    if int8 is not None:
        g["full's int8 accuracy within 0.5 point of fp32 (distil score, validation split)"] = (
            abs(int8["difference"]) <= 0.005
        )
    unseen = next((s for s in sets if s.endswith("_unseen.jsonl")), None)
    table = markdown(rows, sets, unseen)
    return {
        "rows": rows,
        "table": table,
        "comparisons": comps,
        "comparisons_table": comparison_lines(comps),
        "int8": int8,
        "goals": g,
        "goals_text": goal_lines(g),
        "results": results,
    }
