"""distil.chain.plan on an in-memory store with the stages faked: the chain's order and wiring,
a rerun that runs nothing, --from/--only leaving finished steps alone and refusing unfinished
ones, and a failed gate that stops the chain with its verdict."""

from __future__ import annotations

import json
import uuid

import pytest
from fake_stages import FakeStages

from distil import storage
from distil.chain.config import PipelineConfig
from distil.chain.plan import Chain, latest_pointer
from distil.chain.steps import StepNotDone
from distil.quality.gate import GateFailed


def _chain(tiny_teacher_dir, stages: FakeStages, root: str, **kw) -> Chain:
    kw.setdefault("distil", {"max_steps": 6})
    cfg = PipelineConfig(
        root=root, corpus=["memory://c/corpus.jsonl"], train="memory://c/reviews.jsonl",
        teacher=str(tiny_teacher_dir), ray_address="", **kw,
    )  # fmt: skip
    chain = Chain(cfg)
    chain.runner.execute = stages
    return chain


@pytest.fixture
def root() -> str:
    return f"memory://chain-{uuid.uuid4().hex[:8]}"


def test_the_chain_runs_each_step_once_then_reuses_them_all(tiny_teacher_dir, root):
    stages = FakeStages()
    steps = _chain(tiny_teacher_dir, stages, root).run()
    modules = [argv[2] for argv in stages.ran]
    assert modules == [
        "distil.jobs.prepare", "distil.jobs.teacher_logits", "distil.jobs.distil",
        "distil.jobs.finetune", "distil.jobs.finetune", "distil.jobs.promote",
    ]  # fmt: skip
    assert steps["adapt_teacher"].skipped  # the tiny teacher has a trained MLM head
    gate = stages.ran[-1]
    assert gate[gate.index("--student") + 1] == steps["finetune_student"].output
    assert gate[gate.index("--pointer") + 1] == latest_pointer(root)
    # the section's settings reach their stage; the cache goes under the root by default
    distil = stages.ran[2]
    assert distil[distil.index("--max-steps") + 1] == "6"
    assert steps["logits"].output.startswith(f"{root}/cache/")
    # every Ray Train run keeps its checkpoints under the root, none in ~/ray_results
    for argv in (stages.ran[2], stages.ran[3], stages.ran[4]):
        assert argv[argv.index("--storage-path") + 1] == f"{root}/train"
    again = _chain(tiny_teacher_dir, stages, root).run()
    assert len(stages.ran) == 6 and all(st.reused for st in again.values() if not st.skipped)


def test_from_a_step_needs_the_steps_before_it_done(tiny_teacher_dir, root):
    with pytest.raises(StepNotDone, match="prepare is not done .*--from prepare"):
        _chain(tiny_teacher_dir, FakeStages(), root, from_stage="distil").run()
    stages = FakeStages()
    _chain(tiny_teacher_dir, stages, root).run()
    # a new gate threshold, the gate alone: only the gate job runs
    _chain(tiny_teacher_dir, stages, root, only="gate", gate={"min_teacher_share": 0.9}).run()
    assert [argv[2] for argv in stages.ran[6:]] == ["distil.jobs.promote"]
    # new distil settings, but --from the student's fine-tune: distil is not run behind its back
    with pytest.raises(StepNotDone, match="distil is not done"):
        _chain(
            tiny_teacher_dir, stages, root, from_stage="finetune_student",
            distil={"max_steps": 7},
        ).run()  # fmt: skip
    assert len(stages.ran) == 7


def test_a_failed_gate_stops_the_chain_with_its_verdict_and_publishes_nothing(
    tiny_teacher_dir, root
):
    with pytest.raises(GateFailed, match="nothing published: the student keeps 0.5") as failed:
        _chain(tiny_teacher_dir, FakeStages(gate_fails=True), root).run()
    assert failed.value.record["figures"] == {"teacher_share": 0.5}
    assert not storage.exists(latest_pointer(root))
    json.dumps(failed.value.record)


def test_the_record_says_what_ran_and_why_the_chain_stopped(tiny_teacher_dir, root, monkeypatch):
    from distil import tracking
    from distil.chain import plan

    # untracked, and whatever run group plan.run names stays in this test
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    monkeypatch.setenv(tracking.GROUP_ENV, "")  # (delenv of an unset variable undoes nothing)
    monkeypatch.setattr(plan, "Chain", lambda cfg: _chain(tiny_teacher_dir, FakeStages(True), root))
    with pytest.raises(GateFailed):
        plan.run(_chain(tiny_teacher_dir, FakeStages(), root).cfg)
    record = storage.read_json(f"{root}/pipeline.json")
    assert "quality gate failed" in record["stopped"]
    assert record["gate"]["passed"] is False and record["gate"]["figures"]["teacher_share"] == 0.5
    assert "gate" in record["steps"] and not record["steps"]["distil"]["reused"]
