"""The RunInference handler of ``distil score`` on Arrow batches of reviews, outside a pipeline:
results split back per batch, a row the model raises on flagged alone, the GPU's larger batches
in one forward pass, and a model held by the process for its next run."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from bert_fixtures import tiny_bert_config

from distil.pipelines import inference
from distil.pipelines.inference import ERROR, WORKER, ReviewClassifierHandler, batch_sizes
from distil.score.config import ScoreConfig
from distil.sentiment.classifier import export_classifier


def _cfg(tmp_path, model: str, **kw) -> ScoreConfig:
    base = dict(input=["x.jsonl"], model=model, output=str(tmp_path / "out"),
                model_cache=str(tmp_path / "cache"), max_length=64)  # fmt: skip
    return ScoreConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, real_tokenizer_dir):
    """A tiny classifier with 40 positions (a longer review makes it raise), exported."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = tiny_bert_config(num_labels=2, id2label={0: "negative", 1: "positive"},
                           label2id={"negative": 0, "positive": 1}, initializer_range=0.5,
                           max_position_embeddings=40)  # fmt: skip
    url = str(tmp_path_factory.mktemp("model"))
    model = BertForSequenceClassification(cfg).eval()
    manifest = export_classifier(model, AutoTokenizer.from_pretrained(real_tokenizer_dir), url, {})
    return url, manifest["fingerprint"]


def _batch(texts: list[str]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": [f"r{i}" for i in range(len(texts))], "text": texts})


def test_batch_sizes_are_larger_on_a_gpu_with_one_forward_per_batch(tmp_path):
    assert batch_sizes(_cfg(tmp_path, "m")) == (512, 64)
    assert batch_sizes(_cfg(tmp_path, "m", device="cuda")) == (4096, None)
    assert batch_sizes(_cfg(tmp_path, "m", device="cuda:1", batch_size=100)) == (100, None)
    both = _cfg(tmp_path, "m", batch_size=100, micro_batch_size=10)
    assert batch_sizes(both) == (100, 10)
    handler = ReviewClassifierHandler("m", "fp", _cfg(tmp_path, "m", batch_size=7), 1)
    kwargs = handler.batch_elements_kwargs()
    assert kwargs["min_batch_size"] == kwargs["max_batch_size"] == 7
    # Beam batches the review batches by their reviews, not by how many batches
    assert kwargs["element_size_fn"](_batch(["a", "b", "c"])) == 3


@pytest.mark.timeout(120)
def test_results_come_back_per_review_batch_and_a_failing_row_alone(tmp_path, model_dir):
    url, fp = model_dir
    handler = ReviewClassifierHandler(url, fp, _cfg(tmp_path, url, micro_batch_size=2), 1)
    model = handler.load_model()
    long = "this review is far too long for the model " * 8  # > 40 positions: raises
    batches = [_batch(["a fine film", "dull"]), _batch(["great", long, "slow going"])]
    results = list(handler.run_inference(batches, model))
    assert [r.example for r in results] == batches
    assert [len(r.inference["label_id"]) for r in results] == [2, 3]
    assert results[0].inference[ERROR] == [None, None]
    errors = results[1].inference[ERROR]
    assert errors[0] is None and errors[2] is None and "size" in errors[1]
    alone = model.classify(["a fine film", "dull", "great", "slow going"])
    got = np.concatenate([results[0].inference["probs"], results[1].inference["probs"][[0, 2]]])
    np.testing.assert_allclose(got, alone["probs"], atol=1e-5)
    assert {r.inference[WORKER] for r in results} == {inference.worker_id()}


@pytest.mark.timeout(120)
def test_the_process_keeps_the_loaded_model_for_its_next_run(tmp_path, model_dir):
    url, fp = model_dir
    first = ReviewClassifierHandler(url, fp, _cfg(tmp_path, url), 1).load_model()
    again = ReviewClassifierHandler(url, fp, _cfg(tmp_path, url), 1).load_model()
    assert again is first  # a second run in this process: loaded once
    other = ReviewClassifierHandler(url, fp, _cfg(tmp_path, url, max_length=32), 1).load_model()
    assert other is not first and other.max_length == 32
    assert len(inference._HELD) == 1  # the process holds one model at most
