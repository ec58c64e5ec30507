import pytest
import torch

from distil import storage
from distil.packaged import PACKAGED_TEACHER
from distil.teacher.load import MissingMLMHeadError, load_teacher


def test_tiny_teacher_loads_with_its_head_and_a_stable_weights_hash(tiny_teacher_dir):
    a = load_teacher(str(tiny_teacher_dir))
    b = load_teacher(str(tiny_teacher_dir), require_mlm_head=True)
    assert a.has_mlm_head and a.missing_keys == []
    assert a.weights_sha256 == b.weights_sha256 and len(a.weights_sha256) == 64
    assert type(a.model).__name__ == "BertForMaskedLM" and not a.model.training
    assert a.tokenizer.mask_token_id == 103


def test_packaged_encoder_reports_its_missing_head():
    t = load_teacher(PACKAGED_TEACHER)
    assert not t.has_mlm_head
    assert any(k.startswith("cls.predictions") for k in t.missing_keys)
    with pytest.raises(MissingMLMHeadError, match="distil teacher adapt"):
        load_teacher(PACKAGED_TEACHER, require_mlm_head=True)


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_teacher_dir):
    model = load_teacher(str(tiny_teacher_dir)).model
    model.save_pretrained(tmp_path, safe_serialization=False)
    if not list(tmp_path.glob("*.bin")):  # transformers 5 may always write safetensors
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
        torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="allow-pickle"):
        load_teacher(str(tmp_path))
    t = load_teacher(str(tmp_path), allow_pickle=True)
    ref = load_teacher(str(tiny_teacher_dir)).model
    x = torch.tensor([[101, 2023, 103, 102]])
    assert torch.allclose(t.model(x).logits, ref(x).logits, atol=1e-5)


@pytest.mark.timeout(120)
def test_teacher_from_object_storage_is_copied_and_hashes_the_same(
    s3_url, tiny_teacher_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))
    storage.upload_dir(str(tiny_teacher_dir), s3_url)
    remote = load_teacher(s3_url, require_mlm_head=True)
    local = load_teacher(str(tiny_teacher_dir))
    assert remote.weights_sha256 == local.weights_sha256
    assert remote.local_dir.startswith(str(tmp_path / "home" / "cache" / "models"))
    again = load_teacher(s3_url)  # second load reuses the local copy
    assert again.local_dir == remote.local_dir
