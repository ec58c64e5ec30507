import numpy as np
import torch

from distil.teacher.sparse import log_partitions, sample, sparsify, stored_temperatures, topk


def test_topk_keeps_the_largest_logprobs_sorted():
    logprobs = torch.log_softmax(torch.randn(5, 100), -1)
    s = topk(logprobs, 4)
    ref_v, ref_i = torch.sort(logprobs, -1, descending=True)
    assert torch.equal(s.ids, ref_i[:, :4])
    assert torch.allclose(s.logprobs, ref_v[:, :4])
    assert s.counts is None


def test_sampled_counts_are_an_unbiased_estimate_of_the_distribution():
    torch.manual_seed(0)
    v, k, n = 20, 8, 4000
    logits = torch.randn(v) * 2
    logprobs = torch.log_softmax(logits, -1).expand(n, v).contiguous()
    u = torch.from_numpy(np.random.default_rng(0).random((n, k)))
    s = sample(logprobs, u)
    assert torch.all(s.counts.sum(-1) == k)
    est = torch.zeros(v)
    for row in range(n):
        used = s.counts[row] > 0
        ids = s.ids[row][used]
        assert len(torch.unique(ids)) == len(ids)  # unique ids per position
        est[ids] += s.counts[row][used] / k
        assert torch.allclose(s.logprobs[row][used], logprobs[row, ids])
    est /= n
    p = logprobs[0].exp()
    # standard error of each estimate is sqrt(p(1-p)/(n*k)) <= 0.004
    assert torch.max(torch.abs(est - p)) < 0.02


def test_sampling_temperature_flattens_the_draws_but_logprobs_stay_at_t1():
    logprobs = torch.log_softmax(torch.tensor([[5.0, 0.0, 0.0, 0.0]]), -1).expand(2000, 4)
    u = torch.from_numpy(np.random.default_rng(1).random((2000, 1)))
    cold = sample(logprobs.contiguous(), u, temperature=1.0)
    hot = sample(logprobs.contiguous(), u, temperature=10.0)
    assert (cold.ids[:, 0] == 0).float().mean() > 0.9
    assert (hot.ids[:, 0] == 0).float().mean() < 0.5
    assert torch.allclose(hot.logprobs[:, 0], logprobs[0][hot.ids[:, 0]])


def test_sparsify_rejects_unknown_modes_and_missing_uniforms():
    lp = torch.log_softmax(torch.randn(2, 10), -1)
    for spec, u in (({"mode": "dense", "k": 2}, None), ({"mode": "sampled", "k": 2}, None)):
        try:
            sparsify(lp, spec, u)
        except ValueError:
            continue
        raise AssertionError(f"{spec} accepted")


def test_log_partitions_rebuild_the_teacher_at_t_and_need_float32():
    """``c_T`` rebuilds ``p_T`` on the kept ids from the stored (float16) T=1 log-probs: the
    kept mass at T (hence the tail) within 1e-3 relative of float64. Stored as float16 instead,
    ``c_T`` (~2-5 at T = 2) alone would add several times that error: the cache keeps float32."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 30522, generator=g, dtype=torch.float64) * 2.5
    z[:, :5] += torch.rand(500, 5, generator=g, dtype=torch.float64) * 12
    lp = torch.log_softmax(z, -1)
    spec = {"mode": "topk", "k": 8, "kd_temperatures": [1.0, 2.0, 4.0]}
    assert stored_temperatures(spec) == [2.0, 4.0]  # T = 1 needs none: c_1 = 0
    s = sparsify(lp.float(), spec)
    assert s.log_partition.shape == (500, 2) and s.log_partition.dtype == torch.float32
    for j, t in enumerate((2.0, 4.0)):
        exact = torch.softmax(z / t, -1).gather(-1, s.ids).sum(-1)
        stored_lp = s.logprobs.half().double()  # as the cache stores them

        def kept(logz, lp_stored=stored_lp, t=t):
            return (lp_stored / t - logz.unsqueeze(-1)).exp().sum(-1)

        err32 = ((kept(s.log_partition[:, j].double()) - exact) / exact).abs().max()
        err16 = ((kept(s.log_partition[:, j].half().double()) - exact) / exact).abs().max()
        assert err32 < 1e-3, (t, err32)
        assert err16 > 2 * err32, (t, err16, err32)
    assert log_partitions(lp, [1.0])[:, 0].abs().max() < 1e-5
