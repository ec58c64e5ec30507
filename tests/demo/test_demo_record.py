"""distil.demo.record: run.json is read back from the run's committed artifacts (in-memory store;
the model comparison and histogram are stubbed, they have their own tests)."""

from __future__ import annotations

import uuid

import pytest

from distil import storage
from distil.chain.steps import Step
from distil.demo import DemoConfig, record
from distil.ops import stack

NAMES = ["prepare", "adapt_teacher", "logits", "distil", "finetune_teacher", "finetune_student",
         "score"]  # fmt: skip


@pytest.fixture
def finished_run(monkeypatch):
    run = f"memory://demo-record-{uuid.uuid4().hex[:8]}/demo/tiny"
    storage.commit(run + "/prepare", {"rows": 10, "tokens": 640, "padding_fraction": 0.1,
                                      "fingerprint": "p-fp"})  # fmt: skip
    storage.commit(run + "/adapt_teacher", {
        "metrics": {"heldout_loss": 2.0, "heldout_hist": [1, 2], "train_loss": 3.0},
        "fingerprint": "a-fp",
    })  # fmt: skip
    storage.commit(run + "/logits", {"positions": 5, "bytes_per_token": 3.0,
                                     "bytes_per_position": 4.0, "rows": 10, "fingerprint": "c-fp"})  # fmt: skip
    storage.commit(run + "/distil", {"fingerprint": "d-fp"})
    storage.write_json(run + "/distil/metrics.json", {
        "step": 6, "eval_loss": 1.0, "eval_teacher_agreement": 0.4, "tokens_seen": 500,
        "eval_history": [{"step": 3, "eval_kl_to_teacher": 0.5}, {"step": 6}],
        "train_history": [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}],
    })  # fmt: skip
    for name, acc in (("finetune_teacher", 0.8), ("finetune_student", 0.6)):
        storage.commit(f"{run}/{name}", {"metrics": {"accuracy": acc, "f1": 0.5, "loss": 1.0,
                                                     "config": {"max_length": 48}},
                                         "fingerprint": name + "-fp"})  # fmt: skip
    storage.commit(run + "/score", {"files": []})
    score = {"rows_in": 5, "scored": 4, "dead_letter": 1, "teacher_agreement": {"top1": 0.9},
             "model_fingerprint": "m-fp"}  # fmt: skip
    steps = {
        n: Step(n, ["python", "-m", f"distil.jobs.{n}", "--x", "1"],
                "beam" if n == "score" else "ray", f"{run}/{n}", f"{n}-step-fp",
                reused=n == "prepare", wall_s=2.0, result=score if n == "score" else {})
        for n in NAMES
    }  # fmt: skip
    calls = {}
    monkeypatch.setattr(record, "compare_models", lambda **kw: calls.setdefault("compare", kw))
    monkeypatch.setattr(record, "score_histogram", lambda *a: calls.setdefault("hist", a))
    monkeypatch.setattr(stack, "status", lambda: {"ray": {"healthy": True}})
    return run, steps, calls


def test_run_json_reads_the_committed_artifacts(finished_run):
    run, steps, calls = finished_run
    cfg = DemoConfig(scale="tiny", samples="memory://samples", ray_address="", start_stack=False)
    samples = {"summary": {"corpus": {"docs": 3, "words": 99}}, "wall_s": 1.5, "reused": True}
    out = record.run_json(cfg, run, steps, "2020-01-01T00:00:00Z", 12.3456, samples,
                          ood_max_rows=500)  # fmt: skip

    assert out["scale"] == "tiny" and out["wall_s"] == 12.35
    assert out["stack"]["ray_address"] == "embedded" and out["stack"]["local_stack"] is None
    assert out["run_id"].startswith("tiny-") and len(out["run_id"]) == len("tiny-") + 8
    st = out["stages"]
    assert st["samples"] == {"url": "memory://samples", "wall_s": 1.5, "reused": True,
                             "metrics": {"docs": 3, "words": 99}}  # fmt: skip
    assert st["prepare"] == {
        "url": f"{run}/prepare", "fingerprint": "prepare-step-fp", "wall_s": 2.0, "reused": True,
        "command": "python -m distil.jobs.prepare --x 1",
        "metrics": {"rows": 10, "tokens": 640, "padding_fraction": 0.1},
        "throughput": "320/s tokens",
    }  # fmt: skip
    assert st["adapt_teacher"]["metrics"] == {"heldout_loss": 2.0}
    assert st["logits"]["throughput"] == "5/s sequences"
    assert st["distil"]["metrics"] == {"eval_loss": 1.0, "eval_teacher_agreement": 0.4, "steps": 6}
    assert st["finetune_student"]["metrics"] == {"accuracy": 0.6, "f1": 0.5}
    assert st["score"]["metrics"] == {"rows_in": 5, "scored": 4, "dead_letter": 1,
                                      "teacher_top1": 0.9}  # fmt: skip
    art = out["artifacts"]
    assert {k: v["fingerprint"] for k, v in art.items()} == {
        "shards": "p-fp", "teacher": "a-fp", "cache": "c-fp", "student_mlm": "d-fp",
        "classifier_teacher": "finetune_teacher-fp", "classifier_student": "finetune_student-fp",
        "scored": "m-fp", "dead_letter": "",
    }  # fmt: skip
    assert out["curves"]["distil"] == {"train_loss": [[1, 3.0], [2, 2.5]],
                                       "eval_kl_to_teacher": [[3, 0.5]]}  # fmt: skip
    assert calls["compare"] == {
        "teacher_mlm": f"{run}/adapt_teacher", "student_mlm": f"{run}/distil",
        "teacher_clf": f"{run}/finetune_teacher", "student_clf": f"{run}/finetune_student",
        "student_agreement": 0.4, "reviews": "memory://samples/reviews/amazon_snippets.jsonl",
        "student_kl": None, "max_length": 48,  # the classifiers' fine-tune length
        "ood_max_rows": 500,  # the budgets' cap, passed through
    }  # fmt: skip
    assert out["comparison"] is calls["compare"]
    assert calls["hist"] == (f"{run}/score", steps["score"].result)


def test_run_json_names_the_stack_it_ran_on(finished_run):
    run, steps, _ = finished_run
    cfg = DemoConfig(ray_address="http://head:8265", start_stack=True)
    samples = {"summary": {"corpus": {"docs": 0, "words": 0}}, "wall_s": 0, "reused": False}
    out = record.run_json(cfg, run, steps, "t", 1.0, samples)
    assert out["stack"]["ray_address"] == "http://head:8265"
    assert out["stack"]["local_stack"] == {"ray": {"healthy": True}}


def test_per_s_and_pick():
    st = Step("x", [], "ray", "o", "f", wall_s=4.0)
    assert record.per_s(10_000, st) == "2,500/s"
    assert record.per_s(10, Step("x", [], "ray", "o", "f")) == ""
    assert record.pick({"acc": 1, "f1": 2, "acc_hist": [1], "loss": 3}, "acc", "f1") == {
        "acc": 1,
        "f1": 2,
    }


def test_run_json_when_adaptation_was_skipped(finished_run):
    """The teacher was used as given: no adapt manifest to read, and run.json says so."""
    run, steps, calls = finished_run
    given = "memory://teachers/bert-with-head"
    steps["adapt_teacher"] = Step("adapt_teacher", [], "ray", given, "given-fp",
                                  skipped="the teacher has a trained MLM head")  # fmt: skip
    cfg = DemoConfig(scale="tiny", samples="memory://samples", ray_address="", start_stack=False)
    samples = {"summary": {"corpus": {"docs": 3, "words": 99}}, "wall_s": 1.5, "reused": True}
    out = record.run_json(cfg, run, steps, "t", 1.0, samples)
    assert out["stages"]["adapt_teacher"] == {
        "url": given, "fingerprint": "given-fp", "wall_s": 0.0, "reused": False, "command": "",
        "metrics": {}, "throughput": "", "skipped": "the teacher has a trained MLM head",
    }  # fmt: skip
    assert "skipped" not in out["stages"]["prepare"]
    assert out["artifacts"]["teacher"] == {"url": given, "fingerprint": "given-fp"}
    assert calls["compare"]["teacher_mlm"] == given


def test_distil_throughput_counts_every_worker(finished_run):
    """A student trained on 2 workers: tokens/s is both workers' tokens, not rank 0's."""
    run, steps, _ = finished_run
    metrics = storage.read_json(run + "/distil/metrics.json")
    metrics.update(tokens_seen_global=1000, tokens_per_s_global=400.0, world_size=2)
    storage.write_json(run + "/distil/metrics.json", metrics)
    cfg = DemoConfig(scale="tiny", samples="memory://samples", ray_address="", start_stack=False)
    samples = {"summary": {"corpus": {"docs": 3, "words": 99}}, "wall_s": 1.5, "reused": True}
    st = record.run_json(cfg, run, steps, "2020-01-01T00:00:00Z", 1.0, samples)["stages"]
    assert st["distil"]["throughput"] == "500/s tokens"  # 1000 tokens over the step's 2 s
    assert st["distil"]["metrics"]["world_size"] == 2
    assert st["distil"]["metrics"]["tokens_per_s_global"] == 400.0
