"""The training skeleton (distil.training) on small real torch modules: which parameters
decay, a checkpointed optimizer resuming exactly, clipping from config, transformers' schedules,
the DDP no_sync through a compiled wrapper, and the one FLOP count the benches use."""

from __future__ import annotations

import math
import socket
from types import SimpleNamespace

import pytest
import torch
import transformers
from bert_fixtures import tiny_bert_config

from distil import training


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    )


def _optim(model: torch.nn.Module, **kw) -> training.Optimization:
    opts = {"lr": 1e-2, "weight_decay": 0.1, "max_grad_norm": 1.0}
    opts.update({k: kw.pop(k) for k in list(kw) if k in opts})
    base = dict(warmup_steps=2, total_steps=10, device=torch.device("cpu"))
    return training.optimization(
        model.named_parameters(), SimpleNamespace(**opts), **{**base, **kw}
    )


def _train(model: torch.nn.Module, optim: training.Optimization, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x, y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)
        optim.optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optim.step()


def test_matrices_decay_and_biases_and_layer_norms_do_not():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_bert_config())
    decay, no_decay = training.param_groups(model.named_parameters(), 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    assert "bert.embeddings.word_embeddings.weight" in decayed
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert "classifier.weight" in decayed
    assert all(n.endswith("bias") or "LayerNorm" in n for n in kept)
    assert "bert.encoder.layer.1.output.LayerNorm.weight" in kept
    assert "bert.encoder.layer.1.output.dense.bias" in kept


def test_a_resumed_optimizer_takes_the_same_next_steps_as_an_uninterrupted_one():
    straight = _model()
    opt = _optim(straight)
    _train(straight, opt, range(6))

    first = _model()
    opt_a = _optim(first)
    _train(first, opt_a, range(3))
    saved = {"model": first.state_dict(), **opt_a.state_dict()}
    resumed = _model(seed=1)  # another init: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt_b = _optim(resumed)
    opt_b.load_state_dict(saved)
    _train(resumed, opt_b, range(3, 6))

    assert opt_b.lr == opt.lr
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_gradients_are_clipped_to_the_configured_norm():
    model = _model()
    optim = _optim(model, max_grad_norm=0.25)
    x = torch.randn(16, 4) * 100  # a large loss: gradients far above the norm
    model(x).pow(2).sum().backward()
    before = optim.step()
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert before > 10 and after == pytest.approx(0.25, rel=1e-4)


@pytest.mark.parametrize(
    ("schedule", "reference"),
    [
        ("linear", transformers.get_linear_schedule_with_warmup),
        ("cosine", transformers.get_cosine_schedule_with_warmup),
        ("constant", lambda opt, warmup, _total: transformers.get_constant_schedule_with_warmup(opt, warmup)),
    ],
)  # fmt: skip
def test_the_schedule_is_transformers_own(schedule, reference):
    warmup, total = 3, 12
    ours = _optim(_model(), schedule=schedule, warmup_steps=warmup, total_steps=total)
    model = _model()
    ref_opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref = reference(ref_opt, warmup, total)
    lrs, ref_lrs = [], []
    for _ in range(total):
        lrs.append(ours.lr)
        ref_lrs.append(ref.get_last_lr()[0])
        ours.optimizer.step()
        ours.scheduler.step()
        ref_opt.step()
        ref.step()
    assert lrs == ref_lrs
    assert lrs[0] == 0.0 and lrs[warmup] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="use one of linear, cosine, constant"):
        _optim(_model(), schedule="step")


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_a_schedule_started_one_step_in_takes_its_first_update_at_a_nonzero_lr(schedule):
    # adaptation's schedule: warm-up (s+1)/warmup, decay reaching 0 one step after the last update
    warmup, total = 3, 8
    ours = _optim(_model(), schedule=schedule, warmup_steps=warmup, total_steps=total, first_step=1)
    lrs = []
    for _ in range(total):
        lrs.append(ours.lr / 1e-2)
        ours.optimizer.step()
        ours.scheduler.step()
    expected = []
    for s in range(total):
        progress = (s - warmup + 1) / (total - warmup + 1)
        decay = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}
        expected.append((s + 1) / warmup if s < warmup else decay.get(schedule, 1.0))
    assert lrs == pytest.approx(expected)
    assert lrs[0] > 0 and lrs[warmup - 1] == pytest.approx(1.0)


def test_autocast_keeps_fp32_on_the_cpu_even_when_bf16_is_asked():
    x = torch.randn(4, 4)
    with training.autocast(torch.device("cpu"), bf16=True):
        assert (x @ x).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_autocast_runs_matmuls_in_bf16_on_cuda_when_asked():
    x = torch.randn(4, 4, device="cuda")
    with training.autocast(x.device, bf16=True):
        assert (x @ x).dtype == torch.bfloat16
    with training.autocast(x.device, bf16=False):
        assert (x @ x).dtype == torch.float32


def test_step_seed_replays_dropout_and_differs_by_rank():
    def mask(seed: int, step: int, rank: int) -> torch.Tensor:
        training.seed_step(seed, step, rank)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    assert torch.equal(mask(0, 5, 0), mask(0, 5, 0))
    assert not torch.equal(mask(0, 5, 0), mask(0, 5, 1))
    assert not torch.equal(mask(0, 5, 0), mask(0, 6, 0))


@pytest.mark.timeout(120)
def test_no_sync_reaches_ddp_through_a_compiled_wrapper():
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        ddp = training.wrap_ddp(_model(), torch.device("cpu"))
        compiled = torch.compile(ddp, backend="eager")  # wraps; compiles only when called
        assert training.ddp_of(compiled) is ddp and training.ddp_of(ddp) is ddp
        with training.grad_sync(compiled, sync=False):
            assert ddp.require_backward_grad_sync is False
        with training.grad_sync(compiled, sync=True):
            assert ddp.require_backward_grad_sync is True
        assert training.ddp_of(_model()) is None
        with training.grad_sync(_model(), sync=False):
            pass  # no DDP: nothing to hold back
    finally:
        dist.destroy_process_group()


def test_flop_count_of_a_distil_student_step():
    """The figure bench/gpu_check.py's docstring states: the 6-layer/768 student at seq 128
    with 15% of positions masked costs ~283 MFLOP per token and step (3 forwards)."""
    cfg = tiny_bert_config(layers=6, hidden_size=768, intermediate_size=3072)
    tokens, seq = 128 * 64, 128
    per_token = training.train_step_flops(cfg, tokens, int(0.15 * tokens), seq) / tokens
    assert per_token / 1e6 == pytest.approx(283, rel=0.01)
    assert training.train_step_flops(cfg, tokens, 0, seq) == 3 * training.forward_flops(
        cfg, tokens, 0, seq
    )
    assert training.mfu(989e12, 1.0, training.peak_bf16_tflops("NVIDIA H100 80GB HBM3")) == 1.0
    assert training.peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0
    assert training.mfu(1e12, 1.0, None) is None


def test_the_benches_count_flops_with_the_package():
    """One FLOP count: the benches import it, none defines its own."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        for name in ("teacher_logits", "gpu_check"):
            spec = importlib.util.spec_from_file_location(f"bench_{name}", bench / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            source = (bench / f"{name}.py").read_text()
            assert "from distil.training import" in source
            assert not any(
                hasattr(module, f)
                for f in ("model_flops", "student_step_flops", "PEAK_BF16_TFLOPS")
            )
    finally:
        sys.path.remove(str(bench))
    assert math.isfinite(training.forward_flops(tiny_bert_config(), 10, 1, 10))
