"""The ablation's table and goals, from the rows' results alone (no torch): what
``scripts/quality.py`` prints and writes, and what the tests check the accounting of.

Shares are the student's accuracy over the teacher's on the same set (1.0 = all of it kept).
The goals are the issue's acceptance lines; they are reported as met or not, never adjusted.
"""

from __future__ import annotations

from typing import Any

IN_SHARE_GOAL = 0.97
OOD_SHARE_GOAL = 0.95


def _share(student: float | None, teacher: float | None) -> float | None:
    if student is None or not teacher:
        return None
    return student / teacher


def flat_rows(results: dict[str, dict[str, Any]], in_domain: str, ood: str) -> list[dict]:
    """One flat record per row (the teacher first): the table's cells, shares computed here."""
    teacher = results["teacher"]["accuracy"]
    rows = []
    for name, r in results.items():
        acc_in, acc_ood = r["accuracy"][in_domain], r["accuracy"][ood]
        rows.append(
            {
                "row": name,
                "what": r["what"],
                "top1_agreement": r["mlm"].get("top1_agreement"),
                "kl": r["mlm"].get("kl_coarse"),
                "heldout_positions": r["mlm"].get("positions"),
                "in_domain_accuracy": acc_in,
                "ood_accuracy": acc_ood,
                "in_domain_share": _share(acc_in, teacher[in_domain]),
                "ood_share": _share(acc_ood, teacher[ood]),
                "seconds": r["seconds"]["total"],
            }
        )
    return rows


def goals(rows: list[dict[str, Any]]) -> dict[str, bool | None]:
    """The issue's goals for the full recipe; None where a row it needs was not run."""
    by = {r["row"]: r for r in rows}
    full = by.get("full")
    out: dict[str, bool | None] = {
        f"full keeps >= {IN_SHARE_GOAL:.0%} of the teacher's in-domain accuracy": None,
        f"full keeps >= {OOD_SHARE_GOAL:.0%} of the teacher's out-of-domain accuracy": None,
    }
    if full:
        keys = list(out)
        out[keys[0]] = full["in_domain_share"] >= IN_SHARE_GOAL
        out[keys[1]] = full["ood_share"] >= OOD_SHARE_GOAL
    for other in ("mlm-only", "no-distil"):
        for col, label, better in (
            ("in_domain_accuracy", "in-domain accuracy", lambda a, b: a > b),
            ("ood_accuracy", "out-of-domain accuracy", lambda a, b: a > b),
            ("kl", "KL", lambda a, b: a < b),
        ):
            key = f"full beats {other} on {label}"
            o = by.get(other)
            out[key] = better(full[col], o[col]) if full and o else None
    return out


def _cell(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def markdown(rows: list[dict[str, Any]], in_domain: str, ood: str) -> str:
    """The table as markdown (one line per row, the teacher first)."""
    head = (
        "| row | MLM top-1 agreement | KL (coarse) | in-domain acc | OOD acc "
        "| in-domain share | OOD share |"
    )
    lines = [
        f"in-domain: {in_domain} (validation rows); out of domain: {ood} (all rows)",
        "",
        head,
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {_cell(r['top1_agreement'], '.4f')} | {_cell(r['kl'], '.4f')} "
            f"| {_cell(r['in_domain_accuracy'], '.4f')} | {_cell(r['ood_accuracy'], '.4f')} "
            f"| {_cell(r['in_domain_share'], '.3f')} | {_cell(r['ood_share'], '.3f')} |"
        )
    return "\n".join(lines)


def goal_lines(g: dict[str, bool | None]) -> str:
    mark = {True: "met", False: "NOT met", None: "not run"}
    return "\n".join(f"- {k}: {mark[v]}" for k, v in g.items())


def summarize(results: dict[str, dict[str, Any]], in_domain: str, ood: str) -> dict[str, Any]:
    """``{rows, table, goals, results}``: everything the JSON holds about the rows."""
    rows = flat_rows(results, in_domain, ood)
    g = goals(rows)
    return {
        "rows": rows,
        "table": markdown(rows, in_domain, ood),
        "goals": g,
        "goals_text": goal_lines(g),
        "results": results,
    }
