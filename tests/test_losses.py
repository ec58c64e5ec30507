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


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_topk_with_k_equal_vocab_is_dense_kl(t):
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(7, V, generator=g) * 3
    student = torch.randn(7, V, generator=g) * 3
    logp = torch.log_softmax(teacher, -1)  # the cache stores T=1 log-probs
    ids = torch.argsort(logp, -1, descending=True)  # k = vocab, in top-k order
    sparse = losses.kd_topk(student, ids, logp.gather(-1, ids), t)
    ref = t * t * _dense_kl(teacher, student, t).mean()
    assert sparse.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert losses.kd_dense(student, teacher, t).item() == pytest.approx(ref.item(), rel=1e-5)


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


def test_topk_small_k_is_kl_of_renormalised_teacher_and_pads_are_ignored():
    g = torch.Generator().manual_seed(1)
    teacher, student = torch.randn(4, V, generator=g), torch.randn(4, V, generator=g)
    logp = torch.log_softmax(teacher, -1)
    top = torch.topk(logp, 5, -1)
    # reference: teacher mass renormalised on the 5 ids, student full-vocab log-probs
    p = torch.softmax(top.values / 2.0, -1)
    log_q = torch.log_softmax(student / 2.0, -1).gather(-1, top.indices)
    ref = 4.0 * (p * (p.log() - log_q)).sum(-1).mean()
    got = losses.kd_topk(student, top.indices, top.values, 2.0)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    # a padding slot (-inf log-prob, any id) changes nothing
    ids = torch.cat([top.indices, torch.zeros(4, 1, dtype=torch.long)], -1)
    vals = torch.cat([top.values, torch.full((4, 1), -math.inf)], -1)
    assert losses.kd_topk(student, ids, vals, 2.0).item() == pytest.approx(got.item(), rel=1e-6)


def test_topk_gradient_flows_only_to_student():
    teacher, student = torch.randn(3, V), torch.randn(3, V, requires_grad=True)
    logp = torch.log_softmax(teacher, -1)
    top = torch.topk(logp, 8, -1)
    losses.kd_topk(student, top.indices, top.values, 2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_sampled_estimator_is_unbiased(t):
    """Mean of the estimator over many independent draws of K ids from p_T equals
    KL(p_T || q_T) + log Z_T (log Z_T = 0 at T = 1), within 4 standard errors."""
    g = torch.Generator().manual_seed(1234)
    n_pos, k, trials = 3, 8, 2000
    teacher = torch.randn(n_pos, V, generator=g) * 2
    student = torch.randn(n_pos, V, generator=g) * 2
    logp = torch.log_softmax(teacher, -1)
    p_t = torch.softmax(teacher / t, -1)
    log_z_t = torch.logsumexp(logp / t, -1)  # log sum p^(1/T)
    expected = (t * t * (_dense_kl(teacher, student, t) + log_z_t.double())).mean().item()

    estimates = []
    for _ in range(trials):
        draws = torch.multinomial(p_t, k, replacement=True, generator=g)  # [n_pos, k]
        # store unique ids + counts, as the cache does (padding: count 0)
        ids = torch.zeros(n_pos, k, dtype=torch.long)
        counts = torch.zeros(n_pos, k)
        for i in range(n_pos):
            u, c = torch.unique(draws[i], return_counts=True)
            ids[i, : len(u)], counts[i, : len(u)] = u, c.float()
        est = losses.kd_sampled(student, ids, logp.gather(-1, ids), counts, t)
        estimates.append(est.item())
    est = torch.tensor(estimates, dtype=torch.float64)
    stderr = est.std().item() / math.sqrt(trials)
    assert stderr > 0
    assert abs(est.mean().item() - expected) < 4 * stderr, (est.mean().item(), expected, stderr)


def test_sampled_reweights_when_drawn_at_another_temperature():
    """Ids drawn at T=1 but the loss at T=2: self-normalised weights converge to KL at T=2."""
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
    got = losses.kd_sampled(student, ids, logp.gather(-1, ids), counts, 2.0, sample_temperature=1.0)
    log_z = torch.logsumexp(logp / 2.0, -1)
    ref = (4.0 * (_dense_kl(teacher, student, 2.0) + log_z.double())).mean()
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
