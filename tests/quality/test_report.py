from pathlib import Path

from distil import storage
from distil.quality import report


def _run(wall: float) -> dict:
    return {
        "run_id": "r1",
        "scale": "tiny",
        "wall_s": wall,
        "stages": {
            "prepare": {"wall_s": wall / 2, "reused": False, "metrics": {"tokens": 12345}},
            "logits": {"wall_s": wall / 4, "reused": True, "metrics": {"bytes_per_token": 7.5}},
        },
        "curves": {"distil": {"train_loss": [[1, 3.0], [2, 2.5]], "eval_kl": [[2, 1.1]]}},
        "comparison": {
            "rows": [{"metric": "params", "teacher": 100, "student": 60, "student / teacher": 0.6}]
        },
        "scores": {"histogram": {"edges": [0, 0.5, 1.0], "counts": {"movies": [3, 4]}}},
        "artifacts": {"shards": {"url": "s3://b/p", "fingerprint": "abc"}},
    }


def test_report_renders_numbers_from_run_json(tmp_path):
    storage.write_json(str(tmp_path / "run.json"), _run(321.5))
    url = report.build_report(str(tmp_path), local_copy=str(tmp_path / "local"))
    page = Path(url).read_text()
    assert "321.5" in page and "12,345" in page and "s3://b/p" in page
    for png in ("stage_times.png", "curves_distil.png", "score_distribution.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
        assert png in page
    assert (tmp_path / "local" / "report.html").exists()
    # different run, different numbers: nothing is a constant
    storage.write_json(str(tmp_path / "run.json"), _run(42.0))
    page2 = Path(report.build_report(str(tmp_path))).read_text()
    assert "42" in page2 and "321.5" not in page2


def test_report_shows_a_skipped_stage(tmp_path):
    run = _run(10.0)
    run["stages"]["adapt_teacher"] = {"wall_s": 0.0, "reused": False, "metrics": {},
                                      "skipped": "the teacher has a trained MLM head"}  # fmt: skip
    storage.write_json(str(tmp_path / "run.json"), run)
    page = Path(report.build_report(str(tmp_path))).read_text()
    assert "<td>skipped: the teacher has a trained MLM head</td>" in page


def test_curves_get_one_axis_each():
    # the loss and the held-out KL have different scales: each gets its own y axis
    fig = report.curve_figure(
        "distil", {"train_loss": [[1, 30.0], [2, 25.0]], "eval_kl_to_teacher": [[2, 0.9]], "x": []}
    )
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["train loss", "eval kl to teacher"]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.9]
    assert report.curve_figure("distil", {"train_loss": []}) is None
