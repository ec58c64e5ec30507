"""``distil score --model models:/NAME@champion``: the alias is resolved once, on the launcher,
through the MLflow Model Registry (the fixture server), and the version it pointed at is in the
run's lineage — the next run, after the alias moved, records the new one."""

from __future__ import annotations

import json
import uuid

import pytest
from score_fixtures import run_score

from distil import model_registry, storage


@pytest.mark.timeout(300)
def test_a_registry_alias_scores_with_the_version_it_names_and_records_it(
    mlflow_server, tiny_classifier_url, s3_url, tmp_path, monkeypatch
):
    for k, v in mlflow_server.env().items():
        monkeypatch.setenv(k, v)
    name = f"reviews-{uuid.uuid4().hex[:6]}"
    model_registry.register(name, tiny_classifier_url, {"distil.stage": "test"})
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                               for i, t in enumerate(["great film", "dull", "fine"])))  # fmt: skip
    out = f"{s3_url}/scored"

    # tracked as the nightly job runs it: the MLflow run has the version, the row accounting and
    # the inference latency distribution
    from distil import tracking
    from distil.pipelines.score_reviews import run
    from distil.score.config import ScoreConfig

    experiment = f"nightly-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    cfg = ScoreConfig(input=[str(reviews)], model=f"models:/{name}@champion", output=out,
                      run_id="r1", model_cache=str(tmp_path / "model-cache"), runner="FnApiRunner")  # fmt: skip
    first = tracking.tracked("score", run, cfg)
    assert first["model_version"] == f"models:/{name}/1"
    client = tracking.make_client(mlflow_server.url)
    [tracked] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert tracked.data.tags["distil.model_version"] == f"models:/{name}/1"
    metrics = tracked.data.metrics
    assert metrics["rows_in"] == metrics["scored"] == 3 and metrics["dead_letter"] == 0
    latency = [k for k in metrics if k.startswith("beam_metrics.batch_latency_ms.")]
    assert {k.rsplit(".", 1)[1] for k in latency} >= {"min", "mean", "max", "count"}, metrics
    assert first["model"] == tiny_classifier_url  # the version's model dir, not the alias
    assert first["rows_in"] == first["scored"] == 3
    committed = storage.read_json(storage.join(out, "run_id=r1", "summary.json"))
    assert committed["model_version"] == f"models:/{name}/1"

    model_registry.register(name, tiny_classifier_url, {"distil.stage": "test"})  # alias moves
    second = run_score(str(reviews), f"models:/{name}@champion", out, "r2", tmp_path, rescore=True)
    assert second["model_version"] == f"models:/{name}/2"

    plain = run_score(str(reviews), tiny_classifier_url, out, "r3", tmp_path, rescore=True)
    assert plain["model_version"] is None  # a plain URL: no registry version to record


@pytest.mark.timeout(120)
def test_an_alias_nobody_set_stops_the_run_before_any_row(mlflow_server, s3_url, tmp_path,
                                                          monkeypatch):  # fmt: skip
    for k, v in mlflow_server.env().items():
        monkeypatch.setenv(k, v)
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text(json.dumps({"id": "1", "text": "fine"}) + "\n")
    with pytest.raises(model_registry.RegistryError, match="@champion"):
        run_score(str(reviews), "models:/nobody-registered-this@champion", f"{s3_url}/o", "r1",
                  tmp_path)  # fmt: skip
    assert not storage.exists(f"{s3_url}/o/run_id=r1")
