"""The run plan of distil score, on local files without Beam: what plan_run decides under the
lease (the files still to score against the ledger, the model's labels, the --keep-columns),
that the plan is frozen and travels by pickle, and the ledger its commit leaves for the next."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
from bert_fixtures import tiny_classifier

from distil import storage
from distil.score import scored
from distil.score.commit import finalize_run
from distil.score.config import ScoreConfig
from distil.score.lease import acquire
from distil.score.plan import RunPlan, check_options, plan_run
from distil.sentiment.classifier import export_classifier


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_tokenizer_dir) -> str:
    model, tok = tiny_classifier(real_tokenizer_dir)
    url = str(tmp_path_factory.mktemp("model") / "classifier")
    export_classifier(model, tok, url, {"accuracy": None})
    return url


def _write(path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _plan(cfg: ScoreConfig, run_id: str, commit: bool = False) -> RunPlan:
    """Plan ``run_id`` under the output's lease; ``commit``: then commit it as a run that read
    no rows (the accounting adds up, 0 = 0 + 0), still under the lease."""
    attempt = scored.new_attempt()
    held = acquire(cfg.output, run_id, attempt, 60)
    try:
        plan = plan_run(cfg, run_id=run_id, attempt=attempt, date="2026-12-01",
                        inputs=cfg.input, held=held, torch_threads=1)  # fmt: skip
        if commit:
            finalize_run(plan, [], [], [], None)
        return plan
    finally:
        held.release()


def test_an_incremental_plan_skips_what_a_committed_run_scored(tmp_path, model_dir):
    inp, out = tmp_path / "in", str(tmp_path / "out")
    inp.mkdir()
    _write(inp / "a.jsonl", [{"id": "a", "text": "fine", "stars": 4}])
    _write(inp / "b.jsonl", [{"id": "b", "text": "dull", "stars": 1}])
    cfg = ScoreConfig(input=[str(inp)], model=model_dir, output=out, incremental=True,
                      keep_columns=["stars:int64"])  # fmt: skip
    first = _plan(cfg, "r1", commit=True)
    urls = [str(inp / "a.jsonl"), str(inp / "b.jsonl")]
    assert [u for u, _ in first.files] == urls
    assert [e["run_id"] for e in first.ledger] == ["r1", "r1"]
    assert first.keep == (("stars", "int64"),)
    assert first.id2label == {0: "negative", 1: "positive"}
    assert first.run_url == scored.run_dir(out, "r1")
    assert first.summary_fields()["keep_columns"] == ["stars:int64"]
    # the plan goes to the Beam workers by pickle, and nothing may change it on the way
    assert pickle.loads(pickle.dumps(first)) == first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.run_id = "other"  # type: ignore[misc]

    # r1's commit put both files in its ledger
    manifest = storage.read_manifest(first.run_url)
    assert [e["url"] for e in manifest["ledger"]] == urls
    assert manifest["dt"] == "2026-12-01" and manifest["summary"]["files_skipped"] == 0

    second = _plan(cfg, "r2")
    assert second.files == [] and second.files_skipped == 2
    _write(inp / "b.jsonl", [{"id": "b", "text": "dull, then not", "stars": 2}])
    third = _plan(cfg, "r3")
    assert [u for u, _ in third.files] == [urls[1]]
    assert third.files_changed == ({"url": urls[1], "previous_run_id": "r1"},)
    # --rescore plans every file again, ledger or not
    again = _plan(cfg.model_copy(update={"rescore": True}), "r4")
    assert [u for u, _ in again.files] == urls and not again.incremental


def test_options_that_cannot_run_together_are_refused():
    base = {"input": ["x.jsonl"], "model": "m", "output": "o"}
    with pytest.raises(ValueError, match="exclusive"):
        check_options(ScoreConfig(**base, quantize=True, bf16=True))
    with pytest.raises(ValueError, match="CPU-only"):
        check_options(ScoreConfig(**base, quantize=True, device="cuda"))
    assert check_options(ScoreConfig(**base)).bf16 is False
    assert check_options(ScoreConfig(**base, device="cuda")).bf16 is True
