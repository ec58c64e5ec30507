"""``distil promote`` (``distil.quality.gate``) with real classifiers exported the way
``distil finetune`` exports them (tiny random BERTs, wide init so that they disagree), the MLflow
fixture server and the S3 fixture: a student that passes is registered with its lineage and gets
the alias, the pointer moves; one that fails publishes nothing and says which figure failed; two
classifiers fine-tuned on different rows are not compared."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from bert_fixtures import tiny_classifier

from distil import model_registry, storage, tracking
from distil.quality.gate import GATE_RECORD, GateFailed, PromoteConfig, accuracy, run
from distil.sentiment.classifier import export_classifier, resolve_model_url
from distil.sentiment.config import FinetuneConfig

pytestmark = pytest.mark.slow  # a real MLflow server


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, make_planted_reviews) -> str:
    path = tmp_path_factory.mktemp("reviews") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_planted_reviews(400)))
    return str(path)


def _export(url: str, tokenizer_dir, seed: int, train: str, mlm: str, **split) -> str:
    """A classifier dir as distil finetune leaves it: its metrics.json records its config."""
    model, tok = tiny_classifier(tokenizer_dir, seed)
    config = FinetuneConfig(model=mlm, train=train, output="o", **split).model_dump()
    export_classifier(model, tok, url, {"accuracy": None, "config": config})
    return url


@pytest.fixture(scope="module")
def classifiers(s3_server, real_tokenizer_dir, train_file) -> dict[str, str]:
    """``better`` and ``worse`` by validation accuracy (seeds picked so they differ by > 5 points),
    ``int8_worse`` (one whose int8 path loses over a point on the validation rows), and ``mlm``, a
    committed dir standing in for the distilled student they were tuned from."""
    root = f"s3://{s3_server.bucket}/gate-{uuid.uuid4().hex[:6]}"
    mlm = _export(f"{root}/mlm", real_tokenizer_dir, 99, train_file, "packaged:all-minilm-l6-v2")
    cfg = PromoteConfig(student="-", teacher="-", output="-", model_cache=f"/tmp/{root[5:]}-cache")
    from distil.quality.gate import validation_rows

    rows = validation_rows(FinetuneConfig(model=mlm, train=train_file, output="o").model_dump())
    scored, int8_worse = [], None
    for seed in range(8):
        url = _export(f"{root}/clf-{seed}", real_tokenizer_dir, seed, train_file, mlm)
        fp32 = accuracy(url, rows, cfg, quantize=False, max_length=128)
        int8 = accuracy(url, rows, cfg, quantize=True, max_length=128)
        scored.append((fp32, url))
        if int8_worse is None and fp32 - int8 > 0.01:
            int8_worse = url
    scored.sort()
    assert scored[-1][0] - scored[0][0] > 0.05, scored
    assert int8_worse is not None, "no seed's int8 path lost a point: pick other seeds"
    return {"better": scored[-1][1], "worse": scored[0][1], "int8_worse": int8_worse,
            "mlm": mlm, "root": root}  # fmt: skip


@pytest.fixture
def tracked(mlflow_server, monkeypatch):
    for k, v in mlflow_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"gate-{uuid.uuid4().hex[:6]}")
    return mlflow_server


def test_a_passing_student_is_registered_and_a_failing_one_publishes_nothing(
    tracked, classifiers, tmp_path
):
    name = f"sentiment-{uuid.uuid4().hex[:6]}"
    pointer = str(tmp_path / "latest.json")
    common = dict(name=name, pointer=pointer, model_cache=str(tmp_path / "cache"))
    passing = PromoteConfig(
        student=classifiers["better"], teacher=classifiers["better"],
        output=str(tmp_path / "pass"), max_int8_drop=100, **common,
    )  # fmt: skip
    record = tracking.tracked("promote", run, passing)
    assert record["passed"] and record["failed"] == []
    assert record["figures"]["teacher_share"] == 1.0  # the student is the teacher here
    assert record["published"]["registered"] == f"models:/{name}/1"
    assert record["published"]["registered_mlm"] == f"models:/{name}-mlm/1"
    champion = model_registry.resolve(f"models:/{name}@champion")
    assert champion.source == classifiers["better"]
    assert champion.tags["distil.student_mlm"] == classifiers["mlm"]
    assert champion.tags["distil.gate.teacher_share"] == "1.0"
    assert resolve_model_url(pointer) == classifiers["better"]
    assert json.loads((tmp_path / "pass" / GATE_RECORD).read_text())["passed"] is True

    failing = PromoteConfig(
        student=classifiers["worse"], teacher=classifiers["better"],
        output=str(tmp_path / "fail"), **common,
    )  # fmt: skip
    with pytest.raises(GateFailed, match="below --min-teacher-share 0.97"):
        tracking.tracked("promote", run, failing)
    assert model_registry.resolve(f"models:/{name}@champion").version == "1"  # did not move
    assert resolve_model_url(pointer) == classifiers["better"]  # nor did the pointer
    kept = json.loads((tmp_path / "fail" / GATE_RECORD).read_text())
    assert kept["passed"] is False and kept["published"] is None
    assert kept["figures"]["teacher_share"] < 0.97

    # both verdicts are in MLflow: the record, and the failed run's figures as metrics
    client = tracking.make_client(tracked.url)
    exp = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    runs = {r.info.status: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"FINISHED", "FAILED"}
    for r in runs.values():
        assert GATE_RECORD in [a.path for a in client.list_artifacts(r.info.run_id)]
    assert runs["FAILED"].data.metrics["teacher_share"] < 0.97


def test_an_int8_path_too_far_from_fp32_fails_the_gate(classifiers, tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.URI_ENV, raising=False)
    cfg = PromoteConfig(
        student=classifiers["int8_worse"], teacher=classifiers["int8_worse"],
        output=str(tmp_path), pointer=str(tmp_path / "latest.json"),
        model_cache=str(tmp_path / "cache"),
    )  # fmt: skip
    with pytest.raises(GateFailed, match="above --max-int8-drop 0.5") as failed:
        run(cfg)
    assert failed.value.record["figures"]["int8_drop_points"] > 1
    assert not (tmp_path / "latest.json").exists()


def test_classifiers_tuned_on_different_rows_are_not_compared(
    classifiers, real_tokenizer_dir, train_file, tmp_path
):
    other = _export(
        storage.join(classifiers["root"], "other-split"), real_tokenizer_dir, 0, train_file,
        classifiers["mlm"], validation_fraction=0.2,
    )  # fmt: skip
    cfg = PromoteConfig(student=classifiers["better"], teacher=other, output=str(tmp_path),
                        model_cache=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(ValueError, match="validation_fraction differ"):
        run(cfg)
    assert not (tmp_path / GATE_RECORD).exists()
