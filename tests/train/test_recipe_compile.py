"""The compiled training step, on the CPU: the recipe's own ``torch.compile`` with the
``aot_eager`` backend (dynamo's graph capture and AOTAutograd, without inductor's code
generation), so graphs, recompiles and DDP's all-reduces are counted as they are on a GPU.

* one graph for a whole epoch of packed text, the short last batch included (``unpadded`` is
  a property of the run, not of a batch);
* DDP under compile all-reduces once per optimizer step with ``grad_accum`` > 1 (``no_sync`` is
  the DDP wrapper's, not the compiled module's), and its gradients stay views of its buckets
  from step to step (zeroed in place, not set to None);
* the online teacher runs outside the student's autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from stage3_data import cached_config, online_config
from torch._dynamo.utils import counters
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from distil.train.recipe import DistilRecipe


class Recorded:
    """The recipe's micro-batch iterator, counting what it hands out."""

    def __init__(self, batches):
        self.batches, self.taken, self.seen = batches, 0, []

    def __iter__(self):
        return self

    def __next__(self):
        batch, position = next(self.batches)
        self.taken += 1
        self.seen.append((batch["n_tokens"], batch["unpadded"], dict(position)))
        return batch, position


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def gloo_one_process(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["cached", "online"])
def test_one_graph_for_a_whole_epoch_including_the_short_last_batch(
    mode, tmp_path, packed_cache, packed_prepared_dir, tiny_teacher_dir
):
    kw = dict(compile=True, max_steps=1000, warmup_steps=1, batch_size=16)
    if mode == "cached":
        cfg = cached_config(tmp_path, packed_cache, **kw)
    else:
        cfg = online_config(tmp_path, packed_prepared_dir, tiny_teacher_dir, **kw)
    r = DistilRecipe(cfg, work_dir=str(tmp_path / "w"), compile_backend="aot_eager")
    r.setup(None)
    assert r.compiled and r.shape.unpadded  # packed text: every sequence fills seq_len
    batches = Recorded(r._micro_batches())
    try:
        while not batches.seen or batches.seen[-1][2]["epoch"] == 0:  # into the second epoch
            r.train_step(batches)
            assert batches.taken < 100, "the epoch never ended"
    finally:
        batches.batches.close()
    rows = [n_tokens // r.shape.seq_len for n_tokens, _, _ in batches.seen]
    # epoch 0 ended on a short batch, then epoch 1 began with a full one
    assert rows[-2] < cfg.batch_size == rows[-1] == rows[0], rows
    graphs = counters["stats"]["unique_graphs"]
    # the student's forward + loss, and online the teacher's encoder: compiled once each
    assert graphs == (1 if mode == "cached" else 2), dict(counters["stats"])
    assert counters["aot_autograd"]["total"] == graphs
    assert all(unpadded for _, unpadded, _ in batches.seen)  # no mask, no .all() sync


@pytest.mark.timeout(600)
def test_compiled_ddp_all_reduces_once_per_step_and_keeps_its_gradient_buckets(
    tmp_path, topk_cache, gloo_one_process
):
    cfg = cached_config(tmp_path, topk_cache, compile=True, grad_accum=3, max_steps=10)
    # two ranks' share of the data, wrapped in DDP over this one-process gloo group: DDP's
    # reducer and comm hook run as on any world size
    r = DistilRecipe(cfg, rank=0, world_size=2, work_dir=str(tmp_path / "w"),
                     compile_backend="aot_eager")  # fmt: skip
    r.setup(None)
    assert r.ddp is not None and r.model is not r.ddp  # compiled around DDP
    batches = Recorded(r._micro_batches())
    reduced_at: list[int] = []

    def counting_allreduce(state, bucket):
        reduced_at.append(batches.taken)  # which micro-batch's backward reduced
        return default_hooks.allreduce_hook(state, bucket)

    r.ddp.register_comm_hook(None, counting_allreduce)
    grads = []
    try:
        for _ in range(4):
            r.train_step(batches)
            grads.append({n: p.grad for n, p in r.student.named_parameters()})
    finally:
        batches.batches.close()
    assert batches.taken == 12
    # only the last micro-batch of each optimizer step all-reduces (every bucket once; DDP
    # re-buckets once after the first step, by the order the gradients came)
    assert set(reduced_at) == {3, 6, 9, 12}, reduced_at
    buckets = reduced_at.count(6)
    assert reduced_at.count(9) == reduced_at.count(12) == buckets
    # gradients are views of DDP's buckets (a few storages for every parameter), zeroed in
    # place: the same memory step after step, never re-allocated
    for step in grads:
        assert all(g is not None for g in step.values())
        assert len({g.untyped_storage().data_ptr() for g in step.values()}) <= buckets
    ptrs = [{n: g.data_ptr() for n, g in step.items()} for step in grads[1:]]
    assert ptrs[0] == ptrs[1] == ptrs[2]


@pytest.mark.timeout(300)
def test_online_teacher_runs_outside_the_students_autocast(
    tmp_path, prepared_dir, tiny_teacher_dir, monkeypatch
):
    r = DistilRecipe(
        online_config(tmp_path, prepared_dir, tiny_teacher_dir), work_dir=str(tmp_path)
    )
    r.setup(None)
    # the CPU step runs without autocast: switch the student's on to see where it applies
    monkeypatch.setattr(r, "autocast", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    seen: dict[str, bool] = {}

    def record(name):
        def hook(module, args, kwargs):
            seen[name] = torch.is_autocast_enabled("cpu")

        return hook

    r.source.encoder.register_forward_pre_hook(record("teacher"), with_kwargs=True)
    r.module.register_forward_pre_hook(record("student"), with_kwargs=True)
    batches = r._micro_batches()
    try:
        r.train_step(batches)
    finally:
        batches.close()
    assert seen == {"teacher": False, "student": True}
