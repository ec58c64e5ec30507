"""``DistilRecipe``: one DDP rank of the distillation job, free of Ray so it runs (and is tested)
in a plain process too. ``distil.jobs.distil`` wraps it in a Ray Train worker.

Why one module over ~350 lines: it is one class whose methods share its state (model, optimizer,
scheduler, step and token counters); setup, the loss, the train loop, evaluation and
checkpointing only make sense together, so splitting them into modules would scatter one
object. What had a seam left: reading, sharding and the data position are
``distil.train.stream`` (``EpochStream``), the teacher checks ``distil.train.identity``.

setup -> train -> save_checkpoint, torchtune style. A checkpoint holds the student as an HF
directory plus the optimizer/scheduler/data position, so a resumed run continues at the exact
step and batch where the checkpoint was taken (a rank's data order is a function of
(world_size, rank, seed, epoch), and the reader seeks to the saved batch).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoTokenizer, BertForMaskedLM, get_linear_schedule_with_warmup

from distil import losses
from distil.student.model import MaskedLMForDistillation, build_student, mlm_rows
from distil.teacher.load import load_teacher
from distil.train.config import DistilConfig
from distil.train.data import PreparedBatches, to_device
from distil.train.identity import (
    cached_sketch,
    check_cache_teacher,
    check_cache_temperature,
    check_sketch_size,
    teacher_ref,
)
from distil.train.stream import EpochStream

log = logging.getLogger("distil.train")

STUDENT_DIR = "student"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.json"

# called at log steps and evaluations with (step, metrics, save_checkpoint?): the Ray job
# reports there (and tracks), and checkpoints when asked
ReportFn = Callable[[int, dict[str, Any], bool], None]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class DistilRecipe:
    def __init__(
        self,
        cfg: DistilConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        work_dir: str = "/tmp/distil-train",
    ):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.work_dir = work_dir
        self.step = 0
        self.data = EpochStream(self._epoch_batches)  # (epoch, micro-batches consumed)
        self.tokens_seen = 0  # this rank's
        self.tokens_seen_global = 0  # all ranks', summed at log and checkpoint steps
        self.train_seconds = 0.0
        self.start_step = 0
        self.history: list[dict[str, Any]] = []
        self.train_history: list[dict[str, float]] = []  # (step, loss) at each log line
        self.teacher: BertForMaskedLM | None = None
        self.cache = None
        self.sketch: torch.Tensor | None = None  # cached mode: R of the cache's hidden sketch

    # ------------------------------------------------------------------ setup
    def setup(self, checkpoint_dir: str | None = None) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        need_teacher = cfg.mode == "online" or checkpoint_dir is None
        if cfg.mode == "cached":
            from distil.teacher.cache import TeacherCache

            self.cache = TeacherCache(cfg.cache)
            self.sparsity = self.cache.manifest.get("sparsity", {"mode": "topk"})
            check_cache_temperature(
                self.cache.manifest, cfg.cache, cfg.temperature, cfg.allow_temperature_mismatch
            )
            self.sketch = cached_sketch(self.cache, cfg.alpha_cos)
        if need_teacher:
            # online mode runs the head every step: a missing one is refused with the fix
            loaded = load_teacher(teacher_ref(cfg), require_mlm_head=cfg.mode == "online")
            teacher, self.tokenizer = loaded.model.eval(), loaded.tokenizer
            if cfg.mode == "cached":
                check_cache_teacher(
                    self.cache.manifest,
                    cfg.cache,
                    teacher_ref(cfg),
                    loaded.weights_sha256,
                    cfg.allow_teacher_mismatch,
                )
        if checkpoint_dir is None:
            student = build_student(teacher, cfg.student_layers)
        else:
            student_dir = os.path.join(checkpoint_dir, STUDENT_DIR)
            student = BertForMaskedLM.from_pretrained(student_dir, use_safetensors=True)
            if not need_teacher:
                self.tokenizer = AutoTokenizer.from_pretrained(student_dir)
        if cfg.mode == "online":
            self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.student = student.to(self.device).train()
        if self.sketch is not None:
            self.sketch = self.sketch.to(self.device)
            check_sketch_size(self.sketch, self.student.config.hidden_size, cfg.cache)
        self.module = MaskedLMForDistillation(self.student)
        self.model: torch.nn.Module = self.module
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        self.optimizer = torch.optim.AdamW(
            _param_groups(self.student, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, min(cfg.warmup_steps, cfg.max_steps - 1), cfg.max_steps
        )
        if checkpoint_dir is not None:
            state = torch.load(
                os.path.join(checkpoint_dir, TRAINER_STATE),
                map_location=self.device,
                weights_only=True,
            )
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.data.epoch, self.data.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
            self.tokens_seen_global = state.get("tokens_seen_global", self.tokens_seen)
            self.train_seconds = state.get("train_seconds", 0.0)
            self.history = json.loads(state["history"])
            self.train_history = json.loads(state.get("train_history", "[]"))
        self.start_step = self.step
        if cfg.mode == "online":
            frac = cfg.heldout_fraction
            self.train_source = PreparedBatches(
                cfg.data,
                rank=self.rank,
                world_size=self.world_size,
                split="train",
                heldout_fraction=frac,
                mlm_probability=cfg.mlm_probability,
            )
            self.eval_source = PreparedBatches(
                cfg.data,
                split="heldout",
                heldout_fraction=frac,
                mlm_probability=cfg.mlm_probability,
            )

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of this rank's batches from batch ``start`` on (the reader seeks there)."""
        cfg = self.cfg
        kw = {"seed": cfg.seed, "epoch": epoch, "start_batch": start}
        if cfg.mode == "online":
            return self.train_source.iter_batches(cfg.batch_size, **kw)
        return self.cache.iter_batches(
            cfg.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            split="train",
            heldout_fraction=cfg.heldout_fraction,
            **kw,
        )

    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless micro-batches from the saved (epoch, batch) position onwards."""
        return iter(self.data)

    def _all_reduce(self, values: list[float]) -> torch.Tensor:
        """Sum over ranks, on the training device (NCCL reduces only CUDA tensors)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return t.cpu()

    # ------------------------------------------------------------------ loss
    def _log_partition(self, batch: dict[str, torch.Tensor], t: float) -> torch.Tensor | None:
        """The teacher's log-partition at ``t`` (``[N]``), None at T = 1 (which needs none);
        setup checked that the cache serves the run's temperature."""
        if t == 1.0:
            return None
        temps = self.cache.kd_temperatures
        j = min(range(len(temps)), key=lambda i: abs(temps[i] - t))
        return batch["target_logz"][:, j]

    def _kd_cached(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], t: float):
        logz = self._log_partition(batch, t)
        if self.sparsity.get("mode") == "sampled":
            return losses.kd_sampled(
                logits,
                batch["target_ids"],
                batch["target_logprobs"],
                batch["target_counts"],
                t,
                sample_temperature=self.sparsity.get("temperature"),
                log_partition=logz,
            )
        return losses.kd_topk(logits, batch["target_ids"], batch["target_logprobs"], t, logz)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        labels = batch["labels"]
        kd_pos = batch.get("kd_positions")  # a kd_positions=all cache: targets at every token
        logits, hidden = self.model(batch["input_ids"], batch["attention_mask"], labels, kd_pos)
        rows = mlm_rows(labels, kd_pos)
        mlm_logits = logits if rows is None else logits[rows]
        masked_labels = labels[labels != -100]
        total = logits.sum() * 0.0
        parts: dict[str, float] = {}
        if cfg.alpha_mlm > 0:
            mlm = losses.mlm_loss(mlm_logits, masked_labels)
            total = total + cfg.alpha_mlm * mlm
            parts["loss_mlm"] = mlm.item()
        if cfg.mode == "online":
            with torch.no_grad():
                t_hidden = self.teacher.bert(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )[0]
                t_logits = self.teacher.cls(t_hidden[labels != -100]) if cfg.alpha_ce > 0 else None
            if cfg.alpha_ce > 0:
                kd = losses.kd_dense(logits, t_logits, cfg.temperature)
                total = total + cfg.alpha_ce * kd
                parts["loss_kd"] = kd.item()
            if cfg.alpha_cos > 0:
                cos = losses.cosine_loss(hidden, t_hidden, batch["attention_mask"])
                total = total + cfg.alpha_cos * cos
                parts["loss_cos"] = cos.item()
        else:
            if cfg.alpha_ce > 0:
                kd = self._kd_cached(logits, batch, cfg.temperature)
                total = total + cfg.alpha_ce * kd
                parts["loss_kd"] = kd.item()
            if cfg.alpha_cos > 0:  # setup refused a cache without a sketch
                mask = batch["attention_mask"]
                cos = losses.sketch_cosine_loss(hidden, mask, self.sketch, batch["hidden_sketch"])
                total = total + cfg.alpha_cos * cos
                parts["loss_cos"] = cos.item()
        parts["loss"] = total.item()
        return total, parts

    # ------------------------------------------------------------------ train
    def train_step(self, micro_batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches (DDP syncs only on the last)."""
        cfg = self.cfg
        autocast = torch.autocast(
            "cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda"
        )
        # dropout depends on (seed, step, rank) only, so a resumed run replays the same masks
        torch.manual_seed(cfg.seed * 1_000_003 + self.step * 1_009 + self.rank)
        sums: dict[str, float] = {}
        tokens = 0
        for i in range(cfg.grad_accum):
            batch = to_device(next(micro_batches), self.device)
            sync = i == cfg.grad_accum - 1 or not isinstance(
                self.model, torch.nn.parallel.DistributedDataParallel
            )
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx, autocast:
                loss, parts = self.loss(batch)
                (loss / cfg.grad_accum).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            tokens += int(batch["attention_mask"].sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += tokens
        sums["grad_norm"] = float(grad_norm)
        sums["tokens"] = tokens
        return sums

    def train(self, report: ReportFn | None = None) -> dict[str, Any]:
        """Run to ``max_steps``; calls ``report`` at every log step and evaluation (so Ray
        Train's ``metrics_dataframe`` and a tracker see the whole curve), asking for a checkpoint
        only at checkpoint steps and at the end."""
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            log.info("run already finished at step %d: nothing to do", self.step)
            final = self.final_metrics()
            if report:
                report(self.step, final, False)
            return final
        if self.rank == 0:
            log.info(
                "training steps %d..%d on %d worker(s) (mode=%s)",
                self.step,
                cfg.max_steps,
                self.world_size,
                cfg.mode,
            )
        batches = self._micro_batches()
        window_t, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
        last: dict[str, float] = {}
        while self.step < cfg.max_steps:
            last = self.train_step(batches)
            window_tokens += last["tokens"]
            window_loss += last["loss"]
            window_n += 1
            done = self.step >= cfg.max_steps
            ckpt = report is not None and self.step % cfg.checkpoint_every == 0
            evaluate = self.step % cfg.eval_every == 0 or done
            logged: dict[str, float] = {}
            if self.step % cfg.log_every == 0 or done or ckpt:  # every rank gets here together
                agg = self._all_reduce([window_loss, window_n, window_tokens])
                secs = time.perf_counter() - window_t
                self.tokens_seen_global += int(agg[2])
                self.train_seconds += secs
                # the window's mean loss over every rank; the parts and grad norm are this
                # rank's last step
                logged = {
                    **last,
                    "loss": float(agg[0] / agg[1]),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": float(agg[2] / secs),
                }
                if self.rank == 0:
                    self.train_history.append(
                        {
                            "step": self.step,
                            "loss": logged["loss"],
                            "tokens_per_s": logged["tokens_per_s"],
                        }
                    )
                    log.info(
                        "step %d/%d loss %.4f tokens/s %.0f lr %.2e",
                        self.step,
                        cfg.max_steps,
                        logged["loss"],
                        logged["tokens_per_s"],
                        logged["lr"],
                    )
                window_t, window_tokens, window_loss, window_n = time.perf_counter(), 0, 0.0, 0
            if evaluate and self.rank == 0:
                ev = self.evaluate()
                self.history.append({"step": self.step, **ev})
                log.info("eval step %d: %s", self.step, json.dumps(ev))
            if report and (logged or evaluate):  # the same steps on every rank
                metrics = {"step": self.step, "epoch": self.data.epoch, **logged}
                if self.history:  # the latest evaluation, under its own step
                    ev = self.history[-1]
                    metrics.update({("eval_step" if k == "step" else k): v for k, v in ev.items()})
                report(self.step, metrics, ckpt or done)
        return self.final_metrics()

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        """Held-out student MLM accuracy, top-1 agreement with the teacher and KL(teacher||student)
        at T = 1 (``distil.eval.mlm_metrics``, the same computation as ``distil eval``): over the
        full vocab online; from the cache, the KL coarsened to {cached ids, rest} (a lower bound,
        ``losses.kl_coarse``; a sampled cache's drawn ids, whatever temperature they were drawn
        at)."""
        from distil.eval import mlm_metrics

        cfg = self.cfg
        self.module.eval()
        if cfg.mode == "online":
            batches = self.eval_source.iter_batches(cfg.batch_size, seed=cfg.seed, epoch=0)
        else:
            batches = self.cache.iter_batches(
                cfg.batch_size,
                seed=cfg.seed,
                split="heldout",
                heldout_fraction=cfg.heldout_fraction,
            )
        ev = mlm_metrics(
            self.module,
            batches,
            device=self.device,
            max_batches=cfg.eval_batches,
            teacher=self.teacher if cfg.mode == "online" else None,
        )
        self.module.train()
        if ev["positions"] == 0:
            return {"eval_positions": 0}
        return {
            "eval_positions": ev["positions"],
            "eval_mlm_accuracy": ev["mlm_accuracy"],
            "eval_teacher_agreement": ev["top1_agreement"],
            "eval_kl_to_teacher": ev["kl"],
        }

    def final_metrics(self) -> dict[str, Any]:
        last_eval = self.history[-1] if self.history else {}
        return {
            "step": self.step,
            "start_step": self.start_step,
            "steps_run": self.step - self.start_step,
            "tokens_seen": self.tokens_seen,
            # all ranks': what the run did (tokens_seen is rank 0's alone)
            "tokens_seen_global": self.tokens_seen_global,
            "train_seconds": round(self.train_seconds, 3),
            "tokens_per_s_global": self.tokens_seen_global / max(self.train_seconds, 1e-9),
            "world_size": self.world_size,
            "mode": self.cfg.mode,
            "student_layers": self.student.config.num_hidden_layers,
            "alpha_ce": self.cfg.alpha_ce,
            "alpha_mlm": self.cfg.alpha_mlm,
            "alpha_cos": self.cfg.alpha_cos,
            "temperature": self.cfg.temperature,
            **last_eval,
            "eval_history": self.history,
            "train_history": self.train_history,
        }

    # ------------------------------------------------------------------ checkpoint
    def save_checkpoint(self, directory: str) -> None:
        """Student as a complete HF dir (weights + tokenizer) + optimizer/scheduler/data position
        (+ metrics so far)."""
        student_dir = os.path.join(directory, STUDENT_DIR)
        self.student.save_pretrained(student_dir, safe_serialization=True)
        self.tokenizer.save_pretrained(student_dir)
        torch.save(
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                **self.data.state(),  # epoch, batch_in_epoch: where the reader seeks
                "tokens_seen": self.tokens_seen,
                "tokens_seen_global": self.tokens_seen_global,
                "train_seconds": self.train_seconds,
                "history": json.dumps(self.history),
                "train_history": json.dumps(self.train_history),
            },
            os.path.join(directory, TRAINER_STATE),
        )
        with open(os.path.join(directory, METRICS), "w") as f:
            json.dump(self.final_metrics(), f, indent=2)
