"""Sentiment fine-tuning recipe, engine-free: setup / train / save_checkpoint / evaluate / export
for one DDP rank. ``jobs/finetune.py`` runs one recipe per Ray Train worker (gloo on CPU, NCCL on
CUDA: the same code, the model and every batch on ``device``); tests run it directly (world size
1, no Ray) through :func:`run_local`.

A checkpoint (:meth:`FinetuneRecipe.save_checkpoint`) holds the model, optimizer, scheduler,
step, the loss window and the evaluations so far (with the best weights); the data position is a
function of (seed, step), and dropout is reseeded from (seed, step, rank) every step, so a recipe
set up from a checkpoint continues exactly where the saved one was.

Loss per labelled row: ``(1 - kd_alpha) * CE(label) + kd_alpha * T² * KL(teacher_T ‖ student_T)``
when a task-level teacher cache covers the text (DistilBERT's second distillation step), plain
cross-entropy otherwise; per pool row (``--pool``: unlabelled texts the teacher labelled, e.g.
augmentations of the training rows, TinyBERT's task distillation) the KD term alone. The KD term
is :func:`distil.losses.kd_dense`; the optimizer, LR schedule, clipping, autocast and DDP wrap are
:mod:`distil.training`'s, as in pre-training, so that both stages mean the same thing by "KD" and
"warm-up".

Training to convergence: ``--eval-every`` evaluates the validation rows during training (the
curve goes into the metrics, Ray Train and MLflow), ``--early-stopping-patience`` stops once the
validation accuracy has not improved for that many evaluations, and ``--select best`` exports the
weights of the best evaluation, not the last step's.

Data reading lives in :mod:`distil.sentiment.labelled_data`, output locations and publishing in
:mod:`distil.sentiment.finetune_export`.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from distil import losses, storage, training
from distil.packaged import resolve_model_ref
from distil.sentiment.config import FinetuneConfig
from distil.sentiment.finetune_export import classification_metrics, export_recipe, model_url_for
from distil.sentiment.labelled_data import assemble

log = logging.getLogger("distil.finetune")

TRAIN_STATE = "finetune_state.pt"  # the checkpoint file in a Ray Train checkpoint dir
BUCKET_WINDOW = 50  # batches per length-sorted window (``length_buckets``)


class FinetuneRecipe(training.Recipe):
    """setup → train → export for one DDP rank (``world_size`` 1 without Ray), on ``device``."""

    cfg: FinetuneConfig

    def __init__(self, cfg: FinetuneConfig, **rank_and_device: Any) -> None:
        super().__init__(cfg, **rank_and_device)
        self.history: list[dict[str, Any]] = []
        self.running: list[float] = []  # losses since the last log line
        # validation during training: every evaluation, the best one (with its weights on the
        # CPU), how many in a row have not beaten it, and whether that stopped the run
        self.evaluations: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.evals_since_best = 0
        self.stopped_early = False
        self._epoch_batches: tuple[int, np.ndarray] | None = None

    # -- setup
    def setup(self, checkpoint_dir: str | None = None) -> None:
        """Load model, data and schedule; with ``checkpoint_dir``, continue from that checkpoint."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        cfg = self.cfg
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)  # same head init on every rank
        ref = resolve_model_ref(cfg.model)
        local = ref
        if "://" in ref:
            local = storage.copy_dir_to_local(ref, tempfile.mkdtemp(prefix="distil-ft-model-"))
        labels = list(cfg.labels)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            local,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
        self.tokenizer = AutoTokenizer.from_pretrained(local)

        data = assemble(cfg, cfg.train)
        self.data_accounting = data.accounting
        if not data.train or not data.val:
            raise ValueError(
                f"{len(data.train)} training / {len(data.val)} validation rows: need both"
            )
        self.train_rows, self.val_rows, self.pool_rows = data.train, data.val, data.pool
        self.train_ids = self._encode([r["text"] for r in self.train_rows])
        self.val_ids = self._encode([r["text"] for r in self.val_rows])
        self.pool_ids = self._encode([r["text"] for r in self.pool_rows])
        # one row space: the labelled rows, then the pool rows (label -100: no CE term)
        self.seqs = self.train_ids + self.pool_ids
        self.row_labels = torch.tensor(
            [r["label"] for r in self.train_rows] + [-100] * len(self.pool_rows)
        )
        self.val_labels = np.array([r["label"] for r in self.val_rows])
        self.teacher_logits = None
        if cfg.teacher_cache:
            self._load_teacher_targets(dict(enumerate(labels)))

        per_step = cfg.batch_size * self.world_size
        steps_per_epoch = math.ceil(len(self.seqs) / per_step)
        self.total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.steps_per_epoch = steps_per_epoch
        self.warmup = int(cfg.warmup_fraction * self.total_steps)

        state = None
        if checkpoint_dir is not None:
            state = torch.load(
                os.path.join(checkpoint_dir, TRAIN_STATE),
                map_location=self.device,
                weights_only=True,
            )
            self._check_resumable(state, checkpoint_dir)
            self.model.load_state_dict(state["model"])
        self.model.to(self.device).train()

        # linear warm-up from 0 to the peak over ``warmup`` steps, then linear decay to 0 at
        # ``total_steps``; its state is checkpointed with the optimizer's
        self.optim = training.optimization(
            self.model.named_parameters(),
            cfg,
            warmup_steps=self.warmup,
            total_steps=self.total_steps,
            device=self.device,
        )
        if state is not None:
            self.optim.load_state_dict(state)
            self.step, self.history = state["step"], list(state["history"])
            self.running = list(state["running"])
            self.evaluations = list(state.get("evaluations", []))
            self.best = state.get("best")
            self.evals_since_best = state.get("evals_since_best", 0)
            self.stopped_early = state.get("stopped_early", False)
        self.start_step = self.step
        self.ddp_model: torch.nn.Module = self.model
        if self.world_size > 1:
            self.ddp_model = training.wrap_ddp(self.model, self.device)

    def _load_teacher_targets(self, id2label: dict[int, str]) -> None:
        """The teacher's class logits for every training and pool row; a pool row the cache does
        not cover has nothing to learn from, so that is an error, not a silent skip."""
        from distil.sentiment.teacher_cache import teacher_targets

        texts = [r["text"] for r in self.train_rows + self.pool_rows]
        logits, covered = teacher_targets(self.cfg.teacher_cache, texts, id2label)
        n_train = len(self.train_rows)
        missing = int((~covered[n_train:]).sum())
        if missing:
            raise ValueError(
                f"--teacher-cache {self.cfg.teacher_cache} lacks the logits of {missing} of "
                f"{len(self.pool_rows)} pool rows: label the pool with this teacher "
                "(`distil pool`) or pass the cache that did"
            )
        self.teacher_logits, self.teacher_covered = map(torch.from_numpy, (logits, covered))
        self.data_accounting["teacher_covered"] = {
            "train": int(covered[:n_train].sum()),
            "pool": len(self.pool_rows),
        }

    def _check_resumable(self, state: dict[str, Any], checkpoint_dir: str) -> None:
        have = (len(self.train_rows), len(self.pool_rows), self.total_steps, self.world_size)
        saved = (
            state["train_examples"],
            state.get("pool_examples", 0),
            state["total_steps"],
            state["world_size"],
        )
        if have != saved:
            raise ValueError(
                f"checkpoint {checkpoint_dir} was taken with (train examples, pool examples, "
                f"total steps, workers) = {saved}, this run has {have}: resume with the same data "
                "and config, or start a new run (another --run-name)"
            )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        enc = self.tokenizer(texts, truncation=True, max_length=self.cfg.max_length)
        return enc["input_ids"]

    def _pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) built on the CPU, returned on the training device."""
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        return ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, batch_size × world_size]`` row indices of one epoch's global
        batches: a seeded permutation of every row (labelled and pool), wrapped around to fill the
        last batch (every rank does the same number of steps — DDP needs that). With
        ``length_buckets``, each window of ``BUCKET_WINDOW`` batches is sorted by length before it
        is cut and the batches are shuffled again: padding shrinks, the order stays random."""
        if self._epoch_batches is not None and self._epoch_batches[0] == epoch:
            return self._epoch_batches[1]
        cfg, n = self.cfg, len(self.seqs)
        per_step = cfg.batch_size * self.world_size
        rng = np.random.default_rng(cfg.seed + epoch)
        perm = rng.permutation(n)
        rows = perm[np.arange(self.steps_per_epoch * per_step) % n]
        if cfg.length_buckets:
            lengths = np.array([len(s) for s in self.seqs])
            window = per_step * BUCKET_WINDOW
            for start in range(0, len(rows), window):
                part = rows[start : start + window]
                rows[start : start + window] = part[np.argsort(lengths[part], kind="stable")]
        batches = rows.reshape(self.steps_per_epoch, per_step)
        if cfg.length_buckets:
            batches = batches[rng.permutation(len(batches))]
        self._epoch_batches = (epoch, batches)
        return batches

    def _rank_batch(self, step: int) -> np.ndarray:
        """Row indices of this rank's batch at ``step``: its slice of the global batch."""
        epoch, within = divmod(step, self.steps_per_epoch)
        bs = self.cfg.batch_size
        return self.epoch_batches(epoch)[within, self.rank * bs : (self.rank + 1) * bs]

    def _autocast(self) -> torch.autocast:
        return training.autocast(self.device, self.cfg.bf16)

    def _global_loss(self) -> float:
        """Mean loss of the window over every rank. The reduced tensor lives on the training
        device: NCCL refuses CPU tensors (gloo takes either)."""
        agg = torch.tensor(
            [sum(self.running), len(self.running)], dtype=torch.float64, device=self.device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(agg)
        return float(agg[0] / agg[1])

    # -- train
    def train_step(self) -> tuple[float, torch.Tensor]:
        """One optimizer step on this rank's batch at ``self.step``: (loss, grad norm)."""
        cfg = self.cfg
        training.seed_step(cfg.seed, self.step, self.rank)
        idx = self._rank_batch(self.step)
        ids, mask = self._pad([self.seqs[i] for i in idx])
        labels = self.row_labels[idx].to(self.device, non_blocking=True)
        with self._autocast():
            logits = self.ddp_model(input_ids=ids, attention_mask=mask).logits.float()
        # pool rows (label -100) add 0 here and take the KD term alone below
        loss_rows = F.cross_entropy(logits, labels, reduction="none", ignore_index=-100)
        if self.teacher_logits is not None:
            teacher = self.teacher_logits[idx].to(self.device, non_blocking=True)
            kd = losses.kd_dense(logits, teacher, cfg.kd_temperature, reduction="none")
            covered = self.teacher_covered[idx].to(self.device, non_blocking=True)
            labelled = torch.where(
                covered, (1 - cfg.kd_alpha) * loss_rows + cfg.kd_alpha * kd, loss_rows
            )
            loss_rows = torch.where(labels >= 0, labelled, kd)
        loss = loss_rows.mean()
        self.optim.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.optim.step()
        self.step += 1
        return loss.item(), grad_norm

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps or self.stopped_early

    def train(self, report: training.ReportFn | None = None) -> dict:
        """Run to ``total_steps`` (or until early stopping); ``report`` is called at every log
        and evaluation step (Ray Train's ``metrics_dataframe`` and a tracker see the whole curve)
        and checkpoint step, asking for a checkpoint only at checkpoint steps and at the end.
        With ``select: best`` the model holds the best evaluation's weights on return."""
        cfg = self.cfg
        if self.done:
            log.info("run already finished at step %d: nothing to do", self.step)
            if report:
                report(self.step, self.progress(), False)
            self._select_weights()
            return self.history[-1] if self.history else {}
        self.ddp_model.train()
        t0 = time.time()
        while not self.done:
            loss, grad_norm = self.train_step()
            self.running.append(loss)
            rec: dict[str, Any] = {}
            if cfg.eval_every and (
                self.step % cfg.eval_every == 0 or self.step == self.total_steps
            ):
                rec.update(self._evaluate_during_training())
            done = self.done
            ckpt = self.step % cfg.checkpoint_every == 0 or done
            if self.step % cfg.log_every == 0 or done or rec:
                rec.update(
                    step=self.step,
                    loss=self._global_loss(),
                    lr=self.optim.lr,
                    grad_norm=float(grad_norm),
                    steps_per_s=(self.step - self.start_step) / (time.time() - t0),
                )
                self.running = []
                self.history.append(rec)
                if self.rank == 0:
                    log.info(
                        "step %d/%d loss %.4f lr %.2e %.2f steps/s%s",
                        rec["step"],
                        self.total_steps,
                        rec["loss"],
                        rec["lr"],
                        rec["steps_per_s"],
                        f" validation accuracy {rec['eval_accuracy']:.4f}"
                        if "eval_accuracy" in rec
                        else "",
                    )
            if report and (rec or ckpt):  # the same steps on every rank
                report(self.step, {**self.progress(), **rec}, ckpt)
        self.train_seconds = time.time() - t0
        if self.stopped_early and self.rank == 0:
            log.info(
                "early stop at step %d: no better validation accuracy in %d evaluations since "
                "step %d (%.4f)",
                self.step,
                self.evals_since_best,
                self.best["step"],
                self.best["accuracy"],
            )
        self._select_weights()
        return self.history[-1] if self.history else {}

    def _evaluate_during_training(self) -> dict[str, Any]:
        """Validation metrics now (``eval_*`` keys), the best weights kept, the stop decided.

        Every rank evaluates the same weights; rank 0's accuracy is broadcast so that every rank
        takes the same early-stopping decision even if their float sums differ in the last bit."""
        m = self.evaluate()
        acc = torch.tensor([m["accuracy"]], dtype=torch.float64, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(acc, src=0)
        accuracy = float(acc[0])
        rec = {
            "eval_step": self.step,
            "eval_accuracy": accuracy,
            "eval_f1_macro": m["f1_macro"],
            "eval_loss": m["loss"],
        }
        self.evaluations.append(
            {"step": self.step, "accuracy": accuracy, "f1_macro": m["f1_macro"], "loss": m["loss"]}
        )
        if self.best is None or accuracy > self.best["accuracy"]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best = {"step": self.step, "accuracy": accuracy, "model": state}
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        patience = self.cfg.early_stopping_patience
        self.stopped_early = bool(patience and self.evals_since_best >= patience)
        return rec

    def _select_weights(self) -> None:
        """With ``select: best``, load the best evaluation's weights (every rank)."""
        if self.cfg.select == "best" and self.best is not None:
            self.model.load_state_dict(self.best["model"])

    def selection(self) -> dict[str, Any]:
        """What the export says about which weights it holds and why."""
        best = self.best if self.cfg.select == "best" else None
        return {
            "select": self.cfg.select if self.best is not None else "last",
            "step": best["step"] if best else self.step,
            "steps_trained": self.step,
            "planned_steps": self.total_steps,
            "stopped_early": self.stopped_early,
            "evaluations": self.evaluations,
        }

    def progress(self) -> dict[str, Any]:
        """What a checkpoint reports to Ray Train (the driver reads ``done`` on resubmit)."""
        last = self.history[-1] if self.history else {}
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "start_step": self.start_step,
            "steps_run": self.step - self.start_step,
            "done": self.done,
            **{k: last[k] for k in ("loss", "lr") if k in last},
        }

    # -- checkpoint
    def save_checkpoint(self, directory: str) -> None:
        """Model, optimizer, scheduler, step, loss window and evaluations into ``directory``."""
        torch.save(
            {
                "model": self.model.state_dict(),
                **self.optim.state_dict(),
                "step": self.step,
                "total_steps": self.total_steps,
                "train_examples": len(self.train_rows),
                "pool_examples": len(self.pool_rows),
                "world_size": self.world_size,
                "history": self.history,
                "running": self.running,
                "evaluations": self.evaluations,
                "best": self.best,
                "evals_since_best": self.evals_since_best,
                "stopped_early": self.stopped_early,
            },
            os.path.join(directory, TRAIN_STATE),
        )

    # -- evaluate
    @torch.inference_mode()
    def predict_logits(self, seqs: list[list[int]], batch_size: int = 128) -> np.ndarray:
        self.model.eval()
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.zeros((len(seqs), self.model.config.num_labels), np.float32)
        for start in range(0, len(seqs), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = self._pad([seqs[i] for i in idx])
            with self._autocast():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
            out[idx] = logits.float().cpu().numpy()
        self.model.train()
        return out

    def evaluate(self) -> dict[str, Any]:
        logits = self.predict_logits(self.val_ids)
        m = classification_metrics(logits.argmax(-1), self.val_labels, len(self.cfg.labels))
        m["loss"] = float(
            F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(self.val_labels)).item()
        )
        return m

    # -- export
    def export(self, model_url: str) -> dict[str, Any]:
        """Rank 0: evaluate and publish the classifier (:func:`export_recipe`)."""
        return export_recipe(self, model_url)


def run_local(cfg: FinetuneConfig, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Fine-tune in this process (world size 1): what one Ray worker does, without Ray."""
    recipe = FinetuneRecipe(cfg, device=device)
    recipe.setup()
    recipe.train()
    return recipe.export(model_url_for(cfg))
