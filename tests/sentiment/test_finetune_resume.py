"""The fine-tuning recipe's checkpoint/resume and device discipline, in one process (no Ray).

The Ray job around it (checkpoints on S3, a killed worker, a resubmitted run) is in
tests/jobs/test_finetune_job.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune import FinetuneRecipe


@pytest.fixture
def cfg(tiny_base_dir, tmp_path, make_planted_reviews) -> FinetuneConfig:
    rows = make_planted_reviews(80)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return FinetuneConfig(
        model=str(tiny_base_dir),
        train=str(tmp_path / "train.jsonl"),
        output=str(tmp_path / "models"),
        max_steps=4,
        warmup_fraction=0.5,
        batch_size=8,
        max_length=16,
        log_every=1,
        checkpoint_every=2,
        lr=1e-3,
        torch_threads=1,
    )


def _recipe(cfg: FinetuneConfig, ckpt: str | None = None) -> FinetuneRecipe:
    recipe = FinetuneRecipe(cfg)
    recipe.setup(ckpt)
    return recipe


@pytest.mark.timeout(300)
def test_resume_from_checkpoint_continues_exactly(cfg, tmp_path):
    """4 steps in one go == 2 steps, checkpoint, a fresh recipe from the checkpoint, 2 steps:
    the same weights, optimizer moments, LR and loss history (dropout is on: the model is in
    train mode, so this also checks that dropout replays)."""
    straight = _recipe(cfg)
    assert straight.model.training and straight.model.config.hidden_dropout_prob > 0
    straight.train()

    first = _recipe(cfg)
    saved = []

    def report(step, metrics, save):
        assert metrics["step"] == step and save == (step % 2 == 0)  # log_every 1, ckpt 2
        if not save:
            return
        first.save_checkpoint(str(tmp_path))
        saved.append(step)
        raise KeyboardInterrupt  # stop here, as a killed worker would

    with pytest.raises(KeyboardInterrupt):
        first.train(report)
    assert saved == [2]

    resumed = _recipe(cfg, str(tmp_path))
    assert (resumed.step, resumed.start_step) == (2, 2)
    seen = []
    resumed.train(lambda step, metrics, save: seen.append((step, metrics["steps_run"], save)))
    # every log step is reported (step 2 is not redone), a checkpoint asked for at the end only
    assert seen == [(3, 1, False), (4, 2, True)]
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    exp_avg = [s["exp_avg"] for s in straight.optim.optimizer.state.values()]
    for a, b in zip(
        exp_avg, [s["exp_avg"] for s in resumed.optim.optimizer.state.values()], strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert (
        resumed.optim.scheduler.get_last_lr()
        == straight.optim.scheduler.get_last_lr()
        == [0.0, 0.0]
    )
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in straight.history], rel=1e-5
    )

    # a finished checkpoint does no steps; a checkpoint of other data is refused, naming why
    resumed.save_checkpoint(str(tmp_path))
    done = _recipe(cfg, str(tmp_path))
    assert done.train() == done.history[-1] and done.step == 4 and done.progress()["done"]
    other = cfg.model_copy(update={"max_train_examples": 40})
    with pytest.raises(
        ValueError, match="train examples, pool examples, total steps, workers.*--run-name"
    ):
        _recipe(other, str(tmp_path))


class _DeviceProvenance(TorchFunctionMode):
    """Records every tensor made by a factory call (``torch.tensor``, ``zeros``, ``full``, …)
    that names no ``device``: such a tensor lands on the default device (the CPU) whatever the
    model's device is, which is exactly what NCCL refuses at the collective."""

    def __init__(self) -> None:
        super().__init__()
        self.deviceless: list[torch.Tensor] = []  # strong refs: ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _device_constructors() and kwargs.get("device") is None:
            self.deviceless.append(out)
        return out


def _guard_collectives(monkeypatch, provenance: _DeviceProvenance, device_of) -> list:
    """Wrap the collectives the recipe may call: fail on a tensor off the model's device or one
    created without a device; return the list of tensors seen."""
    seen: list[torch.Tensor] = []

    def guarded(original):
        def call(tensor, *args, **kwargs):
            seen.append(tensor)
            assert tensor.device == device_of(), f"collective on {tensor.device}"
            assert not any(tensor is t for t in provenance.deviceless), (
                "collective tensor was created without device=: on CUDA it would sit on the CPU "
                "and NCCL would refuse it"
            )
            return original(tensor, *args, **kwargs)

        return call

    for name in ("all_reduce", "broadcast", "all_gather_into_tensor", "reduce_scatter_tensor"):
        monkeypatch.setattr(dist, name, guarded(getattr(dist, name)))
    return seen


@pytest.fixture
def process_group(tmp_path):
    """A real one-rank gloo process group, so the recipe takes its distributed code paths."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_every_collective_tensor_is_made_on_the_training_device(cfg, monkeypatch, process_group):
    """NCCL refuses CPU tensors, and a GPU is not here: on the CPU a tensor left on the default
    device and one on the model's device look the same. So the guard checks provenance instead:
    a tensor reaching a collective must not come from a factory call without ``device=`` (what
    ``torch.tensor([...])`` in a metrics reduction would be), and must be on the model's device.
    The control below shows the guard catching exactly that mistake."""
    recipe = _recipe(cfg)
    provenance = _DeviceProvenance()
    seen = _guard_collectives(
        monkeypatch, provenance, lambda: next(recipe.model.parameters()).device
    )

    with provenance, pytest.raises(AssertionError, match="created without device="):
        dist.all_reduce(torch.tensor([1.0, 2.0], dtype=torch.float64))  # the bug, on purpose
    seen.clear()

    with provenance:
        recipe.train()
    assert len(seen) == 4  # one loss reduction per log line (log_every=1, 4 steps)
    assert all(t.dtype == torch.float64 for t in seen)
    assert np.isfinite(recipe.history[-1]["loss"])
