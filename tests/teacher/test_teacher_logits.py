"""Acceptance 1: cached targets equal an independent HF BertForMaskedLM run on the rebuilt input."""

import numpy as np
import pytest
import torch
from teacher_helpers import build_cache

from distil.data import shards
from distil.data.readers.stream import ReadPosition
from distil.teacher.cache import TeacherCache
from distil.teacher.load import load_teacher
from distil.teacher.logits import teacher_logits_batch


@pytest.fixture(scope="module")
def hf_teacher(tiny_teacher_dir):
    from transformers import BertForMaskedLM

    return BertForMaskedLM.from_pretrained(str(tiny_teacher_dir)).eval()


def _original_rows(prepared: str) -> dict[int, np.ndarray]:
    out = {}
    for f in shards.open_prepared(prepared)["files"]:
        t = shards.read_table(f"{prepared}/{f['name']}")
        ids = shards.input_ids_matrix(t)
        for sid, row, n in zip(
            t.column("seq_id").to_numpy(), ids, t.column("length").to_numpy(), strict=True
        ):
            out[int(sid)] = row[:n]
    return out


@pytest.mark.parametrize("mode", ["topk", "sampled"])
def test_cached_targets_match_hf_masked_lm_on_the_rebuilt_input(
    mode, prepared_dir, tiny_teacher_dir, hf_teacher, tmp_path
):
    url = build_cache(prepared_dir, str(tiny_teacher_dir), str(tmp_path), sparsity=mode, copies=2)
    cache = TeacherCache(url)
    originals = _original_rows(prepared_dir)
    # seq_ids are not in the batch: recover them by matching the unmasked tokens
    checked = 0
    for batch in cache.iter_batches(8, ReadPosition(split="all"), shuffle=False, all_copies=True):
        with torch.no_grad():
            logits = hf_teacher(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        sel = batch["labels"] != -100
        ref = torch.log_softmax(logits[sel], -1)  # [N, V] in row-major order, like the cache
        assert ref.shape[0] == batch["target_ids"].shape[0]
        got = torch.gather(ref, 1, batch["target_ids"])
        # fp16 storage: relative error 2**-11 of |log-prob| (~10 here) plus rounding
        assert torch.allclose(batch["target_logprobs"], got, atol=0.02, rtol=2e-3)
        # the log-partition at each served temperature: 0 at T = 1, logsumexp(log p / T) else
        assert cache.kd_temperatures == [1.0, 2.0]
        assert torch.all(batch["target_logz"][:, 0] == 0)
        assert torch.allclose(batch["target_logz"][:, 1], torch.logsumexp(ref / 2.0, -1), atol=1e-4)
        if mode == "topk":
            assert torch.equal(batch["target_ids"][:, 0], ref.argmax(-1))
            assert torch.all(batch["target_logprobs"][:, :-1] >= batch["target_logprobs"][:, 1:])
        else:
            assert torch.all(batch["target_counts"].sum(-1) == cache.k)
        # the rebuilt input is the original sequence with only the masked positions changed
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["attention_mask"][row].sum())
            x = batch["input_ids"][row, :n].numpy()
            lab = batch["labels"][row, :n].numpy()
            orig = np.where(lab != -100, lab, x)
            assert any(np.array_equal(orig, o) for o in originals.values())
            checked += int((lab != -100).sum())
    assert checked == cache.manifest["positions"] > 0
    assert cache.manifest["rows"] == 2 * sum(len(v) > 0 for v in originals.values())


def test_head_runs_only_on_the_selected_positions(tiny_teacher_dir):
    model = load_teacher(str(tiny_teacher_dir)).model
    rows_seen = []
    hook = model.cls.register_forward_hook(lambda m, i, o: rows_seen.append(tuple(i[0].shape)))
    x = torch.randint(1000, 2000, (4, 16))
    am = torch.ones_like(x)
    pos = torch.zeros_like(x, dtype=torch.bool)
    pos[0, 3] = pos[2, 5] = pos[2, 9] = True
    out = teacher_logits_batch(model, x, am, pos, {"mode": "topk", "k": 4})
    hook.remove()
    assert rows_seen == [(3, 32)]  # [N, hidden], never [B, L, hidden]
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=x, attention_mask=am).logits[pos], -1)
    assert torch.equal(out.ids[:, 0], full.argmax(-1))
    assert torch.allclose(out.logprobs, torch.topk(full, 4).values, atol=1e-4)


def _masked_unit(prepared_dir, teacher_dir, tmp_path, mode: str):
    """A worker as the stage holds it (CPU, float32) and its first masked unit."""
    from distil.teacher.build import TeacherWorker, plan_cache
    from distil.teacher.config import LogitsConfig
    from distil.teacher.units import mask_unit

    cfg = LogitsConfig(input=prepared_dir, cache_root=str(tmp_path), teacher=str(teacher_dir),
                       sparsity=mode, k=4, hidden_sketch_dims=8, copies=2)  # fmt: skip
    loaded = load_teacher(str(teacher_dir))
    plan = plan_cache(cfg, loaded.weights_sha256, loaded.model.config.hidden_size)
    worker = TeacherWorker(cfg.model_dump(), plan.teacher_sha256, plan.prepared)
    return worker, mask_unit(plan.units[0], worker.masking), int(plan.prepared["seq_len"])


@pytest.mark.parametrize("mode", ["topk", "sampled"])
def test_fixed_compile_shapes_give_the_same_cache_table(
    mode, prepared_dir, tiny_teacher_dir, tmp_path
):
    """``LogitsConfig.compile``'s fixed shapes (every batch padded to batch_size rows and one of
    ``compile_widths``) change what the encoder sees, not what the cache holds."""
    from distil.teacher.logits import compile_widths, compute_unit

    worker, masked, seq_len = _masked_unit(prepared_dir, tiny_teacher_dir, tmp_path, mode)
    widths = compile_widths(seq_len)
    assert widths == [8, 16, 32]
    shapes = []
    hook = worker.model.bert.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    args = (worker.model, masked, worker.masking, worker.sparsity, 5, worker.pad_id, worker.sketch)
    eager = compute_unit(*args)
    n_eager = len(shapes)
    fixed = compute_unit(*args, widths=widths)
    hook.remove()
    assert {s for s in shapes[n_eager:]} <= {(5, w) for w in widths}
    # eager ran other widths, and a short last batch: both were padded to the fixed shapes
    assert any(w not in widths for _, w in shapes[:n_eager]), shapes[:n_eager]
    assert any(b < 5 for b, _ in shapes[:n_eager])
    assert eager.column_names == fixed.column_names
    for name in eager.column_names:
        a, b = eager.column(name).to_pylist(), fixed.column(name).to_pylist()
        if name == "target_logprobs":
            np.testing.assert_allclose(np.concatenate(a), np.concatenate(b), atol=2e-3)
        elif name == "hidden_sketch":  # int8 rounding of float32 sums in another order
            sa = np.frombuffer(b"".join(a), np.int8).astype(int)
            sb = np.frombuffer(b"".join(b), np.int8).astype(int)
            assert np.abs(sa - sb).max() <= 1
        else:
            assert a == b, name


def test_the_encoder_gets_no_mask_for_an_unpadded_batch_and_a_4d_one_otherwise(tiny_teacher_dir):
    """No 2-D mask reaches the encoder: transformers would check it with ``.all()`` (a device
    sync) on every forward, and a mask rules out SDPA's flash kernel where none is needed."""
    model = load_teacher(str(tiny_teacher_dir)).model
    masks = []
    hook = model.bert.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw["attention_mask"]), with_kwargs=True
    )
    x = torch.randint(1000, 2000, (3, 12))
    pos = torch.zeros_like(x, dtype=torch.bool)
    pos[:, 4] = True
    full = teacher_logits_batch(model, x, torch.ones_like(x), pos, {"mode": "topk", "k": 4})
    am = torch.ones_like(x)
    am[1, 8:] = 0
    padded = teacher_logits_batch(model, x, am, pos, {"mode": "topk", "k": 4})
    # rows past ``rows`` only pad the batch to a fixed shape: they never ask for a mask
    extra = torch.cat([x, torch.full((2, 12), 0)])
    pos_extra = torch.cat([pos, torch.zeros((2, 12), dtype=torch.bool)])
    teacher_logits_batch(model, extra, torch.ones_like(extra), pos_extra,
                         {"mode": "topk", "k": 4}, rows=3)  # fmt: skip
    hook.remove()
    assert masks[0] is None and masks[2] is None
    assert masks[1].shape == (3, 1, 1, 12) and masks[1].dtype == torch.bool
    assert torch.equal(full.ids[[0, 2]], padded.ids[[0, 2]])  # the unpadded rows agree


def test_a_bf16_teacher_runs_in_bf16_without_autocast(tiny_teacher_dir):
    """The stage holds bf16 weights on CUDA and runs them as they are: layer norms in bf16 too
    (under autocast they ran in float32, and every matmul re-checked its casts)."""
    model = load_teacher(str(tiny_teacher_dir)).model.to(torch.bfloat16)
    dtypes = []
    hook = model.bert.encoder.layer[0].output.LayerNorm.register_forward_hook(
        lambda m, i, o: dtypes.append((o.dtype, torch.is_autocast_enabled("cpu")))
    )
    x = torch.randint(1000, 2000, (2, 8))
    pos = torch.zeros_like(x, dtype=torch.bool)
    pos[:, 3] = True
    out = teacher_logits_batch(model, x, torch.ones_like(x), pos, {"mode": "topk", "k": 4})
    hook.remove()
    assert dtypes == [(torch.bfloat16, False)]
    assert out.logprobs.dtype == torch.float32 and out.ids.shape == (2, 4)


def test_results_come_back_in_one_packed_copy_with_every_dtype_intact():
    """The byte packing behind the one pinned copy back (``_pack`` / ``_unpack``)."""
    from distil.teacher.logits import _pack, _unpack

    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randint(0, 30000, (7, 3), generator=g),  # int64 ids
        torch.randn(7, 3, generator=g),  # float32 log-probs
        None,  # no counts (top-k)
        torch.randn(7, 1, generator=g),
        torch.randint(-127, 128, (13, 5), generator=g).to(torch.int8),  # an odd byte count
    ]
    flat, layout = _pack(tensors)
    assert flat.dtype == torch.uint8 and flat.numel() == sum(
        t.numel() * t.element_size() for t in tensors if t is not None
    )
    back = _unpack(flat.clone(), layout)
    assert back[2] is None
    for a, b in zip(tensors, back, strict=True):
        if a is not None:
            assert b.dtype == a.dtype and torch.equal(a, b)
