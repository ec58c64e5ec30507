"""Cached mode with the cache's format-4 extras: the cosine term from the hidden-state sketch
(refused, with the fix, when the cache has none) and KD at every non-pad position."""

from __future__ import annotations

import pytest
import torch
from stage3_data import build_cache, cached_config

from distil import losses
from distil.train.data import fixed_shape
from distil.train.identity import MissingSketchError
from distil.train.recipe import DistilRecipe


@pytest.fixture(scope="module")
def no_sketch_cache(prepared_dir, tmp_path_factory, tiny_teacher_dir) -> str:
    root = str(tmp_path_factory.mktemp("caches"))
    return build_cache(prepared_dir, root, tiny_teacher_dir, hidden_sketch_dims=0)


@pytest.fixture(scope="module")
def all_positions_cache(prepared_dir, tmp_path_factory, tiny_teacher_dir) -> str:
    root = str(tmp_path_factory.mktemp("caches"))
    return build_cache(prepared_dir, root, tiny_teacher_dir, kd_positions="all")


def _recipe(tmp_path, cache, **kw) -> DistilRecipe:
    r = DistilRecipe(cached_config(tmp_path, cache, **kw), work_dir=str(tmp_path / "w"))
    r.setup(None)
    return r


def _loss(r: DistilRecipe, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The recipe's loss of a host batch of the cache contract, in the fixed shape it trains on."""
    total, parts = r.loss(fixed_shape(batch, r.shape))
    return total, r.named_parts(parts)


def test_alpha_cos_without_a_sketch_is_refused_at_setup_with_the_fix(tmp_path, no_sketch_cache):
    cfg = cached_config(tmp_path, no_sketch_cache)  # alpha_cos 1.0, the recipe's default
    assert cfg.alpha_cos == 1.0
    with pytest.raises(MissingSketchError) as e:
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)
    msg = str(e.value)
    assert "--hidden-sketch-dims" in msg and "--alpha-cos 0" in msg, msg
    import distil.jobs.distil as job  # no ray fixture: the job must refuse before Ray starts

    with pytest.raises(MissingSketchError, match="hidden-state sketch"):
        job.run(cfg)
    r = _recipe(tmp_path, no_sketch_cache, alpha_cos=0.0)
    parts = _loss(r, next(iter(r.data)))[1]
    assert "loss_cos" not in parts and r.final_metrics()["alpha_cos"] == 0.0


def test_cached_step_with_a_sketch_trains_the_cosine_term(tmp_path, topk_cache):
    r = _recipe(tmp_path, topk_cache, alpha_ce=0.0, alpha_mlm=0.0, alpha_cos=1.0)
    assert r.source.sketch is not None and tuple(r.source.sketch.shape) == (8, 32)
    batch = next(iter(r.data))
    r.student.eval()  # no dropout: the reference forward below sees the same hidden states
    assert batch["hidden_sketch"].shape == (int(batch["attention_mask"].sum()), 8)
    loss, parts = _loss(r, batch)
    assert 0 < parts["loss_cos"] < 2 and parts["loss"] == pytest.approx(parts["loss_cos"])
    # the term is the sketch cosine of the student's last hidden state
    with torch.no_grad():
        _, hidden = r.module(batch["input_ids"], batch["attention_mask"], batch["labels"])
    ref = losses.sketch_cosine_loss(
        hidden, batch["attention_mask"], r.source.sketch, batch["hidden_sketch"]
    )
    # ~2e-4: 1 - cos cancels, and the fixed-shape batch sums in another order (abs 1e-8)
    assert parts["loss_cos"] == pytest.approx(float(ref), rel=1e-5, abs=1e-8)
    loss.backward()
    grads = [p.grad for n, p in r.student.named_parameters() if "encoder.layer.0." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    r.student.train()
    out = r.train()
    assert out["alpha_cos"] == 1.0 and out["step"] == 3


def test_all_positions_cache_distils_every_token_and_masks_for_mlm(
    tmp_path, all_positions_cache, topk_cache
):
    r = _recipe(tmp_path, all_positions_cache)
    batch = next(iter(r.data))
    r.student.eval()  # no dropout: the reference forwards below see the same logits
    keep = batch["attention_mask"].bool()
    assert torch.equal(batch["kd_positions"], keep)
    assert batch["target_ids"].shape[0] == int(keep.sum()) > int((batch["labels"] != -100).sum())
    logits, _ = r.module(batch["input_ids"], batch["attention_mask"], batch["labels"], keep)
    assert logits.shape[0] == int(keep.sum())
    _, parts = _loss(r, batch)
    # MLM on the masked rows only: the same value as logits taken at the masked positions
    masked_logits, _ = r.module(batch["input_ids"], batch["attention_mask"], batch["labels"])
    mlm = losses.mlm_loss(masked_logits, batch["labels"][batch["labels"] != -100])
    assert parts["loss_mlm"] == pytest.approx(float(mlm), rel=1e-5)
    kd_all = losses.kd_topk(
        logits, batch["target_ids"], batch["target_logprobs"], 2.0, batch["target_logz"][:, 1]
    )
    # ~1e-9 (the tiny teacher is near-uniform): float32 rounding of another summation order
    assert parts["loss_kd"] == pytest.approx(float(kd_all), rel=1e-5, abs=1e-10)
    # held-out eval: accuracy on the masked positions, as with a masked cache of the same masking
    ev_all = r.evaluate()
    ev_masked = _recipe(tmp_path / "m", topk_cache).evaluate()
    assert ev_all["eval_positions"] == ev_masked["eval_positions"] > 0
    assert ev_all["eval_mlm_accuracy"] == pytest.approx(ev_masked["eval_mlm_accuracy"])
    assert ev_all["eval_kl_to_teacher"] > 0
