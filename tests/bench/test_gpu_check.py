"""``bench/gpu_check.py`` (``make gpu-check``): the dry run goes through every stage's real entry
point on the CPU and prints the whole table; without ``--dry-run`` and without CUDA it stops at
once with a message saying what to do."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def _rows() -> tuple[str, ...]:
    return _module().ROWS


def _table(text: str) -> dict[str, str]:
    width = _module().ROW_WIDTH
    return {line[:width].strip(): line[width:] for line in text.splitlines()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_fails_fast_and_says_what_to_do():
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "sees no CUDA device" in out.stderr and "--dry-run" in out.stderr
    assert "GPU check on" not in out.stdout  # nothing ran


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dry_run_prints_every_row(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    table = out.stdout[out.stdout.index("GPU check on cpu (dry run") :]
    lines = _table(table)
    step_rows = [
        f"distil step: {what}, batch {b}"
        for b in (4, 8)
        for what in ("cached", "online", "cached vs online")
    ]
    unit_rows = list(_module().UNIT_ROWS)
    for row in [*_rows(), *step_rows, *unit_rows, "distil step: profile, batch 8"]:
        assert row in lines, f"row {row!r} missing from:\n{table}"
    # every figure was measured, except the GPU-only ones
    for row in [*_rows(), *step_rows, *unit_rows]:
        figure = lines[row]
        if row == "distil: cached, all GPUs":
            assert figure.startswith("n/a"), figure
        else:
            assert re.match(r"[\d,.]+ ?(tokens/s|ms/step|x|steps/s|rows/s|%)", figure), figure
    assert "MFU n/a" in lines["teacher logits: forward (bf16)"]
    # real tokens: the toy corpus's packed rows fill most of the fixed [8, 32] slots, not all
    assert re.search(
        r"\d+% of 256 slots real; input wait \d+%", lines["distil step: cached, batch 8"]
    )
    assert "masked copies" in lines["teacher logits: Ray job (bf16)"]
    assert lines["distil step: profile, batch 8"].startswith("n/a")  # CPU: no GPU kernels
    # the stages really ran: their outputs are in the scratch dir
    assert (tmp_path / "cache" / "latest.json").exists()
    assert (tmp_path / "sentiment" / "gpu-check" / "manifest.json").exists()
    assert list((tmp_path / "scored-warm").glob("run_id=gpu-check-warm/manifest.json"))


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unknown_skip_is_an_error_before_any_work(capsys):
    with pytest.raises(SystemExit) as e:
        _module().main(["--dry-run", "--skip", "online,bogus"])
    assert e.value.code == 2
    assert "unknown stage(s) ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _module().main(["--dry-run", "--distil-batches", "64,big"])
    assert e.value.code == 2
    assert "--distil-batches: comma-separated integers" in capsys.readouterr().err


def test_a_failed_stage_is_reported_and_the_independent_ones_still_run(tmp_path, monkeypatch):
    """The stages' own runs are covered by the dry run above; this pins the control flow of a
    short GPU lease: the logits stage breaks, so no distil row can run (they all read its
    cache), the forward, the fine-tune (from the teacher) and scoring still do, and the exit
    status is non-zero."""
    gc = _module()
    calls = []

    def broken_logits(*a, **k):
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    def distil(work, teacher, prepared, cache, s, mode, workers, cuda, batch=None):
        calls.append((mode, batch))
        (work / "students" / f"{mode}-{workers}").mkdir(parents=True)
        (work / "students" / f"{mode}-{workers}" / "config.json").write_text("{}")
        return 12.5

    def finetune(work, student, s, cuda):
        calls.append(("finetune", Path(student).name))
        return {"model": "m", "steps_per_s": 3.0}

    monkeypatch.setattr(gc, "make_teacher", lambda work, s, tok: str(work / "teacher"))
    monkeypatch.setattr(gc, "make_corpus", lambda work, teacher, s: str(work / "prepared"))
    monkeypatch.setattr(gc, "check_logits", broken_logits)
    monkeypatch.setattr(gc, "forward_rate", lambda teacher, s, cuda: (1000.0, None, "cpu"))
    monkeypatch.setattr(gc, "check_distil", distil)
    monkeypatch.setattr(gc, "check_finetune", finetune)
    scores = dict(beam_start=10.0, pipeline_start=20.0, beam_warm=30.0, pipeline_warm=10.0)
    monkeypatch.setattr(gc, "check_score", lambda work, model, s, cuda: scores)
    unit = {"rate": 500.0, "first": 1.0, "tokens": 100, "shapes": "eager"}
    monkeypatch.setattr(gc, "unit_rate", lambda *a: unit)
    out = tmp_path / "table.txt"
    args = ["--dry-run", "--work", str(tmp_path), "--out", str(out), "--distil-batches", "64"]
    with pytest.raises(SystemExit) as e:
        gc.main(args)
    assert "1 row(s) failed: teacher logits: Ray job (bf16)" in str(e.value.code)
    assert calls == [("finetune", "teacher")]  # no cached run, no sweep: from the teacher
    rows = _table(out.read_text())
    assert rows["teacher logits: Ray job (bf16)"].startswith("FAILED")
    assert "RuntimeError: CUDA error: out of memory" in rows["teacher logits: Ray job (bf16)"]
    assert rows["teacher logits: forward (bf16)"].startswith("1,000 tokens/s")
    assert rows["distil: cached teacher, 1 worker"].startswith("n/a")
    assert rows["score: Beam vs pipeline, start-up"].startswith("0.50x")
    assert rows["score: Beam vs pipeline, warm"].startswith("3.00x")


def test_stage_order_the_random_classifier_and_the_deadline(tmp_path, monkeypatch):
    """With the fine-tune skipped, scoring runs on a random classifier right after the distil
    steps (the acceptance rows first); past ``--deadline-s`` no stage starts, and the table
    says so."""
    gc = _module()
    calls = []

    def record(name, value):
        def fn(*a, **k):
            calls.append(name)
            return value

        return fn

    lg = {"cache": "c", "tokens": 1000, "seconds": 1.0, "steady": 900.0}
    scores = dict(beam_start=10.0, pipeline_start=20.0, beam_warm=30.0, pipeline_warm=10.0)
    unit = {"rate": 500.0, "first": 1.0, "tokens": 100, "shapes": "eager"}
    monkeypatch.setattr(gc, "make_teacher", lambda work, s, tok: str(work / "teacher"))
    monkeypatch.setattr(gc, "make_corpus", lambda work, teacher, s: str(work / "prepared"))
    monkeypatch.setattr(gc, "check_logits", record("logits", lg))
    monkeypatch.setattr(gc, "forward_rate", record("forward", (1000.0, None, "cpu")))
    monkeypatch.setattr(gc, "check_steps", record("steps", None))
    monkeypatch.setattr(gc, "make_classifier", record("random classifier", "m"))
    monkeypatch.setattr(gc, "check_score", record("score", scores))
    monkeypatch.setattr(gc, "unit_rate", record("unit", unit))
    monkeypatch.setattr(gc, "check_distil", record("ray", 12.5))
    out = gc.main(["--dry-run", "--work", str(tmp_path), "--skip", "finetune"])
    assert calls == ["logits", "forward", "steps", "random classifier", "score", "unit", "unit",
                     "ray"]  # fmt: skip
    rows = _table(out)
    assert rows["teacher logits: steady vs forward"].startswith("90%")
    assert "random weights" in rows["score: Beam pipeline, with start-up"]
    assert rows["fine-tune: 1 worker"].startswith("n/a")

    calls.clear()
    out = gc.main(["--dry-run", "--work", str(tmp_path), "--deadline-s", "0"])
    assert calls == []
    rows = _table(out)
    assert "not run: past --deadline-s 0" in rows["teacher logits: Ray job (bf16)"]
    assert "not run: past --deadline-s 0" in rows["score: Beam vs pipeline, warm"]
