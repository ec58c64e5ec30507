"""Cache format 4: teacher targets at every non-pad position (``kd_positions: all``) and the int8
hidden-state sketch (``hidden_sketch_dims``) that gives cached distillation its cosine term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from teacher_helpers import build_cache

from distil import losses, storage
from distil.data.readers.stream import ReadPosition
from distil.teacher.build import plan_cache
from distil.teacher.cache import TeacherCache
from distil.teacher.cache_format import FORMAT_VERSION
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher
from distil.teacher.sketch import SKETCH_FILE, from_npy, project, quantize, sketch_matrix

D = 8  # the tiny teacher's hidden size is 32


@pytest.fixture(scope="module")
def caches(prepared_dir, tiny_teacher_dir, tmp_path_factory) -> dict[str, TeacherCache]:
    root = str(tmp_path_factory.mktemp("sketch"))
    teacher = str(tiny_teacher_dir)
    masked = build_cache(prepared_dir, teacher, root, copies=2, hidden_sketch_dims=0)
    full = build_cache(
        prepared_dir, teacher, root, copies=2, kd_positions="all", hidden_sketch_dims=D
    )
    return {"masked": TeacherCache(masked), "all": TeacherCache(full)}


def _batches(cache: TeacherCache):
    return list(cache.iter_batches(5, ReadPosition(split="all"), shuffle=False))


def test_all_positions_cache_has_targets_at_every_token_and_the_same_masked_input(caches):
    full, masked = caches["all"], caches["masked"]
    m = full.manifest
    assert m["format_version"] == FORMAT_VERSION == 4
    assert m["kd_positions"] == "all" and m["sparsity"]["kd_positions"] == "all"
    assert m["target_positions"] == m["tokens"] * 2  # every token of both copies
    assert masked.manifest["target_positions"] == masked.manifest["positions"] < m["tokens"]
    assert m["positions"] == masked.manifest["positions"]  # same masking: same MLM positions
    assert m["bytes_per_token"] > masked.manifest["bytes_per_token"]
    for bf, bm in zip(_batches(full), _batches(masked), strict=True):
        assert torch.equal(bf["input_ids"], bm["input_ids"])
        assert torch.equal(bf["labels"], bm["labels"])
        keep = bf["attention_mask"].bool()
        assert torch.equal(bf["kd_positions"], keep)
        n_tok = int(keep.sum())
        assert bf["target_ids"].shape == bf["target_logprobs"].shape == (n_tok, 8)
        assert bf["target_logz"].shape == (n_tok, 2)
        # the rows at the masked positions are the masked cache's targets, in the same order
        rows = bf["labels"][keep] != -100
        assert torch.equal(bf["target_ids"][rows], bm["target_ids"])
        assert torch.allclose(bf["target_logprobs"][rows], bm["target_logprobs"])
        assert torch.allclose(bf["target_logz"][rows], bm["target_logz"])


def test_sketch_is_the_quantized_projection_of_the_teachers_last_hidden_state(
    caches, tiny_teacher_dir
):
    cache = caches["all"]
    info = cache.manifest["hidden_sketch"]
    assert info == {"dims": D, "seed": 0, "hidden_size": 32, "dtype": "int8", "file": SKETCH_FILE}
    r = from_npy(storage.read_bytes(storage.join(cache.url, SKETCH_FILE)))
    assert r.shape == (D, 32) and r.dtype == np.float32
    np.testing.assert_array_equal(r, cache.sketch_matrix)
    np.testing.assert_array_equal(r, sketch_matrix(0, D, 32))
    teacher = load_teacher(str(tiny_teacher_dir)).model.eval()
    for b in _batches(cache)[:3]:
        keep = b["attention_mask"].bool()
        sk = b["hidden_sketch"]
        assert sk.shape == (int(keep.sum()), D) and sk.abs().max() <= 127
        assert torch.all(sk.abs().amax(-1) == 127)  # each row scaled to the full int8 range
        with torch.no_grad():
            h = teacher.bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"])[0]
        ref = quantize(project(h[keep], torch.from_numpy(r))).float()
        # teacher batches are padded differently from these: equal up to one rounding step
        assert (sk - ref).abs().max() <= 1
        cos = torch.nn.functional.cosine_similarity(sk, project(h[keep], torch.from_numpy(r)))
        assert cos.min() > 0.999


def test_sketch_dims_above_the_hidden_size_are_refused(prepared_dir, tmp_path):
    cfg = LogitsConfig(
        input=prepared_dir, cache_root=str(tmp_path), teacher="unused", hidden_sketch_dims=33
    )
    with pytest.raises(ValueError, match=r"hidden_sketch_dims must be in 1\.\.32"):
        plan_cache(cfg, "sha", 32)
    with pytest.raises(ValueError, match="hidden_size"):
        plan_cache(cfg, "sha")
    with pytest.raises(ValueError):
        LogitsConfig(input="x", cache_root="y", teacher="z", hidden_sketch_dims=-1)


def test_int8_sketch_cosine_error_against_the_float_projection():
    """d = 64 int8 vs the float projection: the per-token cosine and the loss agree to 1e-3."""
    g = torch.Generator().manual_seed(0)
    hidden = 384
    h_t = torch.randn(4096, hidden, generator=g) * 3 + 1
    h_s = h_t + torch.randn(4096, hidden, generator=g) * 2  # a student partly aligned
    r = torch.from_numpy(sketch_matrix(0, 64, hidden))
    float_sketch = project(h_t, r)
    int8_sketch = quantize(float_sketch).float()
    cos_err = 1 - torch.nn.functional.cosine_similarity(int8_sketch, float_sketch)
    assert cos_err.max() < 2e-4, cos_err.max()  # measured ~4e-5 max
    mask = torch.ones(1, 4096, dtype=torch.long)
    exact = losses.sketch_cosine_loss(h_s[None], mask, r, float_sketch)
    stored = losses.sketch_cosine_loss(h_s[None], mask, r, int8_sketch)
    assert abs(float(stored - exact)) < 1e-3, (float(stored), float(exact))
    # and the sketch tracks the dense cosine (JL: ~1/sqrt(d) per token, far less on the mean)
    dense = losses.cosine_loss(h_s[None], h_t[None], mask)
    assert abs(float(stored - dense)) < 0.02, (float(stored), float(dense))
