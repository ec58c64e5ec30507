"""The fixed-shape step against the ragged one it replaced: on CPU in fp32, the recipe's loss
and its gradients on the same batch equal the reference computed the old way — logits taken at
the boolean-masked positions of an unpadded batch, KD with the rest bucket from a masked
log-sum-exp over the vocabulary (the formula before it became memory-light) — within 1e-5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from stage3_data import cached_config, online_config

from distil import losses
from distil.data.readers.stream import ReadPosition
from distil.student.model import encoder_mask
from distil.train.data import BatchShape, fixed_shape
from distil.train.recipe import DistilRecipe


def _old_kl_rest_bucket(student_logits, target_ids, teacher_logp, t):
    """The rest bucket as it was computed before: a scatter of the kept ids over the vocabulary
    and a masked log-sum-exp of the student's other ids (two more [N, vocab] temporaries)."""
    log_q_all = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q = log_q_all.gather(-1, target_ids)
    real = torch.isfinite(teacher_logp)
    p = teacher_logp.exp().masked_fill(~real, 0.0)
    support = (p * (teacher_logp.masked_fill(~real, 0.0) - log_q)).sum(-1)
    kept = torch.zeros_like(log_q_all).scatter_add_(-1, target_ids, real.float()) > 0
    has_rest = kept.sum(-1) < log_q_all.shape[-1]
    s_q = log_q.exp().masked_fill(~real, 0.0).sum(-1)
    floor = torch.full_like(log_q_all[:, :1], -80.0)
    lse_rest = torch.logsumexp(torch.cat([log_q_all.masked_fill(kept, -torch.inf), floor], -1), -1)
    log_q_rest = torch.where(s_q < 0.5, torch.log1p(-s_q.clamp(max=0.5)), lse_rest)
    s_p = p.sum(-1)
    p_rest = torch.where(has_rest, (1.0 - s_p).clamp_min(0.0), 0.0)
    log_p_rest = torch.log1p(-s_p.clamp(max=1.0 - 1e-7))
    return support + torch.where(p_rest > 0, p_rest * (log_p_rest - log_q_rest), 0.0)


def _old_loss(r: DistilRecipe, batch: dict) -> torch.Tensor:
    """The recipe's loss as it was: ragged batch, boolean indexing, plain means."""
    cfg, labels = r.cfg, batch["labels"]
    logits, hidden = r.module(batch["input_ids"], batch["attention_mask"], labels)
    total = logits.sum() * 0.0
    if cfg.alpha_mlm > 0:
        total = total + cfg.alpha_mlm * F.cross_entropy(logits.float(), labels[labels != -100])
    if cfg.mode == "online":
        with torch.no_grad():
            t_hidden = r.source.teacher.bert(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )[0]
            t_logits = r.source.teacher.cls(t_hidden[labels != -100])
        if cfg.alpha_ce > 0:
            total = total + cfg.alpha_ce * losses.kd_dense(logits, t_logits, cfg.temperature)
        if cfg.alpha_cos > 0:
            keep = batch["attention_mask"].bool()
            cos = F.cosine_similarity(hidden[keep], t_hidden[keep], dim=-1)
            total = total + cfg.alpha_cos * (1 - cos).mean()
        return total
    t = cfg.temperature
    j = r.source.cache.kd_temperatures.index(t)
    log_p = losses.teacher_logprobs_at(batch["target_logprobs"], t, batch["target_logz"][:, j])
    if r.source.sparsity["mode"] == "sampled":
        kd = losses.kd_sampled(
            logits,
            batch["target_ids"],
            batch["target_logprobs"],
            batch["target_counts"],
            t,
            sample_temperature=r.source.sparsity.get("temperature"),
            log_partition=batch["target_logz"][:, j],
        )
    else:
        kd = t * t * _old_kl_rest_bucket(logits, batch["target_ids"], log_p, t).mean()
    total = total + cfg.alpha_ce * kd
    keep = batch["attention_mask"].bool()
    s = hidden[keep].float() @ r.source.sketch.T
    cos = F.cosine_similarity(s, batch["hidden_sketch"], dim=-1)
    return total + cfg.alpha_cos * (1 - cos).mean()


def _grads(r: DistilRecipe, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [(n, p) for n, p in r.student.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {n: g for (n, _), g in zip(params, grads, strict=True) if g is not None}


def _perturb(r: DistilRecipe) -> None:
    """Move the student away from the (near-uniform) tiny teacher, so every term is sizeable."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        bias = r.student.cls.predictions.decoder.bias
        bias += 3 * torch.randn(bias.shape, generator=g)
        for p in r.student.bert.encoder.parameters():
            p += 0.05 * torch.randn(p.shape, generator=g)


@pytest.mark.parametrize(
    "mode,cache_fixture", [("cached", "topk_cache"), ("cached", "sampled_cache"), ("online", None)]
)
def test_fixed_shape_loss_and_gradients_equal_the_ragged_step(
    request, mode, cache_fixture, tmp_path, prepared_dir, tiny_teacher_dir
):
    if mode == "cached":
        cfg = cached_config(tmp_path, request.getfixturevalue(cache_fixture), temperature=2.0)
    else:
        cfg = online_config(tmp_path, prepared_dir, tiny_teacher_dir)
    r = DistilRecipe(cfg, work_dir=str(tmp_path / "w"))
    r.setup(None)
    _perturb(r)
    r.student.eval()  # no dropout: both computations see the same forward
    if mode == "online":
        host = next(
            r.source.train_data.iter_batches(
                cfg.batch_size, ReadPosition(seed=cfg.seed, heldout_fraction=cfg.heldout_fraction)
            )
        )
    else:
        host = next(iter(r.data))
    assert int(host["attention_mask"].sum()) < host["attention_mask"].numel()  # has padding
    fixed = fixed_shape(host, r.shape)
    assert fixed["input_ids"].shape == (cfg.batch_size, r.shape.seq_len)
    assert fixed["target_index"].shape == (cfg.batch_size * r.shape.slots,)
    new, parts = r.loss(fixed)
    old = _old_loss(r, host)
    assert float(new) > 0.1  # the terms are sizeable, so the comparison means something
    assert float(new) == pytest.approx(float(old), rel=1e-5, abs=1e-5)
    assert float(parts[0]) == pytest.approx(float(new), rel=1e-6)
    g_new, g_old = _grads(r, new), _grads(r, old)
    assert set(g_new) == set(g_old)
    for name in g_old:
        torch.testing.assert_close(g_new[name], g_old[name], rtol=1e-5, atol=1e-5, msg=name)


def test_batch_shape_fits_every_masked_row_and_pads_to_the_fixed_count(topk_cache, tmp_path):
    r = DistilRecipe(cached_config(tmp_path, topk_cache), work_dir=str(tmp_path / "w"))
    r.setup(None)
    shape = r.shape
    assert shape.seq_len == 32 and shape.slots == round(0.15 * 32) + 1
    for i, host in enumerate(r.data):
        if i == 4:
            break
        fixed = fixed_shape(host, shape)
        n = int((host["labels"] != -100).sum())
        assert fixed["n_targets"] == n == int(fixed["target_weight"].sum())
        assert fixed["n_tokens"] == int(host["attention_mask"].sum())
        # every real slot points at a masked position holding its label, in row-major order
        real = fixed["target_weight"] > 0
        idx = fixed["target_index"][real]
        row, col = idx // shape.seq_len, idx % shape.seq_len
        assert torch.equal(host["labels"][row, col], fixed["target_labels"][real])
        assert "labels" not in fixed  # the step reads target_labels: [B, L] labels stay home
        # the sketch goes to the device as the cache's int8 values, not 4x as float32
        assert fixed["hidden_sketch"].dtype == torch.int8
        keep = fixed["attention_mask"].bool()
        assert torch.equal(fixed["hidden_sketch"][keep].float(), host["hidden_sketch"])
        assert torch.equal(fixed["target_ids"][real], host["target_ids"])
        assert torch.isinf(fixed["target_logprobs"][~real]).all()
    # a row with more targets than slots widens the slots instead of dropping any
    narrow = BatchShape(shape.batch_size, shape.seq_len, 1, shape.pad_id)
    wide = fixed_shape(host, narrow)
    assert wide["n_targets"] == int(wide["target_weight"].sum())
    assert wide["target_index"].shape[0] > shape.batch_size


def _todays_log_softmax_at(logits: torch.Tensor, t: float) -> torch.Tensor:
    z = logits.to(torch.float32, copy=True)
    if t != 1.0:
        z.div_(t)
    return F.log_softmax(z, dim=-1)


def _todays_forward(obj, batch, teacher_logits=None, teacher_hidden=None) -> torch.Tensor:
    """``DistillationObjective.forward`` as it was before the log-softmaxes went: one float32
    ``[N, vocab]`` log-softmax per temperature, losses gathered from them, ``logits.sum() *
    0.0`` added, and a batch-level ``unpadded``."""
    logits, hidden = obj.student(
        batch["input_ids"], batch["attention_mask"], index=batch["target_index"],
        unpadded=batch["unpadded"],
    )  # fmt: skip
    weight = batch["target_weight"]
    zero = logits.sum() * 0.0
    mlm = kd = cos = zero
    log_q_1 = _todays_log_softmax_at(logits, 1.0) if obj.alpha_mlm > 0 or obj.t == 1 else None
    if obj.alpha_mlm > 0:
        labels = batch["target_labels"]
        nll = -log_q_1.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        mlm = losses.weighted_mean(nll, labels.ne(-100))
    if obj.alpha_ce > 0:
        t = obj.t
        log_q_t = log_q_1 if t == 1.0 else _todays_log_softmax_at(logits, t)
        if teacher_logits is not None:
            log_p = _todays_log_softmax_at(teacher_logits, t)
            kd = t * t * losses.weighted_mean((log_p.exp() * (log_p - log_q_t)).sum(-1), weight)
        else:
            logz = None if obj.logz_column is None else batch["target_logz"][:, obj.logz_column]
            log_q = log_q_t.gather(-1, batch["target_ids"])
            if obj.sparsity.get("mode") == "sampled":
                kd = losses.kd_sampled(
                    logits, batch["target_ids"], batch["target_logprobs"],
                    batch["target_counts"], t, obj.sparsity.get("temperature"), logz, weight,
                    log_q=log_q,
                )  # fmt: skip
            else:
                kd = losses.kd_topk(
                    logits, batch["target_ids"], batch["target_logprobs"], t, logz, weight,
                    log_q=log_q,
                )  # fmt: skip
    if obj.alpha_cos > 0:
        mask = batch["attention_mask"]
        if teacher_hidden is not None:
            cos = losses.cosine_loss(hidden, teacher_hidden, mask)
        elif obj.sketch is not None:
            sketch = batch["hidden_sketch"].float()
            cos = losses.sketch_cosine_loss(hidden, mask, obj.sketch, sketch)
    return obj.alpha_mlm * mlm + obj.alpha_ce * kd + obj.alpha_cos * cos + zero


def _todays_loss(r: DistilRecipe, fixed: dict) -> torch.Tensor:
    # a batch with a short row, or the short last one of an epoch, ran with the mask
    batch = {**fixed, "unpadded": bool(fixed["attention_mask"].all())}
    if r.cfg.mode != "online":
        return _todays_forward(r.objective, batch)
    with torch.no_grad():
        mask = encoder_mask(r.source.teacher, batch["attention_mask"], batch["unpadded"])
        t_hidden = r.source.encoder(input_ids=batch["input_ids"], attention_mask=mask)[0]
        rows = t_hidden.reshape(-1, t_hidden.shape[-1]).index_select(0, batch["target_index"])
        t_logits = r.source.head(rows) if r.cfg.alpha_ce > 0 else None
    return _todays_forward(r.objective, batch, t_logits, t_hidden if r.cfg.alpha_cos > 0 else None)


CASES = {
    "topk T=2": ("cached", "topk_cache", {}),
    "sampled T=2": ("cached", "sampled_cache", {}),
    "topk T=1": ("cached", "topk_cache", {"temperature": 1.0}),
    "topk, KD only": ("cached", "topk_cache", {"alpha_mlm": 0.0, "alpha_cos": 0.0}),
    "topk, MLM only": ("cached", "topk_cache", {"alpha_ce": 0.0, "alpha_cos": 0.0}),
    "topk, cosine only": ("cached", "topk_cache", {"alpha_ce": 0.0, "alpha_mlm": 0.0}),
    "packed, short last batch": ("cached", "packed_cache", {}),
    "online T=2": ("online", "prepared_dir", {}),
    "online, packed, short last batch": ("online", "packed_prepared_dir", {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_every_gradient_equal_todays_objective(request, case, tmp_path, tiny_teacher_dir):
    """The step after the GPU read (log-probs at the target ids from one pass over the logits
    per temperature, no ``logits.sum() * 0.0``, ``unpadded`` fixed per run so a short last
    batch of packed text runs without a mask, int8 sketch on the wire) against the step before
    it, on the same batch: loss and every gradient within 1e-5."""
    mode, data, kw = CASES[case]
    source = request.getfixturevalue(data)
    if mode == "cached":
        cfg = cached_config(tmp_path, source, **{"temperature": 2.0, **kw})
    else:
        cfg = online_config(tmp_path, source, tiny_teacher_dir, **kw)
    r = DistilRecipe(cfg, work_dir=str(tmp_path / "w"))
    r.setup(None)
    _perturb(r)
    r.student.eval()  # no dropout: both computations see the same forward
    host = list(r._epoch_batches(0, 0))[-1 if "short" in case else 0]
    fixed = fixed_shape(host, r.shape)
    if "short" in case:  # the case this is about: a packed epoch's short last batch
        assert r.shape.unpadded and fixed["unpadded"]
        assert host["input_ids"].shape[0] < cfg.batch_size
    new, parts = r.loss(fixed)
    old = _todays_loss(r, fixed)
    assert float(old) > 5e-3  # the terms are sizeable, so the comparison means something
    assert float(new) == pytest.approx(float(old), rel=1e-5, abs=1e-5)
    assert float(parts[0]) == pytest.approx(float(new), rel=1e-6)
    g_new, g_old = _grads(r, new), _grads(r, old)
    assert set(g_new) == set(g_old)
    assert max(float(g.abs().max()) for g in g_old.values()) > 1e-3
    for name in g_old:
        torch.testing.assert_close(g_new[name], g_old[name], rtol=1e-5, atol=1e-5, msg=name)
