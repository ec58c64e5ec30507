"""Run report: ``report.html`` + PNGs, built only from a run's ``run.json`` and the artifacts it
names (nothing here is a constant: every figure is read from the run).

``distil report RUN_URL`` rebuilds it; the demo calls ``build_report`` at the end of a run.
"""

from __future__ import annotations

import html
import io
import json
import os
from typing import Any

from distil import storage

RUN_JSON = "run.json"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3g}"
        return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def curve_figure(name: str, curves: dict[str, list[list[float]]]):
    """One panel per series, sharing the step axis: train loss (a weighted sum of KD, MLM and
    cosine terms) and held-out KL live on different scales, and on one y axis the KL's trend
    would be flattened under the loss. None when no series has points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: v for k, v in curves.items() if v}
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series)), sharex=True)
    axes = [axes] if len(series) == 1 else list(axes)
    for ax, (label, points) in zip(axes, series.items(), strict=True):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None)
        ax.set_ylabel(label.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{name}: one axis per curve")
    axes[-1].set_xlabel("step")
    return fig


def _plots(run: dict[str, Any]) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    stages = [(k, v) for k, v in run.get("stages", {}).items() if v.get("wall_s") is not None]
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh([k for k, _ in stages], [v["wall_s"] for _, v in stages], color="#4c72b0")
        ax.set_xlabel("wall time (s)")
        ax.set_title("per-stage wall time (this run; reused stages show their original time)")
        out["stage_times.png"] = _png(fig)
        plt.close(fig)

    for name, curves in run.get("curves", {}).items():
        fig = curve_figure(name, curves)
        if fig is not None:
            out[f"curves_{name}.png"] = _png(fig)
            plt.close(fig)

    scores = run.get("scores", {})
    if scores.get("histogram"):
        hist = scores["histogram"]
        fig, ax = plt.subplots(figsize=(7, 3))
        edges = hist["edges"]
        width = edges[1] - edges[0]
        for label, counts in hist["counts"].items():
            ax.bar(edges[:-1], counts, width=width, align="edge", alpha=0.6, label=label)
        ax.set_xlabel("P(positive)")
        ax.set_ylabel("reviews")
        ax.set_title("score distribution of the scored reviews")
        ax.legend()
        out["score_distribution.png"] = _png(fig)
        plt.close(fig)
    return out


def render_html(run: dict[str, Any], images: list[str]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>distil run report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#eee}td:first-child{text-align:left}"
        "code{font-size:90%}</style></head><body>",
        f"<h1>distil run <code>{html.escape(run.get('run_id', '?'))}</code></h1>",
        f"<p>scale <b>{html.escape(str(run.get('scale', '?')))}</b>, started "
        f"{html.escape(str(run.get('started_at', '?')))}, total wall time "
        f"{_fmt(run.get('wall_s', 0.0))} s. Stack: {html.escape(json.dumps(run.get('stack', {})))}"
        "</p>",
    ]
    stage_rows = []
    for name, st in run.get("stages", {}).items():
        reused = "yes" if st.get("reused") else "no"
        row = {
            "stage": name,
            "reused": f"skipped: {st['skipped']}" if st.get("skipped") else reused,
        }
        row["wall time (s)"] = st.get("wall_s", "")
        row["throughput"] = st.get("throughput", "")
        row["key metrics"] = ", ".join(
            f"{k}={_fmt(v)}" for k, v in (st.get("metrics") or {}).items()
        )
        stage_rows.append(row)
    parts.append("<h2>Stages</h2>")
    parts.append(
        _table(stage_rows, ["stage", "reused", "wall time (s)", "throughput", "key metrics"])
    )
    comp = run.get("comparison")
    if comp:
        parts.append("<h2>Teacher vs student</h2>")
        metrics = comp.get("rows", [])
        parts.append(_table(metrics, ["metric", "teacher", "student", "student / teacher"]))
    parts.append("<h2>Figures</h2>")
    for img in images:
        parts.append(f"<p><img src='{html.escape(img)}' alt='{html.escape(img)}'></p>")
    parts.append("<h2>Lineage</h2>")
    art_rows = [
        {"artifact": k, "url": v.get("url", ""), "fingerprint": v.get("fingerprint", "")}
        for k, v in run.get("artifacts", {}).items()
    ]
    parts.append(_table(art_rows, ["artifact", "url", "fingerprint"]))
    parts.append(
        "<p>The scored rows carry <code>model_fingerprint</code> and <code>run_id</code>; the "
        "chain above (shards → cache → student → classifier → scores) is what produced them.</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(run_url: str, local_copy: str | None = None) -> str:
    """Write ``report.html`` and PNGs next to ``run.json`` (and into ``local_copy`` if given).
    Returns the report's URL."""
    run = storage.read_json(storage.join(run_url, RUN_JSON))
    images = _plots(run)
    page = render_html(run, sorted(images))
    files = {"report.html": page.encode(), **images}
    for name, data in files.items():
        storage.write_bytes(storage.join(run_url, name), data)
        if local_copy:
            os.makedirs(local_copy, exist_ok=True)
            with open(os.path.join(local_copy, name), "wb") as f:
                f.write(data)
    if local_copy:
        with open(os.path.join(local_copy, RUN_JSON), "w") as f:
            json.dump(run, f, indent=2, sort_keys=True)
    return storage.join(run_url, "report.html")
