"""distil.demo.plan: budgets come from the package, the plan wires each step's output into the
next step's flags, and a second run reuses every step — on an in-memory store, stages faked."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
import yaml
from fake_stages import FakeStages

import distil
import distil.quality.report
from distil import storage
from distil.chain.plan import plan_teacher
from distil.config import resolve_config_path
from distil.demo import Demo, DemoConfig, plan
from distil.packaged import PACKAGED_TEACHER

STEPS = ["prepare", "adapt_teacher", "logits", "distil", "finetune_teacher", "finetune_student",
         "gate", "score"]  # fmt: skip


def test_budgets_are_the_packaged_config_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for scale in ("tiny", "sample", "full"):
        path = plan.budgets_path(DemoConfig(scale=scale))
        assert path == resolve_config_path(f"demo/{scale}")
        assert path.is_relative_to(Path(distil.__file__).parent / "configs")
        assert {"prepare", "adapt", "logits", "distil", "finetune", "score"} <= set(
            yaml.safe_load(path.read_text())
        )
    own = tmp_path / "mine.yaml"
    own.write_text("prepare: {seq_len: 8}\n")
    assert Demo(DemoConfig(budgets=str(own), root="memory://x")).budgets == {
        "prepare": {"seq_len": 8}
    }


def write_fake_reviews(samples: str) -> None:
    """The three review sets the plan reads (it keeps the evaluation ones out of training)."""
    rows = {
        "movie_snippets.jsonl": [{"id": "m1", "text": "A fine film.", "label": 1}],
        "amazon_snippets.jsonl": [{"id": "a1", "text": "Broke in a day.", "label": 0}],
        "rotten_tomatoes.jsonl": [
            {"id": "r1", "text": "a FINE film", "label": 1},  # a movie snippet: not unseen
            {"id": "r2", "text": "Dull.", "label": 0},
        ],
    }
    for name, rs in rows.items():
        body = "".join(json.dumps(r) + "\n" for r in rs).encode()
        storage.write_bytes(storage.join(samples, "reviews", name), body)


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """Everything around the steps (samples, run.json, report) replaced by stubs."""
    monkeypatch.setattr(Demo, "_samples", lambda self: {})
    write_fake_reviews("memory://samples")
    monkeypatch.setattr(plan, "run_json", lambda *a, **k: {"wall_s": 1.0})
    monkeypatch.setattr(
        distil.quality.report, "build_report", lambda url, local_copy: url + "/report"
    )
    stages = FakeStages()
    root = f"memory://demo-plan-{uuid.uuid4().hex[:8]}"

    def demo():
        d = Demo(DemoConfig(scale="tiny", root=root, samples="memory://samples",
                            ray_address="", report_dir=str(tmp_path / "runs")))  # fmt: skip
        d.runner.execute = stages
        return d

    return demo, stages


def test_plan_wires_outputs_into_the_next_steps(fake_run):
    demo, stages = fake_run
    d = demo()
    out = d.run()
    assert list(d.steps) == STEPS and out["reused"] == []
    modules = [argv[2] for argv in stages.ran]
    assert modules == [
        "distil.jobs.prepare", "distil.jobs.adapt_teacher", "distil.jobs.teacher_logits",
        "distil.jobs.distil", "distil.jobs.finetune", "distil.jobs.finetune",
        "distil.jobs.promote", "distil.pipelines.score_reviews",
    ]  # fmt: skip
    assert all(argv[:2] == ["python", "-m"] for argv in stages.ran)
    s = d.steps
    prep, adapt, logits, student = (stages.ran[i] for i in range(4))
    # tiny: one Brown category file
    assert prep[prep.index("--input") + 1] == '["memory://samples/corpus/brown/brown-cm.jsonl"]'
    assert adapt[adapt.index("--input") + 1] == s["prepare"].output
    assert logits[logits.index("--teacher") + 1] == s["adapt_teacher"].output
    assert student[student.index("--cache") + 1] == s["logits"].output
    ft_student = stages.ran[5]
    assert ft_student[ft_student.index("--model") + 1] == s["distil"].output
    assert ft_student[ft_student.index("--teacher-cache") + 1] == "memory://task-cache"
    # the gate compares both classifiers, then moves the pointer the scoring reads
    gate = stages.ran[6]
    assert gate[gate.index("--student") + 1] == s["finetune_student"].output
    assert gate[gate.index("--teacher") + 1] == s["finetune_teacher"].output
    assert gate[gate.index("--pointer") + 1] == stages.ran[7][stages.ran[7].index("--model") + 1]
    assert "--latest-pointer" not in ft_student  # only a passing gate publishes the student
    assert s["score"].engine == "beam" and "--runner" in stages.ran[7]
    # the evaluation sets are kept out of both fine-tunes: Amazon and the unseen RT reviews
    for ft in stages.ran[4:6]:
        excluded = json.loads(ft[ft.index("--exclude") + 1])
        assert [u.rsplit("/", 1)[-1] for u in excluded] == [
            "amazon_snippets.jsonl",
            "rotten_tomatoes_unseen.jsonl",
        ]
    unseen = storage.read_bytes(json.loads(ft[ft.index("--exclude") + 1])[1]).decode()
    assert [json.loads(line)["id"] for line in unseen.splitlines()] == ["r2"]
    assert out["run_json"] == d.run_url + "/run.json"
    assert storage.read_json(out["run_json"]) == {"wall_s": 1.0}


def test_second_run_reuses_every_step(fake_run):
    demo, stages = fake_run
    first = demo()
    first.run()
    again = demo()
    out = again.run()
    assert len(stages.ran) == len(STEPS)  # nothing ran the second time
    assert out["reused"] == STEPS
    assert {k: v.output for k, v in again.steps.items()} == {
        k: v.output for k, v in first.steps.items()
    }


PINNED_BUDGETS = """
corpus: [news/]
prepare: {seq_len: 64}
adapt: {teacher: "packaged:all-minilm-l6-v2", token_budget: 4000}
logits: {k: 8}
distil: {max_steps: 6}
finetune: {max_steps: 4}
score_inputs: [movie_snippets.jsonl]
score: {batch_size: 256, quantize: false}
"""


def test_step_fingerprints_match_the_previous_implementation(monkeypatch, tmp_path):
    """Fixed budgets and root: every step's fingerprint and output URL are the ones the demo
    computed before it ran package modules (pinned from that implementation), so the outputs of
    earlier runs are found and reused, and the plan's wiring (args, upstream) did not move."""
    monkeypatch.setattr(Demo, "_samples", lambda self: {})
    write_fake_reviews("memory://samples")
    monkeypatch.setattr(plan, "run_json", lambda *a, **k: {"wall_s": 1.0})
    monkeypatch.setattr(
        distil.quality.report, "build_report", lambda url, local_copy: url + "/report"
    )
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(PINNED_BUDGETS)
    root = "memory://demo-plan-pinned"
    d = Demo(DemoConfig(scale="tiny", root=root, samples="memory://samples", ray_address="",
                        budgets=str(budgets), report_dir=str(tmp_path / "runs")))  # fmt: skip
    d.runner.execute = FakeStages()
    d.run()
    # pinned from the demo before it ran the pipeline chain (e04f7c5), with the budgets naming
    # the teacher as every packaged one does: unchanged up to distil; the fine-tunes keep their
    # checkpoints under the run's root (not ~/ray_results), the student's no longer moves
    # latest.json (the gate does), and scoring follows the gate
    assert {k: v.fingerprint for k, v in d.steps.items()} == {
        "prepare": "02a9f4bb227534d1", "adapt_teacher": "0fde2bbe7eff1175",
        "logits": "ed3fd14db00a3f4b", "distil": "2480e11b03e8a5be",
        "finetune_teacher": "8be88f756297cb61", "finetune_student": "76ea023e3ca50cbf",
        "gate": "b6b9ba67d1c6ec27", "score": "c2b280163c5d7303",
    }  # fmt: skip
    assert d.steps["score"].output == (
        f"{root}/tiny/score-c2b280163c5d7303/run_id=demo-e5330eab19b7ecf8"
    )
    # the demo names the sample reviews itself (the fine-tune stage has no default data), and
    # its fine-tune commands parse into valid stage configs
    from distil.config import parse_job_args
    from distil.sentiment.config import FinetuneConfig

    for name in ("finetune_teacher", "finetune_student"):
        argv = d.steps[name].argv
        assert argv[argv.index("--train") + 1] == "memory://samples/reviews/movie_snippets.jsonl"
        cfg = parse_job_args(FinetuneConfig, "", argv[3:])
        assert cfg.train == "memory://samples/reviews/movie_snippets.jsonl"


def test_task_distillation_adds_the_pool_step_between_the_fine_tunes(fake_run):
    """The sample budgets have a pool: `distil pool` labels it with the teacher classifier, and
    the student's fine-tune reads that pool and that teacher cache."""
    demo, stages = fake_run
    d = demo()
    d.budgets["pool"] = {"multiple": 1, "methods": ["synonym"]}
    d.budgets["finetune"] = {**d.budgets["finetune"], "max_train_examples": 64}
    d.run()
    assert list(d.steps) == [*STEPS[:5], "pool", *STEPS[5:]]
    pool, ft_teacher, ft_student = (
        d.steps["pool"],
        d.steps["finetune_teacher"],
        d.steps["finetune_student"],
    )
    assert pool.engine == "beam" and pool.argv[2] == "distil.pipelines.task_pool"
    a = pool.argv
    assert a[a.index("--teacher") + 1] == ft_teacher.output
    assert a[a.index("--max-train-examples") + 1] == "64"  # the rows the fine-tunes train on
    b = ft_student.argv
    assert b[b.index("--teacher-cache") + 1] == pool.output
    assert json.loads(b[b.index("--pool") + 1]) == [pool.result["pool"]]
    assert "--write-teacher-cache" not in ft_teacher.argv


@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory, real_tokenizer_dir):
    """A tiny ``BertModel`` (encoder, no MLM head) with the real tokenizer."""
    from bert_fixtures import save_tiny_bert
    from transformers import BertModel

    return save_tiny_bert(tmp_path_factory.mktemp("headless"), BertModel, real_tokenizer_dir)


def test_adaptation_runs_only_for_a_teacher_without_a_trained_head(tiny_teacher_dir, headless_dir):
    with_head = plan_teacher(str(tiny_teacher_dir), None)
    assert not with_head.adapt and with_head.reason == "the teacher has a trained MLM head"
    without = plan_teacher(str(headless_dir), None)
    assert without.adapt and without.reason == "the teacher has no MLM head"
    forced = plan_teacher(str(tiny_teacher_dir), True)
    assert forced.adapt and forced.reason == "forced by adapt_teacher: true"
    assert not plan_teacher(str(headless_dir), False).adapt
    assert with_head.weights_sha256 == forced.weights_sha256 != without.weights_sha256
    # the default demo teacher (packaged MiniLM encoder) has no head: the demo is unchanged
    assert plan_teacher(PACKAGED_TEACHER, None).adapt


def test_a_teacher_with_a_head_is_used_as_given(fake_run, tiny_teacher_dir, tmp_path):
    demo, stages = fake_run
    d = demo()
    d.budgets["adapt"] = {**d.budgets["adapt"], "teacher": str(tiny_teacher_dir)}
    out = d.run()
    s = d.steps
    assert list(s) == STEPS and out["skipped"] == ["adapt_teacher"]
    assert s["adapt_teacher"].output == str(tiny_teacher_dir) and s["adapt_teacher"].argv == []
    assert "distil.jobs.adapt_teacher" not in [argv[2] for argv in stages.ran]
    prep, logits, student, ft_teacher = stages.ran[:4]
    assert prep[prep.index("--tokenizer") + 1] == str(tiny_teacher_dir)  # the teacher's own
    assert logits[logits.index("--teacher") + 1] == str(tiny_teacher_dir)
    assert student[student.index("--teacher") + 1] == str(tiny_teacher_dir)
    assert ft_teacher[ft_teacher.index("--model") + 1] == str(tiny_teacher_dir)
    # forcing adaptation on the same teacher runs it and feeds its output downstream
    d2 = demo()
    d2.cfg = d2.cfg.model_copy(update={"adapt": True})
    d2.budgets = d.budgets
    d2.run()
    assert d2.steps["adapt_teacher"].argv[2] == "distil.jobs.adapt_teacher"
    assert d2.steps["logits"].argv[d2.steps["logits"].argv.index("--teacher") + 1] == (
        d2.steps["adapt_teacher"].output
    )


@pytest.mark.slow  # a real MLflow server
def test_a_tracked_demo_is_one_pipeline_run_holding_its_report(
    mlflow_server, monkeypatch, tmp_path
):
    from distil import tracking

    for k, v in mlflow_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"demo-{uuid.uuid4().hex[:6]}")
    # empty, not deleted: monkeypatch restores a variable it set, not one it found unset, and
    # the group tracked_group names here would stay for every later test's MLflow runs
    monkeypatch.setenv(tracking.GROUP_ENV, "")
    plan.tracked_group(DemoConfig(scale="tiny"))
    group = os.environ[tracking.GROUP_ENV]
    assert group.startswith("demo-tiny-")
    with tracking.stage_run("prepare", DemoConfig(scale="tiny")) as stage:
        assert stage.active
    (tmp_path / "report.html").write_text("<html>report</html>")
    plan.track_report({"wall_s": 12.5, "stages": {}}, str(tmp_path / "report.html"))

    client = tracking.make_client(mlflow_server.url)
    parent = tracking.group_tracker()
    assert parent.active
    run = client.get_run(parent.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == group
    assert run.data.metrics["wall_s"] == 12.5
    assert {a.path for a in client.list_artifacts(parent.run_id)} == {"run.json", "report.html"}
    child = client.get_run(stage.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
