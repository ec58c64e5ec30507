"""A teacher must read the prepared ids as they were written: same tokenizer identity, and a model
of a supported family (``distil.family``). Both are refused before any work (no Ray, nothing
written)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from teacher_helpers import build_cache

from distil import storage
from distil.data.config import PrepareConfig
from distil.data.prepare_ranges import run_serial
from distil.data.tokenizer import load_tokenizer_info
from distil.family import UnsupportedTeacherError
from distil.teacher.compat import TokenizerMismatchError, check_teacher
from distil.teacher.config import LogitsConfig
from distil.teacher.load import load_teacher

TEXT = (
    "The committee met on Tuesday to discuss the new budget for the city schools. "
    "A storm moved across the valley in the night, and by morning the river had risen. "
    "She opened the old book and found a good letter, not a bad one, written long ago.\n\n"
)


@pytest.fixture(scope="module")
def real_prepared(tmp_path_factory, real_tokenizer_dir) -> str:
    """Shards prepared by stage 1 itself with the real tokenizer."""
    root = tmp_path_factory.mktemp("real_prepared")
    (root / "in").mkdir()
    (root / "in" / "a.txt").write_text(TEXT * 6)
    out = str(root / "out")
    run_serial(
        PrepareConfig(
            input=str(root / "in"), output=out, tokenizer=str(real_tokenizer_dir), seq_len=32
        )
    )
    return out


def teacher_with_tokenizer(tiny_teacher_dir: Path, out: Path, edit=None) -> Path:
    """A copy of the tiny teacher (same weights) whose tokenizer.json is changed by ``edit``."""
    shutil.copytree(tiny_teacher_dir, out)
    if edit:
        d = json.loads((out / "tokenizer.json").read_text())
        edit(d)
        (out / "tokenizer.json").write_text(json.dumps(d))
    return out


def swap_good_and_bad(d: dict) -> None:
    vocab = d["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]


def no_ray(*a, **kw):
    raise AssertionError("Ray was started: the teacher was not refused before any work")


def test_a_teacher_with_another_tokenizer_is_refused_before_any_work(
    real_prepared, tiny_teacher_dir, tmp_path, monkeypatch
):
    from distil.jobs import teacher_logits

    monkeypatch.setattr(teacher_logits, "init_ray", no_ray)

    bad = teacher_with_tokenizer(tiny_teacher_dir, tmp_path / "swapped", swap_good_and_bad)
    assert load_teacher(str(bad)).model.config.vocab_size == 30522  # same vocab size
    cache_root = tmp_path / "cache"
    cfg = LogitsConfig(input=real_prepared, cache_root=str(cache_root), teacher=str(bad))
    with pytest.raises(TokenizerMismatchError) as e:
        teacher_logits.run(cfg)
    msg = str(e.value)
    want = storage.read_manifest(real_prepared)["tokenizer"]["identity"]
    have = load_teacher(str(bad)).tokenizer_identity
    assert want != have
    assert want[:16] in msg and have[:16] in msg  # both identities ...
    assert real_prepared in msg and str(bad) in msg  # ... and where each came from
    assert f"distil prepare --tokenizer {bad}" in msg  # the fix
    assert not cache_root.exists()


def test_lowercase_off_is_another_tokenizer(real_prepared, tiny_teacher_dir, tmp_path):
    def cased(d):
        d["normalizer"]["lowercase"] = False

    bad = load_teacher(str(teacher_with_tokenizer(tiny_teacher_dir, tmp_path / "cased", cased)))
    with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
        check_teacher(bad, "cased", storage.read_manifest(real_prepared), real_prepared)


def test_the_same_tokenizer_in_another_folder_is_accepted(
    real_prepared, tiny_teacher_dir, tmp_path
):
    same = teacher_with_tokenizer(tiny_teacher_dir, tmp_path / "elsewhere")
    url = build_cache(real_prepared, str(same), str(tmp_path / "cache"), batch_size=8)
    manifest = storage.read_manifest(url)
    assert manifest["rows"] == storage.read_manifest(real_prepared)["rows"]
    assert manifest["tokenizer"]["identity"] == load_teacher(str(same)).tokenizer_identity


def old_manifest(real_prepared: str, out: Path, **tokenizer) -> tuple[str, dict]:
    """A copy of the prepared manifest as written before identities existed."""
    m = storage.read_manifest(real_prepared)
    m["tokenizer"] = {k: v for k, v in m["tokenizer"].items() if k != "identity"} | tokenizer
    return str(out), m


def test_old_manifest_is_checked_when_its_tokenizer_is_still_there(
    real_prepared, tiny_teacher_dir, tmp_path, real_tokenizer_dir
):
    _, m = old_manifest(real_prepared, tmp_path)
    assert m["tokenizer"]["fingerprint"] == load_tokenizer_info(str(real_tokenizer_dir)).fingerprint
    bad = load_teacher(
        str(teacher_with_tokenizer(tiny_teacher_dir, tmp_path / "s", swap_good_and_bad))
    )
    with pytest.raises(TokenizerMismatchError, match="recomputed"):
        check_teacher(bad, "swapped", m, real_prepared)
    check_teacher(load_teacher(str(tiny_teacher_dir)), "same", m, real_prepared)


def test_old_manifest_that_cannot_be_checked_warns(
    real_prepared, tiny_teacher_dir, tmp_path, caplog
):
    _, m = old_manifest(real_prepared, tmp_path, path=str(tmp_path / "gone"))
    teacher = load_teacher(str(tiny_teacher_dir))
    with caplog.at_level(logging.WARNING, logger="distil.teacher.compat"):
        check_teacher(teacher, "t", m, real_prepared)  # accepted ...
    (rec,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    msg = rec.getMessage()  # ... with a warning that says why and the fix
    assert "predates tokenizer identities" in msg and str(tmp_path / "gone") in msg
    assert "Re-run the same `distil prepare` command" in msg


@pytest.fixture(scope="module")
def deberta_teacher_dir(tmp_path_factory) -> Path:
    """A tiny random ``DebertaV2ForMaskedLM`` (the vocab size of BERT's, so only the type differs):
    a masked LM of a family distil does not support."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    torch.manual_seed(0)
    cfg = DebertaV2Config(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=130,
    )
    out = tmp_path_factory.mktemp("deberta")
    DebertaV2ForMaskedLM(cfg).save_pretrained(out, safe_serialization=True)
    return out


def test_a_deberta_teacher_is_refused_by_the_logits_stage(
    real_prepared, deberta_teacher_dir, tmp_path, monkeypatch
):
    from distil.jobs import teacher_logits

    monkeypatch.setattr(teacher_logits, "init_ray", no_ray)

    cfg = LogitsConfig(
        input=real_prepared, cache_root=str(tmp_path / "cache"), teacher=str(deberta_teacher_dir)
    )
    with pytest.raises(UnsupportedTeacherError) as e:
        teacher_logits.run(cfg)
    msg = str(e.value)
    assert "'deberta-v2' checkpoint (DebertaV2ForMaskedLM)" in msg
    assert "'bert' (BERT), 'roberta' (RoBERTa), 'xlm-roberta' (XLM-RoBERTa)" in msg
    assert str(deberta_teacher_dir) in msg
    assert not (tmp_path / "cache").exists()


def test_a_deberta_teacher_is_refused_by_adapt_and_the_distil_recipe(
    real_prepared, deberta_teacher_dir, tmp_path
):
    from distil.teacher.adapt import adapt
    from distil.teacher.config import AdaptConfig
    from distil.train.config import DistilConfig
    from distil.train.recipe import DistilRecipe

    with pytest.raises(UnsupportedTeacherError, match="distil supports the teacher families"):
        adapt(AdaptConfig(input=real_prepared, output=str(tmp_path / "a"),
                          teacher=str(deberta_teacher_dir)))  # fmt: skip
    cfg = DistilConfig(mode="online", data=real_prepared, teacher=str(deberta_teacher_dir),
                       output=str(tmp_path / "o"), storage_path=str(tmp_path / "s"))  # fmt: skip
    with pytest.raises(UnsupportedTeacherError, match="distil supports the teacher families"):
        DistilRecipe(cfg, work_dir=str(tmp_path / "w")).setup(None)


def test_a_deberta_teacher_is_refused_by_the_distil_job_before_ray(
    real_prepared, deberta_teacher_dir, tmp_path, monkeypatch
):
    from distil.jobs import _ray_train
    from distil.jobs import distil as distil_job
    from distil.train.config import DistilConfig

    monkeypatch.setattr(_ray_train, "init_ray", no_ray)
    cfg = DistilConfig(mode="online", data=real_prepared, teacher=str(deberta_teacher_dir),
                       output=str(tmp_path / "o"), storage_path=str(tmp_path / "s"))  # fmt: skip
    with pytest.raises(UnsupportedTeacherError, match="distil supports the teacher families"):
        distil_job.run(cfg)
    assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()
