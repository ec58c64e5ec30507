"""The recipe's refusals (a teacher that is not the cache's, a headless teacher online) and its
collectives: on the training device, and the global token count they produce."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from bert_fixtures import save_tiny_bert
from stage3_data import cached_config, online_config

from distil.teacher.load import MissingMLMHeadError
from distil.train.config import DistilConfig
from distil.train.identity import TeacherMismatchError, teacher_weights_sha256
from distil.train.recipe import DistilRecipe


@pytest.fixture(scope="module")
def other_teacher(tmp_path_factory, real_tokenizer_dir):
    """Same architecture as the cache's teacher, other weights."""
    from transformers import BertForMaskedLM

    out = tmp_path_factory.mktemp("other_teacher")
    return save_tiny_bert(out, BertForMaskedLM, real_tokenizer_dir, layers=4, seed=7)


def test_a_teacher_other_than_the_caches_is_refused_unless_allowed(
    tmp_path, topk_cache, tiny_teacher_dir, other_teacher, capfd
):
    from distil import storage

    recorded = storage.read_manifest(topk_cache)["teacher"]["weights_sha256"]
    other = teacher_weights_sha256(str(other_teacher))
    assert recorded == teacher_weights_sha256(str(tiny_teacher_dir)) != other
    cfg = cached_config(tmp_path, topk_cache, teacher=str(other_teacher))
    with pytest.raises(TeacherMismatchError) as e:
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)
    msg = str(e.value)
    assert recorded in msg and other in msg and "--allow-teacher-mismatch" in msg, msg
    # the job refuses before Ray starts (no ray fixture here: it must not get that far)
    import distil.jobs.distil as job

    with pytest.raises(TeacherMismatchError, match=recorded):
        job.run(cfg)
    allowed = cfg.model_copy(update={"allow_teacher_mismatch": True})
    r = DistilRecipe(allowed, work_dir=str(tmp_path / "w"))
    r.setup(None)
    assert "WARNING --allow-teacher-mismatch: teacher" in capfd.readouterr().err
    assert r.train()["step"] == 3
    # the teacher the cache records (cfg.teacher unset, or given explicitly) is accepted
    DistilRecipe(cached_config(tmp_path, topk_cache, teacher=str(tiny_teacher_dir))).setup(None)


def test_online_mode_refuses_a_teacher_without_an_mlm_head(
    tmp_path, prepared_dir, real_tokenizer_dir
):
    from transformers import BertModel

    headless = save_tiny_bert(tmp_path / "headless", BertModel, real_tokenizer_dir, layers=4)
    cfg = online_config(tmp_path, prepared_dir, headless)
    with pytest.raises(MissingMLMHeadError, match="distil teacher adapt"):
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)


@pytest.fixture
def gloo_world_1(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_collectives_run_on_the_training_device_and_sum_tokens(
    tmp_path, topk_cache, gloo_world_1, monkeypatch
):
    """Every tensor the recipe hands to a collective lives on the model's device (NCCL raises
    on CPU tensors; the old code reduced a CPU tensor, and only when world_size > 1)."""
    r = DistilRecipe(cached_config(tmp_path, topk_cache, max_steps=4), work_dir=str(tmp_path / "w"))
    r.setup(None)
    device = next(r.student.parameters()).device
    calls = []

    def guard(name, real):
        def check(tensor, *a, **kw):
            tensors = tensor if isinstance(tensor, list) else [tensor]
            for t in tensors:
                assert t.device == device, f"{name} on {t.device}, model on {device}"
            calls.append(name)
            return real(tensor, *a, **kw)

        return check

    for name in ("all_reduce", "broadcast", "all_gather"):
        monkeypatch.setattr(dist, name, guard(name, getattr(dist, name)))
    reports = []
    out = r.train(lambda step, m, save: reports.append(step))
    assert calls, "no collective ran: the guard checked nothing"
    assert out["world_size"] == 1
    assert out["tokens_seen_global"] == out["tokens_seen"] > 0  # one rank: the same count
    assert out["tokens_per_s_global"] > 0 and out["train_seconds"] > 0


def test_global_tokens_survive_a_checkpoint_between_log_steps(tmp_path, topk_cache):
    """Tokens are summed over ranks at log *and* checkpoint steps, so a resume loses none."""
    cfg = cached_config(tmp_path, topk_cache, max_steps=4, log_every=3, checkpoint_every=2)
    straight = DistilRecipe(cfg, work_dir=str(tmp_path / "a"))
    straight.setup(None)
    total = straight.train(lambda *a: None)["tokens_seen_global"]
    first = DistilRecipe(cfg, work_dir=str(tmp_path / "b"))
    first.setup(None)

    def stop_at_2(step, metrics, save):
        if step == 2:
            first.save_checkpoint(str(tmp_path / "ckpt"))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.train(stop_at_2)
    resumed = DistilRecipe(cfg, work_dir=str(tmp_path / "c"))
    resumed.setup(str(tmp_path / "ckpt"))
    assert resumed.train(lambda *a: None)["tokens_seen_global"] == total
    torch.testing.assert_close(
        straight.student.state_dict()["bert.embeddings.word_embeddings.weight"],
        resumed.student.state_dict()["bert.embeddings.word_embeddings.weight"],
    )


def test_allow_teacher_mismatch_is_a_flag_and_not_part_of_the_run_identity(topk_cache, tmp_path):
    from distil.config import parse_job_args
    from distil.train.identity import run_identity

    argv = ["--cache", topk_cache, "--output", str(tmp_path / "o"), "--storage-path", "r"]
    assert parse_job_args(DistilConfig, "", argv).allow_teacher_mismatch is False
    allowed = parse_job_args(DistilConfig, "", [*argv, "--allow-teacher-mismatch"])
    assert allowed.allow_teacher_mismatch is True
    base = parse_job_args(DistilConfig, "", argv)
    assert run_identity(allowed).fingerprint == run_identity(base).fingerprint
