"""KD temperature against the cache: the recipe refuses a temperature the cache cannot serve
(and the job does so before Ray), a sampled cache drawn at another temperature unless allowed,
and the cached KD loss at T is the (K + 1)-bucket KL of the teacher itself."""

from __future__ import annotations

import logging

import pytest
import torch
from stage3_data import cached_config

from distil import losses, storage
from distil.train.config import DistilConfig
from distil.train.identity import TemperatureMismatchError, check_cache_temperature
from distil.train.recipe import DistilRecipe


def test_a_temperature_the_cache_cannot_serve_is_refused_before_training(tmp_path, topk_cache):
    assert storage.read_manifest(topk_cache)["sparsity"]["kd_temperatures"] == [1.0, 2.0]
    cfg = cached_config(tmp_path, topk_cache, temperature=3.0)
    with pytest.raises(TemperatureMismatchError) as e:
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)
    msg = str(e.value)
    assert "[1.0, 2.0]" in msg and "distil logits --kd-temperatures 1,2,3" in msg, msg
    import distil.jobs.distil as job  # no ray fixture: the job must refuse before Ray starts

    with pytest.raises(TemperatureMismatchError, match="--kd-temperatures"):
        job.run(cfg)


def test_a_cache_without_kd_temperatures_serves_t1_only():
    """A format-2 manifest (no kd_temperatures): T = 1 works, T = 2 is refused with the fix."""
    old = {"sparsity": {"mode": "topk", "k": 8}}
    check_cache_temperature(old, "s3://b/cache", 1.0, False)
    with pytest.raises(TemperatureMismatchError, match=r"serves KD only at T in \[1.0\]"):
        check_cache_temperature(old, "s3://b/cache", 2.0, False)


def test_a_sampled_cache_drawn_at_another_temperature_is_refused_unless_allowed(
    tmp_path, sampled_cache, caplog
):
    sparsity = storage.read_manifest(sampled_cache)["sparsity"]
    assert sparsity["temperature"] == 2.0  # drawn at the shipped distil temperature
    DistilRecipe(cached_config(tmp_path, sampled_cache), work_dir=str(tmp_path / "w")).setup(None)
    cfg = cached_config(tmp_path, sampled_cache, temperature=1.0)
    with pytest.raises(TemperatureMismatchError) as e:
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)
    msg = str(e.value)
    assert "T=2" in msg and "--allow-temperature-mismatch" in msg, msg
    assert "--sample-temperature 1" in msg, msg
    allowed = cfg.model_copy(update={"allow_temperature_mismatch": True})
    r = DistilRecipe(allowed, work_dir=str(tmp_path / "w"))
    with caplog.at_level(logging.WARNING, logger="distil.train.identity"):
        r.setup(None)
    assert "--allow-temperature-mismatch" in caplog.text
    out = r.train()
    assert out["step"] == 3 and all(
        torch.isfinite(torch.tensor(h["loss"])) for h in out["train_history"]
    )


@pytest.mark.parametrize("cache_fixture", ["topk_cache", "sampled_cache"])
def test_cached_kd_of_the_teacher_itself_is_zero_and_matches_the_dense_reference(
    request, cache_fixture, tmp_path
):
    """A full-depth 'student' is the teacher: its cached KD loss at T = 2 is ~0 (top-k: the
    teacher's tail at T is in the rest bucket; a top-k renormalised teacher would charge it),
    and another student's top-k loss equals the (K + 1)-bucket KL computed from dense
    teacher logits on the same batch."""
    cache = request.getfixturevalue(cache_fixture)
    full = DistilRecipe(
        cached_config(tmp_path, cache, student_layers=4), work_dir=str(tmp_path / "w")
    )
    full.setup(None)
    full.module.eval()
    batch = next(iter(full.data))

    def kd_cached(logits, batch, t):
        logz = batch["target_logz"][:, full.source.cache.kd_temperatures.index(t)]
        ids, lp = batch["target_ids"], batch["target_logprobs"]
        if full.source.sparsity["mode"] == "sampled":
            counts, drawn_at = batch["target_counts"], full.source.sparsity.get("temperature")
            return losses.kd_sampled(logits, ids, lp, counts, t, drawn_at, logz)
        return losses.kd_topk(logits, ids, lp, t, logz)

    with torch.no_grad():
        logits, _ = full.module(batch["input_ids"], batch["attention_mask"], batch["labels"])
        kd = kd_cached(logits, batch, 2.0)
    assert abs(float(kd)) < (1e-4 if cache_fixture == "topk_cache" else 5e-3), float(kd)
    if cache_fixture != "topk_cache":
        return
    g = torch.Generator().manual_seed(0)  # a student far from the teacher
    s_logits = logits + 3 * torch.randn(logits.shape, generator=g)
    with torch.no_grad():
        got = kd_cached(s_logits, batch, 2.0)
        ids = batch["target_ids"]
        p = torch.softmax(logits.double() / 2.0, -1)  # the teacher's own dense logits
        q = torch.softmax(s_logits.double() / 2.0, -1)
        pk, qk = p.gather(-1, ids), q.gather(-1, ids)
        pb = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
        qb = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
        ref = 4.0 * (pb * (pb.log() - qb.log())).sum(-1).mean()
    assert float(got) > 1e-4 and float(got) == pytest.approx(float(ref), rel=2e-2)
    renormalised = losses.kd_dense(s_logits, logits, 2.0)  # full KL bounds the coarse one
    assert float(got) <= float(renormalised) + 1e-4


def test_allow_temperature_mismatch_is_a_flag_and_not_part_of_the_run_identity(
    topk_cache, tmp_path
):
    from distil.config import parse_job_args
    from distil.train.identity import run_identity

    argv = ["--cache", topk_cache, "--output", str(tmp_path / "o"), "--storage-path", "r"]
    base = parse_job_args(DistilConfig, "", argv)
    assert base.allow_temperature_mismatch is False
    allowed = parse_job_args(DistilConfig, "", [*argv, "--allow-temperature-mismatch"])
    assert allowed.allow_temperature_mismatch is True
    assert run_identity(allowed).fingerprint == run_identity(base).fingerprint
