"""Each loss against a dense reference computed independently (plain softmax/KL formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from distil import losses

V = 50


def _dense_kl(teacher_logits, student_logits, t):
    """Independent reference: explicit softmax/log, no log_softmax shortcuts."""
    p = torch.softmax(teacher_logits.double() / t, -1)
    q = torch.softmax(student_logits.double() / t, -1)
    return (p * (p.log() - q.log())).sum(-1)


def _log_partition(logp, t):
    """The cache's c_T = log sum_v p_1(v)^(1/T), from full-vocab T=1 log-probs."""
    return torch.log(torch.exp(logp.double() / t).sum(-1)).float()


def _coarse_kl(teacher_logits, student_logits, ids, t):
    """Independent reference: KL over {each id in ``ids``, rest} of the dense p_T and q_T."""
    p = torch.softmax(teacher_logits.double() / t, -1)
    q = torch.softmax(student_logits.double() / t, -1)
    pk, qk = p.gather(-1, ids), q.gather(-1, ids)
    pb = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    qb = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    return (pb * (pb.log() - qb.log())).sum(-1)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_topk_with_k_equal_vocab_is_dense_kl(t):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(7, V, generator=g) * 3
    student = torch.randn(7, V, generator=g) * 3
    logp = torch.log_softmax(teacher, -1)  # the cache stores T=1 log-probs
    ids = torch.argsort(logp, -1, descending=True)  # k = vocab, in top-k order
    sparse = losses.kd_topk(student, ids, logp.gather(-1, ids), t, _log_partition(logp, t))
    ref = t * t * _dense_kl(teacher, student, t).mean()
    assert sparse.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert losses.kd_dense(student, teacher, t).item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_topk_small_k_is_the_exact_kl_of_k_plus_one_buckets(t):
    """K ids + one rest bucket for teacher and student, the teacher's tail mass at T rebuilt
    from the T=1 log-probs and c_T; padding slots (-inf log-prob, any id) change nothing."""
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(4, V, generator=g) * 2, torch.randn(4, V, generator=g) * 2
    logp = torch.log_softmax(teacher, -1)
    top = torch.topk(logp, 5, -1)
    logz = _log_partition(logp, t)
    ref = t * t * _coarse_kl(teacher, student, top.indices, t).mean()
    got = losses.kd_topk(student, top.indices, top.values, t, logz)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    ids = torch.cat([top.indices, torch.zeros(4, 1, dtype=torch.long)], -1)
    vals = torch.cat([top.values, torch.full((4, 1), -math.inf)], -1)
    assert losses.kd_topk(student, ids, vals, t, logz).item() == pytest.approx(got.item(), rel=1e-6)
    # the teacher as student: 0 (a top-k renormalised teacher would charge it for the tail)
    assert losses.kd_topk(teacher, top.indices, top.values, t, logz).item() == pytest.approx(
        0, abs=1e-5
    )


def test_topk_tail_carries_the_mass_the_temperature_moves():
    """At T = 2 the teacher's tail outside its top 5 is far larger than at T = 1, and a student
    that matches it only on the 5 ids (nothing in the tail) is charged for it."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(6, V, generator=g) * 2
    logp = torch.log_softmax(teacher, -1)
    top = torch.topk(logp, 5, -1)
    tail = [
        1 - losses.teacher_logprobs_at(top.values, t, _log_partition(logp, t)).exp().sum(-1)
        for t in (1.0, 2.0)
    ]
    assert torch.all(tail[1] > tail[0] + 0.1)
    greedy = torch.full_like(teacher, -30.0).scatter(
        -1, top.indices, teacher.gather(-1, top.indices)
    )
    logz = _log_partition(logp, 2.0)
    assert losses.kd_topk(greedy, top.indices, top.values, 2.0, logz) > 0.5
    with pytest.raises(ValueError, match="log-partition"):
        losses.kd_topk(greedy, top.indices, top.values, 2.0)  # T != 1 needs c_T


@pytest.mark.parametrize("tail", ["zero", "one", "none"])
def test_topk_gradients_are_finite_when_the_tail_is_extreme(tail):
    """Tail ~0 (a peaked teacher, a student with no tail either), ~1 (the kept ids hold ~no
    teacher mass) and K = vocab (no rest bucket at all): finite loss and gradients."""
    g = torch.Generator().manual_seed(4)
    teacher = torch.randn(3, V, generator=g)
    student = torch.randn(3, V, generator=g)
    if tail == "zero":
        teacher[:, :2] += 80.0
        student[:, :2] += 200.0
        ids = torch.arange(2).expand(3, 2)
    elif tail == "one":
        teacher[:, -3:] -= 80.0
        ids = torch.arange(V - 3, V).expand(3, 3)
    else:
        ids = torch.arange(V).expand(3, V)
    student.requires_grad_(True)
    logp = torch.log_softmax(teacher, -1)
    for t in (1.0, 2.0):
        loss = losses.kd_topk(student, ids, logp.gather(-1, ids), t, _log_partition(logp, t))
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), (tail, t)
        ref = (
            t
            * t
            * (
                _coarse_kl(teacher, student.detach(), ids, t)
                if tail != "none"
                else _dense_kl(teacher, student.detach(), t)
            ).mean()
        )
        if torch.isfinite(ref):
            assert loss.item() == pytest.approx(ref.item(), rel=1e-3, abs=1e-5), (tail, t)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_dense_per_row_on_classification_logits(t):
    """``reduction="none"``: one T²·KL per row of ``[N, C]`` logits (the sentiment fine-tuning
    mixes KD and cross-entropy per example); ``"mean"`` is their mean."""
    g = torch.Generator().manual_seed(2)
    teacher, student = torch.randn(5, 2, generator=g), torch.randn(5, 2, generator=g)
    rows = losses.kd_dense(student, teacher, t, reduction="none")
    assert rows.shape == (5,)
    ref = t * t * _dense_kl(teacher, student, t)
    torch.testing.assert_close(rows.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows.mean(), losses.kd_dense(student, teacher, t))
    assert losses.kd_dense(teacher, teacher, t, reduction="none").abs().max() < 1e-6
    with pytest.raises(ValueError):
        losses.kd_dense(student, teacher, t, reduction="sum")


def test_topk_gradient_flows_only_to_student():
    teacher, student = torch.randn(3, V), torch.randn(3, V, requires_grad=True)
    logp = torch.log_softmax(teacher, -1)
    top = torch.topk(logp, 8, -1)
    losses.kd_topk(student, top.indices, top.values, 2.0, _log_partition(logp, 2.0)).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_sampled_estimator_is_unbiased_at_the_shipped_defaults():
    """The shipped logits config draws at the shipped distil temperature; ids drawn by the
    cache's own sampler (``sparse.sample``, uniforms as the cache uses them) make the
    estimator's mean over many draws ``KL(p_T || q_T)`` (``KL + c_T`` without the cache's
    log-partition), within 4 standard errors."""
    from distil.teacher.config import LogitsConfig
    from distil.teacher.sparse import sample
    from distil.train.config import DistilConfig

    t = DistilConfig.model_fields["temperature"].default
    drawn_at = LogitsConfig.model_fields["sample_temperature"].default
    k = LogitsConfig.model_fields["k"].default
    assert drawn_at == t  # the shipped defaults need no importance weights
    assert t in LogitsConfig.model_fields["kd_temperatures"].default
    g = torch.Generator().manual_seed(1234)
    n_pos, trials = 3, 2000
    teacher = torch.randn(n_pos, V, generator=g) * 2
    student = torch.randn(n_pos, V, generator=g) * 2
    logp = torch.log_softmax(teacher, -1)
    logz = _log_partition(logp, t)
    kl = t * t * _dense_kl(teacher, student, t)
    uniforms = torch.rand(trials * n_pos, k, generator=g, dtype=torch.float64)
    draws = sample(logp.repeat(trials, 1), uniforms, temperature=drawn_at)
    rows = torch.arange(trials * n_pos).view(trials, n_pos)
    for partition, expected in ((logz, kl), (None, kl + t * t * logz.double())):
        est = torch.tensor(
            [
                losses.kd_sampled(
                    student,
                    draws.ids[r],
                    draws.logprobs[r],
                    draws.counts[r],
                    t,
                    sample_temperature=drawn_at,
                    log_partition=partition,
                ).item()
                for r in rows
            ],
            dtype=torch.float64,
        )
        stderr = est.std().item() / math.sqrt(trials)
        assert stderr > 0
        want = expected.mean().item()
        assert abs(est.mean().item() - want) < 4 * stderr, (est.mean().item(), want, stderr)


def test_sampled_reweights_when_drawn_at_another_temperature():
    """Ids drawn at T=1 but the loss at T=2 (``allow_temperature_mismatch``): self-normalised
    weights converge to KL at T=2 with many draws."""
    g = torch.Generator().manual_seed(7)
    teacher, student = torch.randn(2, V, generator=g), torch.randn(2, V, generator=g)
    logp = torch.log_softmax(teacher, -1)
    draws = torch.multinomial(logp.exp(), 20000, replacement=True, generator=g)
    ids, counts = [], []
    for i in range(2):
        u, c = torch.unique(draws[i], return_counts=True)
        ids.append(torch.nn.functional.pad(u, (0, V - len(u))))
        counts.append(torch.nn.functional.pad(c.float(), (0, V - len(u))))
    ids, counts = torch.stack(ids), torch.stack(counts)
    got = losses.kd_sampled(
        student,
        ids,
        logp.gather(-1, ids),
        counts,
        2.0,
        sample_temperature=1.0,
        log_partition=_log_partition(logp, 2.0),
    )
    ref = (4.0 * _dense_kl(teacher, student, 2.0)).mean()
    assert got.item() == pytest.approx(ref.item(), rel=0.05)


def test_mlm_loss_matches_manual_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(6, V, generator=g)
    labels = torch.randint(0, V, (6,), generator=g)
    ref = -torch.log_softmax(logits.double(), -1)[torch.arange(6), labels].mean()
    assert losses.mlm_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    assert losses.mlm_loss(logits[:0], labels[:0]).item() == 0.0


def test_cosine_loss_ignores_padding():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cos = [
        torch.dot(s[b, i], t[b, i]) / (s[b, i].norm() * t[b, i].norm())
        for b in range(2)
        for i in range(5)
        if mask[b, i]
    ]
    ref = 1 - torch.stack(cos).mean()
    assert losses.cosine_loss(s, t, mask).item() == pytest.approx(ref.item(), rel=1e-5)
    t2 = t.clone()
    t2[0, 3:] = 99.0  # padding content is irrelevant
    assert losses.cosine_loss(s, t2, mask).item() == pytest.approx(ref.item(), rel=1e-5)
    assert losses.cosine_loss(s, s * 3, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_coarse_is_exact_at_full_support_zero_for_teacher_and_a_lower_bound():
    g = torch.Generator().manual_seed(5)
    teacher, student = torch.randn(5, V, generator=g) * 2, torch.randn(5, V, generator=g) * 2
    logp = torch.log_softmax(teacher, -1)
    dense = _dense_kl(teacher, student, 1.0).mean().item()
    full = torch.argsort(logp, -1, descending=True)
    assert losses.kl_coarse(student, full, logp.gather(-1, full)).item() == pytest.approx(
        dense, rel=1e-4
    )
    top = torch.topk(logp, 4, -1)
    partial = losses.kl_coarse(student, top.indices, top.values).item()
    assert 0 <= partial <= dense + 1e-6
    assert losses.kl_coarse(teacher, top.indices, top.values).item() == pytest.approx(0, abs=1e-5)


def test_sketch_cosine_with_identity_projection_is_the_dense_cosine_loss():
    """R = I (d = H): the cache's cosine term is exactly DistilBERT's; int8 rows (any scale)
    give the same loss to quantisation error; gradient reaches the student's hidden states."""
    from distil.teacher.sketch import quantize

    g = torch.Generator().manual_seed(0)
    h_s = torch.randn(2, 5, 16, generator=g, requires_grad=True)
    h_t = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    dense = losses.cosine_loss(h_s, h_t, mask)
    eye = torch.eye(16)
    sketch = losses.sketch_cosine_loss(h_s, mask, eye, h_t[mask.bool()] * 7.0)
    assert torch.allclose(sketch, dense, atol=1e-6)
    q = quantize(h_t[mask.bool()]).float()
    assert abs(float(losses.sketch_cosine_loss(h_s, mask, eye, q) - dense)) < 1e-3
    sketch.backward()
    assert h_s.grad[mask.bool()].abs().sum() > 0 and h_s.grad[~mask.bool()].abs().sum() == 0
    with pytest.raises(ValueError, match="hidden size 8.*student's is 16.*--alpha-cos 0"):
        losses.sketch_cosine_loss(h_s, mask, torch.eye(8), q[:, :8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_log_probs_at_ids_equal_the_log_softmax_and_its_gradient(dtype, monkeypatch):
    """Values and gradients of ``log_probs_at`` (two temperatures, blocks of rows with a
    ragged last one) against autograd through explicit float64 log-softmaxes."""
    monkeypatch.setattr(losses, "LOGIT_BLOCK_ROWS", 4)
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(10, V, generator=g) * 3).to(dtype)
    labels = torch.randint(0, V, (10, 1), generator=g)
    ids = torch.randint(0, V, (10, 6), generator=g)
    w1, w2 = torch.randn(10, 1, generator=g), torch.randn(10, 6, generator=g)

    def loss(x, got):
        return (got[0] * w1).sum() + (got[1] * w2).sum()

    x = logits.clone().requires_grad_()
    got = losses.log_probs_at(x, [(labels, 1.0), (ids, 2.0)])
    loss(x, got).backward()
    ref_x = logits.double().requires_grad_()
    ref = [
        torch.log_softmax(ref_x, -1).gather(-1, labels),
        torch.log_softmax(ref_x / 2.0, -1).gather(-1, ids),
    ]
    loss(ref_x, ref).backward()
    for a, b in zip(got, ref, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)
    assert x.grad.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the gradient is stored in bf16
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=tol, atol=tol)


def test_the_losses_keep_no_vocabulary_wide_tensor_but_the_logits_for_the_backward_pass():
    """MLM + top-k KD at T = 2 read the student's log-probs at a few ids: what the backward
    pass keeps of size [N, vocab] is the logits themselves, not a float32 log-softmax per
    temperature (the memory traffic a GPU step paid for them: written, kept, read again)."""
    g = torch.Generator().manual_seed(0)
    n, vocab = 12, 300
    logits = torch.randn(n, vocab, generator=g).requires_grad_()
    labels = torch.randint(0, vocab, (n,), generator=g)
    ids = torch.randint(0, vocab, (n, 4), generator=g)
    logp = torch.log_softmax(torch.randn(n, vocab, generator=g), -1)
    saved = []

    def keep(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        q_mlm, q_kd = losses.log_probs_at(logits, [(losses.mlm_ids(labels), 1.0), (ids, 2.0)])
        total = losses.mlm_loss(logits, labels, q_mlm) + losses.kd_topk(
            logits, ids, logp.gather(-1, ids), 2.0, _log_partition(logp, 2.0), log_q=q_kd
        )
    wide = [t for t in saved if t.dim() and t.shape[-1] == vocab]
    assert wide and all(t.data_ptr() == logits.data_ptr() for t in wide), [t.shape for t in wide]
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
