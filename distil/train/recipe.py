"""``DistilRecipe``: one DDP rank of the distillation job, free of Ray so it runs (and is tested)
in a plain process too. ``distil.jobs.distil`` wraps it in a Ray Train worker.

Why one module over ~350 lines: it is one class whose methods share its state (model, optimizer,
scheduler, step and token counters); setup, the loss, the train loop, evaluation and
checkpointing only make sense together, so splitting them into modules would scatter one
object. What had a seam left: reading, sharding and the data position are
``distil.data.readers.stream`` (``EpochStream``), the teacher checks ``distil.train.identity``, where
the teacher targets come from (a cache, or the teacher run every step) is
``distil.train.teacher_source``, and the optimizer, schedule, clipping, autocast and DDP wrap
are ``distil.training``'s.

setup -> train -> save_checkpoint, torchtune style. A checkpoint holds the student as an HF
directory plus the optimizer/scheduler/data position, so a resumed run continues at the exact
step and batch where the checkpoint was taken (a rank's data order is a function of
(world_size, rank, seed, epoch), and the reader seeks to the saved batch).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForMaskedLM, AutoTokenizer

from distil import training
from distil.data.readers.stream import EpochStream, ReadPosition
from distil.student.model import MaskedLMForDistillation, build_student
from distil.teacher.load import load_teacher
from distil.train.config import DistilConfig
from distil.train.data import DevicePrefetcher, fixed_shape
from distil.train.identity import teacher_ref
from distil.train.objective import PARTS, DistillationObjective
from distil.train.teacher_source import teacher_source

log = logging.getLogger("distil.train")

STUDENT_DIR = "student"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.json"


class DistilRecipe(training.Recipe):
    cfg: DistilConfig

    def __init__(
        self,
        cfg: DistilConfig,
        *,
        work_dir: str = "/tmp/distil-train",
        compile_backend: str | None = None,
        **rank_and_device: Any,
    ):
        """``compile_backend``: the ``torch.compile`` backend (default inductor); naming one
        also compiles on the CPU, where ``cfg.compile`` alone does not (tests compile the same
        step with the fast ``aot_eager`` backend to count graphs and all-reduces);
        ``rank_and_device``: ``rank``, ``world_size``, ``device`` (``training.Recipe``)."""
        super().__init__(cfg, **rank_and_device)
        self.compile_backend = compile_backend
        self.work_dir = work_dir
        self.data = EpochStream(self._epoch_batches)  # (epoch, micro-batches consumed)
        self.tokens_seen = 0  # this rank's
        self.tokens_seen_global = 0  # all ranks', summed at log and checkpoint steps
        self.history: list[dict[str, Any]] = []
        self.train_history: list[dict[str, float]] = []  # (step, loss) at each log line
        self.source = teacher_source(cfg)  # the teacher cache, or the teacher run every step

    # ------------------------------------------------------------------ setup
    def setup(self, checkpoint_dir: str | None = None) -> None:
        cfg, source = self.cfg, self.source
        torch.manual_seed(cfg.seed)
        source.open()
        need_teacher = source.needs_teacher(resuming=checkpoint_dir is not None)
        if need_teacher:
            # a source that runs the head every step refuses a teacher without one, with the fix
            loaded = load_teacher(teacher_ref(cfg), require_mlm_head=source.runs_teacher)
            teacher, self.tokenizer = loaded.model.eval(), loaded.tokenizer
            source.check_teacher(loaded)
        if checkpoint_dir is None:
            student = build_student(teacher, cfg.student_layers)
        else:
            student_dir = os.path.join(checkpoint_dir, STUDENT_DIR)
            student = AutoModelForMaskedLM.from_pretrained(student_dir, use_safetensors=True)
            if not need_teacher:
                self.tokenizer = AutoTokenizer.from_pretrained(student_dir)
        cuda = self.device.type == "cuda"
        if need_teacher:
            source.attach(teacher, self.device)
        self.student = student.to(self.device).train()
        source.to_device(self.device, self.student.config.hidden_size)
        self.module = MaskedLMForDistillation(self.student)
        self.objective = DistillationObjective(
            self.module,
            alpha_ce=cfg.alpha_ce,
            alpha_mlm=cfg.alpha_mlm,
            alpha_cos=cfg.alpha_cos,
            temperature=cfg.temperature,
            **source.objective_options(),
        )
        self.parts = self.objective.enabled_parts(online=source.runs_teacher)
        self.model: torch.nn.Module = self.objective
        # the DDP wrapper itself: under torch.compile ``self.model`` is the compiled module,
        # and ``no_sync`` is DDP's (the compiled forward runs inside DDP's own forward)
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            self.ddp = training.wrap_ddp(self.objective, self.device, bf16_grads=cfg.ddp_bf16_grads)
            self.model = self.ddp
        self.compiled = cfg.compile and (cuda or self.compile_backend is not None)
        backend = self.compile_backend or "inductor"
        if self.compiled:
            # fixed shapes (``BatchShape``, ``unpadded`` fixed per run): one graph, compiled
            # on the first step
            self.model = torch.compile(self.model, dynamic=False, backend=backend)
            source.compile(backend)
        self.compile_seconds: float | None = None
        self.optim = training.optimization(
            ((n, p) for n, p in self.student.named_parameters() if p.requires_grad),
            cfg,
            warmup_steps=min(cfg.warmup_steps, cfg.max_steps - 1),
            total_steps=cfg.max_steps,
            device=self.device,
            betas=(0.9, 0.98),
            eps=1e-6,
        )
        if checkpoint_dir is not None:
            state = torch.load(
                os.path.join(checkpoint_dir, TRAINER_STATE),
                map_location=self.device,
                weights_only=True,
            )
            self.optim.load_state_dict(state)
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.data.epoch, self.data.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
            saved_world = state.get("world_size", self.world_size)
            if saved_world != self.world_size:  # the job refuses this before Ray starts
                raise ValueError(
                    f"checkpoint {checkpoint_dir} holds a data position for {saved_world} "
                    f"worker(s), not {self.world_size}: resume with {saved_world} workers"
                )
            self.tokens_seen_global = state.get("tokens_seen_global", self.tokens_seen)
            self.train_seconds = state.get("train_seconds", 0.0)
            self.history = json.loads(state["history"])
            self.train_history = json.loads(state.get("train_history", "[]"))
        self.start_step = self.step
        self.data_position = self.data.state()
        source.open_data()
        self.shape = source.batch_shape(cfg.batch_size)

    # ------------------------------------------------------------------ data
    def _epoch_batches(self, epoch: int, start: int) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of this rank's batches from batch ``start`` on (the reader seeks there)."""
        cfg = self.cfg
        position = ReadPosition(
            self.rank, self.world_size, cfg.seed, epoch, "train", cfg.heldout_fraction
        )
        return self.source.train_batches(cfg.batch_size, position, start_batch=start)

    def _micro_batches(self) -> DevicePrefetcher:
        """Endless fixed-shape micro-batches on the device from the saved (epoch, batch)
        position onwards, each with the position after it (what a checkpoint records)."""
        return DevicePrefetcher(
            iter(self.data),
            self.device,
            prepare=lambda b: fixed_shape(b, self.shape),
            position_of=self.data.state,
        )

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, on the training device (NCCL reduces only CUDA tensors)."""
        t = values.to(self.device, torch.float64)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(t)
        return t.cpu()

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, detached parts ``[4]``, ``objective.PARTS`` order) of one fixed-shape
        batch on the device, with the teacher source's targets (an online teacher runs here)."""
        return self.model(batch, *self.source.targets(batch))

    # ------------------------------------------------------------------ train
    def autocast(self) -> torch.autocast:
        """The student step's autocast (``training.autocast``); the online teacher runs outside
        it (``loss``)."""
        return training.autocast(self.device, self.cfg.bf16)

    def train_step(self, micro_batches: DevicePrefetcher) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches (DDP syncs only on the last).

        Nothing here waits for the GPU: the loss parts and the grad norm stay on the device
        (``parts``, ``grad_norm``: tensors), the token count comes from the host batch, so the
        CPU queues step n+1 while the GPU runs step n. The loop reads them at log steps."""
        cfg = self.cfg
        training.seed_step(cfg.seed, self.step, self.rank)
        parts = torch.zeros(len(PARTS), device=self.device)
        tokens = targets = 0
        for i in range(cfg.grad_accum):
            batch, self.data_position = next(micro_batches)
            # DDP all-reduces on the last micro-batch only (compiled or not)
            with training.grad_sync(self.model, i == cfg.grad_accum - 1), self.autocast():
                loss, p = self.loss(batch)
                (loss / cfg.grad_accum).backward()
            parts += p / cfg.grad_accum
            tokens += batch["n_tokens"]
            targets += batch["n_targets"]
        grad_norm = self.optim.step()
        # under DDP the gradients are views of its all-reduce buckets: zeroed in place they
        # stay so; set to None, backward would allocate fresh ones every step and DDP copy
        # them back into the buckets
        self.optim.optimizer.zero_grad(set_to_none=self.ddp is None)
        self.step += 1
        self.tokens_seen += tokens
        # tokens / targets: the real (non-pad) tokens and target positions of the step
        return {
            "parts": parts,
            "grad_norm": grad_norm.detach(),
            "tokens": tokens,
            "targets": targets,
        }

    def named_parts(self, parts: torch.Tensor) -> dict[str, float]:
        """The enabled loss parts of a ``loss`` parts vector, by name (a device read)."""
        values = parts.tolist()
        return {name: values[PARTS.index(name)] for name in self.parts}

    def step_metrics(self, last: dict[str, Any]) -> dict[str, float]:
        """A step's loss parts and grad norm as floats (one device read: log steps only)."""
        values = torch.cat([last["parts"], last["grad_norm"].reshape(1).float()])
        out = self.named_parts(values[:-1])
        out.update(grad_norm=float(values[-1]), tokens=last["tokens"])
        return out

    def train(self, report: training.ReportFn | None = None) -> dict[str, Any]:
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
                "training steps %d..%d on %d worker(s) (mode=%s, batch %s, %s)",
                self.step,
                cfg.max_steps,
                self.world_size,
                cfg.mode,
                f"{self.shape.batch_size}x{self.shape.seq_len}, {self.shape.slots} target slots",
                "torch.compile" if self.compiled else "eager",
            )
        batches = self._micro_batches()
        try:
            return self._train(batches, report)
        finally:
            batches.close()

    def _train(self, batches: DevicePrefetcher, report: training.ReportFn | None) -> dict[str, Any]:
        cfg = self.cfg
        window_t, window_tokens, window_n = time.perf_counter(), 0, 0
        window_loss = torch.zeros((), device=self.device)
        last: dict[str, Any] = {}
        while self.step < cfg.max_steps:
            first = self.compiled and self.compile_seconds is None
            t0 = time.perf_counter()
            last = self.train_step(batches)
            if first:  # compile + one step; excluded from the first window's rate
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.compile_seconds = time.perf_counter() - t0
                log.info(
                    "rank %d: torch.compile + first step: %.1f s", self.rank, self.compile_seconds
                )
                window_t = time.perf_counter()
            window_tokens += last["tokens"]
            window_loss += last["parts"][0]
            window_n += 1
            done = self.step >= cfg.max_steps
            ckpt = report is not None and self.step % cfg.checkpoint_every == 0
            evaluate = self.step % cfg.eval_every == 0 or done
            logged: dict[str, float] = {}
            if self.step % cfg.log_every == 0 or done or ckpt:  # every rank gets here together
                agg = self._all_reduce(
                    torch.stack(
                        [
                            window_loss.double(),
                            torch.tensor(float(window_n), dtype=torch.float64, device=self.device),
                            torch.tensor(
                                float(window_tokens), dtype=torch.float64, device=self.device
                            ),
                        ]
                    )
                )  # .cpu() waits for the window's steps: the rate below is the GPU's
                secs = time.perf_counter() - window_t
                self.tokens_seen_global += int(agg[2])
                self.train_seconds += secs
                # the window's mean loss over every rank; the parts and grad norm are this
                # rank's last step
                logged = {
                    **self.step_metrics(last),  # the one device read of the parts: log steps
                    "loss": float(agg[0] / agg[1]),
                    "lr": self.optim.lr,
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
                window_t, window_tokens, window_n = time.perf_counter(), 0, 0
                window_loss = torch.zeros((), device=self.device)
            if evaluate and self.rank == 0:
                ev = self.evaluate()
                self.history.append({"step": self.step, **ev})
                log.info("eval step %d: %s", self.step, json.dumps(ev))
                window_t = time.perf_counter()  # the eval is not training time
            if report and (logged or evaluate):  # the same steps on every rank
                metrics = {
                    "step": self.step,
                    "epoch": self.data_position["epoch"],
                    "world_size": self.world_size,
                    **logged,
                }
                if self.history:  # the latest evaluation, under its own step
                    ev = self.history[-1]
                    metrics.update({("eval_step" if k == "step" else k): v for k, v in ev.items()})
                report(self.step, metrics, ckpt or done)
        return self.final_metrics()

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        """Held-out student MLM accuracy, top-1 agreement with the teacher and KL(teacher||student)
        at T = 1 (``distil.train.heldout.mlm_metrics``, the same computation as ``distil eval``): over the
        full vocab online; from the cache, the KL coarsened to {cached ids, rest} (a lower bound,
        ``losses.kl_coarse``; a sampled cache's drawn ids, whatever temperature they were drawn
        at)."""
        from distil.train.heldout import mlm_metrics

        cfg = self.cfg
        self.module.eval()
        ev = mlm_metrics(
            self.module,
            # every rank evaluates the whole held-out split
            self.source.eval_batches(
                cfg.batch_size,
                ReadPosition(seed=cfg.seed, split="heldout", heldout_fraction=cfg.heldout_fraction),
            ),
            device=self.device,
            max_batches=cfg.eval_batches,
            teacher=self.source.teacher,
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
            "compile_seconds": self.compile_seconds,
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
                **self.optim.state_dict(),
                "step": self.step,
                # epoch, batch_in_epoch of the last micro-batch trained on: where the reader seeks
                **self.data_position,
                "world_size": self.world_size,
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
