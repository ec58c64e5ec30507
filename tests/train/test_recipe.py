"""The recipe in a plain process (no Ray): online mode on real prepared shards, a tiny BERT."""

from __future__ import annotations

import json

import pytest
import torch
from stage3_data import cached_config, online_config

from distil.data.readers.stream import ReadPosition
from distil.train.config import DistilConfig
from distil.train.data import fixed_shape, to_device
from distil.train.recipe import DistilRecipe


def _cfg(tmp_path, prepared_dir, teacher, **kw) -> DistilConfig:
    base = dict(
        max_steps=6,
        warmup_steps=1,
        lr=1e-3,
        eval_every=3,
        eval_batches=2,
        log_every=2,
        heldout_fraction=0.1,
    )
    return online_config(tmp_path, prepared_dir, teacher, **{**base, **kw})


def _recipe(cfg, tmp_path, ckpt=None) -> DistilRecipe:
    r = DistilRecipe(cfg, work_dir=str(tmp_path / "work"))
    r.setup(ckpt)
    return r


def _first_batch(r: DistilRecipe) -> dict:
    """The first training micro-batch, fixed-shape and on the recipe's device."""
    batches = r._micro_batches()
    try:
        return next(batches)[0]
    finally:
        batches.close()


def _parts(r: DistilRecipe, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    total, parts = r.loss(batch)
    return total, r.named_parts(parts)


def test_config_requires_inputs_for_mode(tmp_path):
    with pytest.raises(ValueError, match="needs --cache"):
        DistilConfig(output="o", storage_path="s")
    with pytest.raises(ValueError, match="needs --data"):
        DistilConfig(mode="online", output="o", storage_path="s")


def test_online_training_lowers_loss_and_evaluates(tmp_path, prepared_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, prepared_dir, tiny_teacher_dir, max_steps=20, eval_every=20, lr=3e-3)
    r = _recipe(cfg, tmp_path)
    batches = r._micro_batches()
    heldout = ReadPosition(split="heldout", heldout_fraction=cfg.heldout_fraction)
    fixed = to_device(
        fixed_shape(next(r.source.eval_data.iter_batches(8, heldout)), r.shape), r.device
    )

    def fixed_loss() -> float:
        r.module.eval()
        with torch.no_grad():
            loss = r.loss(fixed)[0].item()
        r.module.train()
        return loss

    before = fixed_loss()
    for _ in range(20):
        r.train_step(batches)
    after = fixed_loss()
    assert after < 0.95 * before, (before, after)
    ev = r.evaluate()
    assert ev["eval_positions"] > 0
    for key in ("eval_mlm_accuracy", "eval_teacher_agreement"):
        assert 0.0 <= ev[key] <= 1.0
    assert ev["eval_kl_to_teacher"] >= 0.0


def test_loss_terms_follow_the_alphas(tmp_path, prepared_dir, tiny_teacher_dir):
    r = _recipe(_cfg(tmp_path, prepared_dir, tiny_teacher_dir), tmp_path)
    batch = _first_batch(r)
    total, parts = _parts(r, batch)
    c = r.cfg
    expect = c.alpha_ce * parts["loss_kd"] + c.alpha_mlm * parts["loss_mlm"]
    expect += c.alpha_cos * parts["loss_cos"]
    assert total.item() == pytest.approx(expect, rel=1e-5)
    r0 = _recipe(_cfg(tmp_path, prepared_dir, tiny_teacher_dir, alpha_ce=0, alpha_cos=0), tmp_path)
    _, parts0 = _parts(r0, batch)
    assert set(parts0) == {"loss", "loss_mlm"}


def test_resume_from_checkpoint_continues_exactly(tmp_path, prepared_dir, tiny_teacher_dir):
    """4 steps in one go == 2 steps, checkpoint, fresh recipe from the checkpoint, 2 steps."""
    cfg = _cfg(tmp_path, prepared_dir, tiny_teacher_dir, max_steps=4, eval_every=2)
    straight = _recipe(cfg, tmp_path)
    straight.train()

    first = _recipe(cfg, tmp_path)
    saved = []

    def report(step, metrics, checkpoint):
        if step == 2:
            first.save_checkpoint(str(tmp_path / "ckpt"))
            saved.append(step)
            raise KeyboardInterrupt  # stop here, as a killed worker would

    with pytest.raises(KeyboardInterrupt):
        first.cfg = first.cfg.model_copy(update={"checkpoint_every": 2})
        first.train(report)
    assert saved == [2]
    resumed = _recipe(cfg, tmp_path, ckpt=str(tmp_path / "ckpt"))
    assert resumed.step == 2 and resumed.start_step == 2
    out = resumed.train()
    assert out["step"] == 4 and out["steps_run"] == 2
    for (name, a), b in zip(
        straight.student.state_dict().items(), resumed.student.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["eval_history"][0]["step"] == 2


def test_reports_every_log_step_and_evaluation_checkpoints_at_their_cadence(
    tmp_path, prepared_dir, tiny_teacher_dir
):
    """What Ray Train and a tracker see: the curve at every log step (loss and its parts, lr,
    tokens/s, grad norm), each evaluation at its own step, a checkpoint only when due."""
    cfg = _cfg(
        tmp_path, prepared_dir, tiny_teacher_dir,
        max_steps=6, log_every=2, eval_every=3, checkpoint_every=4,
    )  # fmt: skip
    r = _recipe(cfg, tmp_path)
    seen = []
    r.train(lambda step, metrics, save: seen.append((step, dict(metrics), save)))
    assert [(step, save) for step, _, save in seen] == [
        (2, False),
        (3, False),
        (4, True),
        (6, True),
    ]
    curve = {"loss", "loss_kd", "loss_mlm", "loss_cos", "lr", "tokens_per_s", "grad_norm"}
    for step, metrics, _ in seen:
        assert metrics["step"] == step
        if step % 2 == 0:
            assert curve <= set(metrics), step
            assert metrics["loss"] > 0 and metrics["tokens_per_s"] > 0
    by_step = {step: m for step, m, _ in seen}
    assert not curve & set(by_step[3])  # an evaluation between log steps carries no loss
    assert by_step[3]["eval_step"] == 3 and "eval_kl_to_teacher" in by_step[3]
    assert by_step[4]["eval_step"] == 3  # the latest evaluation, under its own step
    assert by_step[6]["eval_step"] == 6


def test_finished_run_does_no_steps(tmp_path, prepared_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, prepared_dir, tiny_teacher_dir, max_steps=2)
    r = _recipe(cfg, tmp_path)
    r.train()
    r.save_checkpoint(str(tmp_path / "done"))
    again = _recipe(cfg, tmp_path, ckpt=str(tmp_path / "done"))
    out = again.train()
    assert out["steps_run"] == 0 and out["step"] == 2


@pytest.mark.parametrize("cache_fixture", ["topk_cache", "sampled_cache"])
def test_cached_mode_trains_from_a_real_teacher_cache(
    request, cache_fixture, tmp_path, tiny_teacher_dir
):
    cache = request.getfixturevalue(cache_fixture)
    cfg = cached_config(tmp_path, cache, max_steps=4, eval_every=4, eval_batches=2, log_every=20)
    r = _recipe(cfg, tmp_path)  # teacher found through the cache manifest
    _, parts = _parts(r, _first_batch(r))
    assert 0 < parts["loss_cos"] < 2  # the cache's hidden-state sketch (alpha_cos 1.0)
    # top-k: an exact (K + 1)-bucket KL; sampled: an unbiased estimate of the KL (~0 here: the
    # tiny teacher is near-uniform), which one batch can put below 0
    assert parts["loss_kd"] > 0 if cache_fixture == "topk_cache" else abs(parts["loss_kd"]) < 1
    out = r.train()
    assert out["step"] == 4 and out["eval_positions"] > 0
    assert 0 <= out["eval_teacher_agreement"] <= 1


@pytest.mark.parametrize("cache_fixture", ["topk_cache", "sampled_cache"])
def test_eval_of_a_full_depth_copy_of_the_teacher_agrees_with_the_cache(
    request, cache_fixture, tmp_path, tiny_teacher_dir
):
    """A 'student' with all teacher layers is the teacher: the held-out metrics computed from the
    cache must say so (agreement ~1, KL ~0 up to the cache's fp16 log-probs; a sampled cache's
    KL is over its drawn ids + rest, whatever temperature they were drawn at)."""
    cfg = DistilConfig(
        cache=request.getfixturevalue(cache_fixture),
        output=str(tmp_path / "out"),
        storage_path=str(tmp_path / "runs"),
        student_layers=4,
        batch_size=8,
        eval_batches=4,
    )
    ev = _recipe(cfg, tmp_path).evaluate()
    assert ev["eval_positions"] > 0
    if cache_fixture == "topk_cache":  # a sampled cache holds the teacher's top-1 only if drawn
        assert ev["eval_teacher_agreement"] > 0.97
    assert ev["eval_kl_to_teacher"] < 1e-2
    # the tiny random teacher is near-uniform, so even a 2-layer copy is ~1e-9 from it:
    # a student whose output bias is moved is measurably not the teacher
    other = _recipe(cfg, tmp_path)
    with torch.no_grad():
        bias = other.student.cls.predictions.decoder.bias
        bias += 3 * torch.randn(bias.shape, generator=torch.Generator().manual_seed(0))
    student = other.evaluate()
    assert student["eval_kl_to_teacher"] > 1e-3 > 10 * ev["eval_kl_to_teacher"]


def test_grad_accumulation_consumes_micro_batches_and_steps_once(
    tmp_path, prepared_dir, tiny_teacher_dir
):
    cfg = _cfg(tmp_path, prepared_dir, tiny_teacher_dir, grad_accum=3, batch_size=4, warmup_steps=0)
    r = _recipe(cfg, tmp_path)
    batches = r._micro_batches()
    before = {k: v.clone() for k, v in r.student.state_dict().items()}
    out = r.train_step(batches)
    batches.close()
    # the reader runs ahead on its thread: the position is that of the last batch trained on
    assert r.step == 1 and r.data_position == {"epoch": 0, "batch_in_epoch": 3}
    assert out["tokens"] > 0 and r.optim.scheduler.last_epoch == 1
    changed = [k for k, v in r.student.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # one optimizer update happened


def test_a_checkpoint_resumes_only_on_its_own_worker_count(
    tmp_path, prepared_dir, tiny_teacher_dir
):
    """The saved data position is a position in one rank's share of the epoch: a recipe on
    another world size refuses it (the job refuses earlier, from the run identity)."""
    cfg = _cfg(tmp_path, prepared_dir, tiny_teacher_dir, max_steps=2)
    r = _recipe(cfg, tmp_path)
    r.train()
    r.save_checkpoint(str(tmp_path / "ckpt"))
    state = torch.load(tmp_path / "ckpt" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 1 and state["batch_in_epoch"] == 2
    other = DistilRecipe(cfg, rank=0, world_size=2, work_dir=str(tmp_path / "w2"))
    with pytest.raises(ValueError, match="for 1 worker"):
        other.setup(str(tmp_path / "ckpt"))
