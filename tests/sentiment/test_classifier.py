"""Model export, the latest pointer, fetch-once-and-verify, and the length-bucketed forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bert_fixtures import tiny_classifier

from distil import storage
from distil.sentiment.classifier import (
    SequenceClassifier,
    export_classifier,
    fetch_model,
    resolve_model_url,
    write_latest_pointer,
)


def _tiny(real_tokenizer_dir, initializer_range: float = 0.5):
    return tiny_classifier(real_tokenizer_dir, seed=1, initializer_range=initializer_range)


@pytest.mark.timeout(120)
def test_fetch_verifies_hashes_and_pulls_once(s3_url, real_tokenizer_dir, tmp_path):
    model, tok = _tiny(real_tokenizer_dir)
    url = storage.join(s3_url, "model")
    manifest = export_classifier(model, tok, url, {"accuracy": 0.5})
    pointer = storage.join(s3_url, "latest.json")
    write_latest_pointer(pointer, url, manifest)
    assert resolve_model_url(pointer) == url

    local, fp = fetch_model(pointer, str(tmp_path / "cache"))
    assert fp == manifest["fingerprint"]
    # pulled once: a second fetch is served from the verified local copy
    storage.remove(storage.join(url, "config.json"))
    assert fetch_model(url, str(tmp_path / "cache")) == (local, fp)

    # a tampered weight file is refused, not loaded
    storage.write_bytes(storage.join(url, "config.json"), b"{}")
    storage.write_bytes(storage.join(url, "model.safetensors"), b"not the weights")
    with pytest.raises(ValueError, match="sha256"):
        fetch_model(url, str(tmp_path / "other-cache"))


@pytest.mark.timeout(120)
def test_length_sorted_micro_batches_equal_one_row_at_a_time(real_tokenizer_dir, tmp_path):
    model, tok = _tiny(real_tokenizer_dir)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clf = SequenceClassifier(str(tmp_path), max_length=16)
    texts = ["short", "a somewhat longer review of a film", "x " * 40, "ok then", "fine"]
    ids, truncated = clf.tokenize(texts)
    assert truncated.tolist() == [False, False, True, False, False]
    assert len(ids[2]) == 16 and ids[2][-1] == tok.sep_token_id
    got = clf.logits(ids, micro_batch_size=2)
    with torch.no_grad():
        for i, row in enumerate(ids):
            want = model(input_ids=torch.from_numpy(row)[None]).logits[0].numpy()
            np.testing.assert_allclose(got[i], want, atol=1e-5)


@pytest.mark.timeout(120)
def test_int8_quantisation_stays_close(real_tokenizer_dir, tmp_path):
    model, tok = _tiny(real_tokenizer_dir, initializer_range=0.02)  # trained-model-like scale
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    texts = [f"review number {i} was {'good' if i % 2 else 'bad'} overall" for i in range(32)]
    fp32 = SequenceClassifier(str(tmp_path)).classify(texts)
    int8 = SequenceClassifier(str(tmp_path), quantize=True)
    assert "DynamicQuantizedLinear" in repr(int8.model)
    q = int8.classify(texts)
    diff = np.abs(q["probs"] - fp32["probs"]).max()
    assert 0 < diff < 0.02  # int8 really ran, and stayed close


@pytest.mark.timeout(120)
def test_device_is_checked_and_the_model_runs_there(real_tokenizer_dir, tmp_path):
    """``device`` moves the model and every micro-batch (on a GPU worker: cuda); a device this
    process cannot use, or int8 off the CPU, is refused up front with the reason."""
    model, tok = _tiny(real_tokenizer_dir)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clf = SequenceClassifier(str(tmp_path), device="cpu")
    assert next(clf.model.parameters()).device == clf.device == torch.device("cpu")
    with pytest.raises(ValueError, match="int8 quantisation runs on the CPU only"):
        SequenceClassifier(str(tmp_path), quantize=True, device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            SequenceClassifier(str(tmp_path), device="cuda")
    else:  # the GPU path gives the CPU's answer
        gpu = SequenceClassifier(str(tmp_path), device="cuda")
        texts = ["a fine film", "dull and long, far too long"]
        np.testing.assert_allclose(
            gpu.classify(texts)["probs"], clf.classify(texts)["probs"], atol=1e-4
        )


@pytest.mark.timeout(120)
def test_one_forward_per_batch_and_no_2d_mask_reaches_the_model(real_tokenizer_dir, tmp_path):
    """``micro_batch_size=None`` (the GPU default) runs the whole batch in one forward pass with
    the same logits; a micro-batch whose rows all have one length runs with no mask, a padded
    one with a 4-D mask (a 2-D mask is checked with ``.all()``: a device sync per forward)."""
    model, tok = _tiny(real_tokenizer_dir)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    clf = SequenceClassifier(str(tmp_path), max_length=16)
    masks = []
    clf.model.bert.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw["attention_mask"]), with_kwargs=True
    )
    texts = ["a fine film", "a dull film", "x " * 40, "a somewhat longer review of a film"]
    ids, _ = clf.tokenize(texts)
    by_pairs = clf.logits(ids, micro_batch_size=2)  # sorted: [3, 3] tokens, then [8, 16]
    assert masks[0] is None and masks[1].shape == (2, 1, 1, 16) and masks[1].dtype == torch.bool
    masks.clear()
    whole = clf.logits(ids, micro_batch_size=None)
    assert len(masks) == 1 and masks[0].shape == (4, 1, 1, 16)
    np.testing.assert_allclose(whole, by_pairs, atol=1e-5)
